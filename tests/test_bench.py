"""End-to-end smoke tests of ``python -m gnopt.bench factors`` on a tiny net.

No timing assertions: the benchmark reports, it does not judge.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gnopt.bench import SUBCOMMANDS, build_parser, main
from gnopt.bench.factors import PAPER_WIDTHS, autoencoder, format_table

ROW_KEYS = {"impl", "loss", "method", "mode", "status", "warmup_s", "times_s", "median_s", "repeats_done",
            "peak_rss_mb", "fwd_bwd_s", "ratio_to_fwd_bwd", "wall_s"}


def _check_report(path, n_rows, methods, losses, modes):
    report = json.loads(path.read_text())
    assert report["subcommand"] == "factors"
    for key in ("config", "machine", "time_method", "memory_method", "results"):
        assert key in report
    for key in ("cpu_model", "cpus", "torch", "torch_threads", "date"):
        assert key in report["machine"]
    assert report["config"]["widths"] == [20, 10, 5, 10, 20]
    assert report["config"]["batch"] == 16
    rows = report["results"]
    assert len(rows) == n_rows
    for row in rows:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert row["status"] == "ok", row
        assert row["warmup_s"] > 0 and row["median_s"] > 0
        assert row["repeats_done"] == 1 and len(row["times_s"]) == 1 and row["times_s"][0] > 0
        assert row["fwd_bwd_s"] > 0 and row["ratio_to_fwd_bwd"] > 0
        assert row["peak_rss_mb"] is not None and row["peak_rss_mb"] >= 0
        assert row["impl"] in ("torch", "gnopt")  # no BackPACK with --tiny
    gnopt_rows = {(r["loss"], r["method"], r["mode"]) for r in rows if r["impl"] == "gnopt"}
    assert gnopt_rows == {(lo, me, mo) for lo in losses for me in methods for mo in modes}
    assert {r["loss"] for r in rows if r["method"] == "fwd+bwd"} == set(losses)
    return report


def test_tiny_all_rows_in_process(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["factors", "--tiny", "--in-process", "--json", str(out)]) == 0
    _check_report(out, 2 + 2 * 3 * 2, ["kfra", "kflr", "kfac"], ["mse", "bce"], ["factors", "grad+factors"])
    table = capsys.readouterr().out
    assert "| gnopt | bce | kflr | grad+factors |" in table


def test_tiny_subprocess_cli(tmp_path):
    """The real path: ``python -m gnopt.bench``, one fresh subprocess per row."""
    out = tmp_path / "sub" / "bench.json"
    cmd = [sys.executable, "-m", "gnopt.bench", "factors", "--tiny", "--methods", "kfac", "--losses", "bce",
           "--modes", "factors", "--threads", "1", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = _check_report(out, 2, ["kfac"], ["bce"], ["factors"])
    assert report["config"]["threads"] == 1
    assert all(r["threads"] == 1 for r in report["results"])
    assert "| gnopt | bce | kfac | factors |" in proc.stdout


def test_subcommand_registry_and_errors():
    assert "factors" in SUBCOMMANDS
    for module in SUBCOMMANDS.values():
        assert module.HELP and callable(module.add_arguments) and callable(module.run)
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args([])  # a subcommand is required
    with pytest.raises(SystemExit):
        main(["factors", "--tiny", "--in-process", "--methods", "kfra,newton"])


def test_paper_autoencoder_shape():
    from torch import nn

    model = autoencoder(PAPER_WIDTHS, "sigmoid")
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [m.in_features for m in linears] + [linears[-1].out_features] == PAPER_WIDTHS
    # sigmoid after every layer except the 30-unit code layer and the output layer
    kinds = ["L" if isinstance(m, nn.Linear) else type(m).__name__[0] for m in model]
    assert "".join(kinds) == "LSLSLSLLSLSLSL"


def test_format_table_marks_failures():
    row = {"impl": "backpack", "loss": "mse", "method": "kflr", "mode": "grad+factors", "status": "timeout",
           "message": "killed after 10 s", "warmup_s": None, "median_s": None, "repeats_done": 0,
           "fwd_bwd_s": None, "ratio_to_fwd_bwd": None, "peak_rss_mb": None}
    assert "timeout: killed after 10 s" in format_table([row])
