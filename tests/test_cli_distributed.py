"""``gnopt train --nproc N``: data-parallel runs through the CLI (gloo on loopback)."""

import pytest
import torch

from gnopt.cli import main
from gnopt.experiments import load_checkpoint, read_metrics

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")

TINY = ["--dataset", "curves", "--limit", "64", "--widths", "8,4", "--batch-size", "16", "--dtype", "float64",
        "--threads", "1", "-q", "--no-plot", "--eval-every", "0"]


pytestmark = pytest.mark.usefixtures("private_data_one_thread")


def params(run):
    return load_checkpoint(run / "checkpoint.pt")["model"]


def assert_close(a, b, tol=1e-9):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=tol, rtol=0), (k, (a[k] - b[k]).abs().max())


def test_nproc_2_equals_one_process_and_resumes(tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", *TINY, "--steps", "3", "--out", str(one)]) == 0
    assert main(["train", *TINY, "--steps", "3", "--out", str(two), "--nproc", "2"]) == 0
    assert str(two) in capsys.readouterr().out
    assert sorted(p.name for p in two.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl", "summary.json"]
    recs = read_metrics(two / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3] and "train_objective" in recs[-1]
    assert_close(params(one), params(two))
    ref = read_metrics(one / "metrics.jsonl")
    for a, b in zip(ref, recs):
        assert abs(a["loss"] - b["loss"]) < 1e-9
    assert abs(ref[-1]["train_objective"] - recs[-1]["train_objective"]) < 1e-9
    # the distributed run's checkpoint continues on one process, as the one-process run does
    assert main(["train", "--resume", str(two), "--steps", "5", "-q", "--no-plot", "--threads", "1"]) == 0
    assert main(["train", "--resume", str(one), "--steps", "5", "-q", "--no-plot", "--threads", "1"]) == 0
    assert [r["step"] for r in read_metrics(two / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    assert load_checkpoint(two / "checkpoint.pt")["step"] == 5
    assert_close(params(one), params(two))
    # ... and on two processes again
    assert main(["train", "--resume", str(two), "--steps", "6", "-q", "--no-plot", "--threads", "1",
                 "--nproc", "2"]) == 0
    assert main(["train", "--resume", str(one), "--steps", "6", "-q", "--no-plot", "--threads", "1"]) == 0
    assert [r["step"] for r in read_metrics(two / "metrics.jsonl")] == list(range(1, 7))
    assert_close(params(one), params(two))


def test_nproc_refuses_first_order(tmp_path, capsys):
    assert main(["train", *TINY, "--steps", "1", "-o", "adam", "--nproc", "2", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "first-order" in err and "adam" in err
    assert not (tmp_path / "a").exists()
