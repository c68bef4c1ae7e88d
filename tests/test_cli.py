"""The gnopt command line: every command end to end on tiny configurations."""

import json
import subprocess
import sys

import pytest

from gnopt.cli import build_parser, main, train_config_from_args
from gnopt.experiments import read_metrics

TINY = ["--limit", "40", "--widths", "5,3", "--batch-size", "16"]


pytestmark = pytest.mark.usefixtures("private_data_one_thread")


def test_help_for_every_command(capsys):
    for cmd in ("train", "grid", "plot", "align", "rank", "surface"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "usage: gnopt " + cmd in capsys.readouterr().out
    assert main([]) == 2
    assert "train" in capsys.readouterr().out


def test_bench_is_forwarded(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0
    assert "bench" in capsys.readouterr().out


def test_python_dash_m(monkeypatch, capsys):
    """``python -m gnopt`` runs gnopt/__main__.py (in-process: a subprocess would re-import torch)."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["gnopt", "surface", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("gnopt", run_name="__main__")
    assert e.value.code == 0 and "usage: gnopt surface" in capsys.readouterr().out


@pytest.mark.slow
def test_python_dash_m_subprocess():
    r = subprocess.run([sys.executable, "-m", "gnopt", "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "surface" in r.stdout


def test_no_argument_defaults():
    cfg = train_config_from_args(build_parser().parse_args(["train"])).resolved()
    assert (cfg.dataset, cfg.optimizer, cfg.batch_size, cfg.damping) == ("curves", "kfra", 1000, "factored")
    assert cfg.widths is None and cfg.time_budget == 180 and cfg.steps == 5000
    assert cfg.weight_decay == 1e-5


def test_train_resume_plot(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", *TINY, "--steps", "4", "--eval-every", "2", "--out", str(a), "-q", "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert str(a) in out and "train_sq_error" in out
    assert main(["train", *TINY, "--steps", "2", "--eval-every", "2", "--out", str(b), "-q", "--no-plot"]) == 0
    assert not (b / "objective.png").exists()
    assert main(["train", "--resume", str(b), "--steps", "4", "-q", "--no-plot"]) == 0
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("time_s", "wall_s")} for r in rs]  # noqa: E731
    assert strip(read_metrics(a / "metrics.jsonl")) == strip(read_metrics(b / "metrics.jsonl"))
    assert main(["train", "--resume", str(b), "--lr", "0.1"]) == 2  # not changeable
    assert "cannot change" in capsys.readouterr().err
    c = tmp_path / "c"
    assert main(["train", *TINY, "-o", "adam", "--lr", "0.01", "--decay-period", "2", "--steps", "3",
                 "--out", str(c), "-q", "--opt", "momentum=0.5", "--no-plot", "--matmul-precision", "medium"]) == 0
    cfg = json.loads((c / "config.json").read_text())
    assert cfg["optimizer"] == "adam" and cfg["decay_period"] == 2 and cfg["opt_options"] == {"momentum": 0.5}
    assert cfg["matmul_precision"] == "medium"
    assert json.loads((a / "config.json").read_text())["matmul_precision"] == "highest"
    png = tmp_path / "cmp.png"
    assert main(["plot", str(a), str(c), "--out", str(png)]) == 0
    assert png.stat().st_size > 1000
    assert main(["plot", str(a), "--metric", "train_objective", "--window", "1", "--x", "updates"]) == 0
    assert (a / "objective.png").is_file()
    assert main(["plot", str(tmp_path / "missing")]) == 2


def test_train_progress_bar_on_stderr(tmp_path, capsys):
    assert main(["train", *TINY, "--steps", "2", "--out", str(tmp_path / "r"), "--no-plot",
                 "--no-eval-averaged"]) == 0
    err = capsys.readouterr().err
    assert "steps/s" in err and "loss" in err
    last = read_metrics(tmp_path / "r" / "metrics.jsonl")[-1]
    assert "train_objective" in last and "train_objective_avg" not in last


def test_grid_command(tmp_path, capsys):
    args = ["grid", *TINY, "--steps", "2", "--lr-exponents", "6,9", "--decay-fractions", "1,0.5",
            "--out", str(tmp_path), "-q", "--no-plot"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "*" in out and "2^-9" in out and "50%" in out
    assert len(json.loads((tmp_path / "grid.json").read_text())) == 4
    assert main(args + ["--summary"]) == 0
    png = tmp_path / "fig2.png"
    assert main(["plot", "--grid", str(tmp_path), "--top", "2,3", "--out", str(png)]) == 0
    assert png.stat().st_size > 1000
    assert main(["plot"]) == 2


def test_align_rank_surface_commands(tmp_path, capsys):
    assert main(["align", "--limit", "30", "--widths", "4,2", "--batch-size", "15", "--steps", "1", "--every", "1",
                 "--methods", "kfra*,kflr", "--cg-max-iter", "30", "--out", str(tmp_path / "al")]) == 0
    assert (tmp_path / "al" / "alignment.png").is_file()
    assert len(read_metrics(tmp_path / "al" / "alignment.jsonl")) == 2
    assert main(["rank", "--pool", "7", "--widths", "3,2", "--batch-sizes", "1,2", "--out", str(tmp_path / "rk")]) == 0
    assert "rank GN" in capsys.readouterr().out
    assert (tmp_path / "rk" / "rank.png").is_file()
    assert main(["surface", "--n", "10", "--resolution", "11", "--hessian-points", "1",
                 "--out", str(tmp_path / "sf")]) == 0
    assert (tmp_path / "sf" / "surface.png").is_file()
    assert json.loads((tmp_path / "sf" / "surface.json").read_text())["interior_local_maxima"]["b"] == 0


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--widths", "a,b"])
    with pytest.raises(SystemExit):
        main(["train", "--optimizer", "lbfgs"])
    assert main(["grid", "--methods", "kfra", "--steps", "1"]) == 2


def test_amortisation_flags_reach_the_optimiser(tmp_path):
    args = build_parser().parse_args(["train", "--factor-period", "1", "--step-size-fraction", "0.5",
                                      "--opt", 'solve_dtype="float64"'])
    cfg = train_config_from_args(args)
    assert cfg.opt_options == {"solve_dtype": "float64", "factor_period": 1, "step_size_fraction": 0.5}
    out = tmp_path / "run"
    assert main(["train", "--dataset", "curves", *TINY, "--steps", "2", "--factor-period", "1",
                 "--step-size-fraction", "0.5", "--out", str(out), "--quiet", "--no-plot"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["opt_options"] == {"factor_period": 1, "step_size_fraction": 0.5}
    assert train_config_from_args(build_parser().parse_args(["train", "--step-guard", "0"])).opt_options == {
        "step_guard": None}
    assert train_config_from_args(build_parser().parse_args(["train", "--step-guard", "5"])).opt_options == {
        "step_guard": 5.0}
    assert train_config_from_args(build_parser().parse_args(["train", "--step-size-check", "0"])).opt_options == {
        "step_size_check": None}
    assert train_config_from_args(build_parser().parse_args(["train", "--step-size-check", "0.2"])).opt_options == {
        "step_size_check": 0.2}
