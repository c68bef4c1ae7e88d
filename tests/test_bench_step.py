"""Smoke test of ``gnopt bench step`` (no timing assertions)."""

import json

import pytest

from gnopt.bench import main


def test_bench_step_tiny_writes_json(tmp_path):
    out = tmp_path / "step.json"
    assert main(["step", "--tiny", "--in-process", "--configs", "adam,kfra,kfra-amortised,hf", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["config"] for r in rows] == ["adam", "kfra", "kfra-amortised", "hf"]
    for r in rows:
        assert r["status"] == "ok" and r["update_s"] > 0 and r["adam_s"] > 0 and r["ratio"] > 0
    kfra = rows[1]["phases_per_update"]
    assert set(kfra) >= {"t_forward_backward", "t_factors", "t_decompose", "t_precondition", "t_gvp"}
    assert all(v >= 0 for v in kfra.values())


def test_bench_step_matmul_precision_is_set_for_the_measurement_only(tmp_path, capsys):
    import torch

    out = tmp_path / "m.json"
    before = torch.get_float32_matmul_precision()
    assert main(["step", "--tiny", "--in-process", "--configs", "adam,kfra", "--matmul-precision", "medium",
                 "--json", str(out)]) == 0
    assert torch.get_float32_matmul_precision() == before
    assert "matmul precision medium" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["machine"]["matmul_precision"] == "medium"
    assert all(r["status"] == "ok" for r in data["results"])


def test_bench_step_every_config_runs_and_memory_ratio(tmp_path):
    from gnopt.bench.step import CONFIGS

    out = tmp_path / "all.json"
    assert main(["step", "--tiny", "--in-process", "--configs", ",".join(CONFIGS), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["config"] for r in rows] == list(CONFIGS)
    assert all(r["status"] == "ok" for r in rows)
    assert all("memory_ratio" in r for r in rows)


def test_bench_step_flops_width_sweep_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    assert main(["step", "--tiny", "--in-process", "--configs", "adam,kfra,kfra-amortised", "--width-sweep", "8,16",
                 "--json", str(out), "--plot", str(png)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 3 + 2 * 3 and sum(bool(r.get("sweep")) for r in rows) == 6
    assert [max(r["widths"]) for r in rows if r.get("sweep")] == [784, 784, 784, 784, 784, 784]
    k = rows[1]
    assert set(k["gflop_per_update"]) == {"forward_backward", "factors", "decompose", "precondition", "gvp"}
    assert all(v > 0 for v in k["gflop_per_update"].values())
    assert png.stat().st_size > 10_000


def test_flop_counts_by_hand():
    """A one-layer net 3 -> 2 with bias, batch 5: every count written out."""
    from gnopt.bench.flops import update_flops

    f = update_flops([3, 2], 5, {"name": "kfra", "factor_period": 1, "step_size_fraction": 1.0,
                                 "explicit_inverse": True, "damping": "factored", "T_gamma": 1})
    assert f["forward_backward"] == 2 * (2 * 5 * 2 * 4)          # forward + weight gradients, no input gradient
    assert f["factors"] == 5 * 4 ** 2                             # Q only: a one-layer net has no recursion step
    assert f["decompose"] == (2 ** 3 + 4 ** 3) * 3                # Cholesky + inverse, three γ candidates
    assert f["precondition"] == (2 * 4 * 4 + 2 * 2 * 16) * 3
    assert f["gvp"] == 2 * 5 * 2 * 4 * 3
    half = update_flops([3, 2], 5, {"name": "kfra", "step_size_fraction": 0.5, "T_gamma": 1})
    assert half["gvp"] == 2 * 3 * 2 * 4 * 3                       # ⌈2.5⌉ = 3 examples
    assert set(update_flops([3, 2], 5, {"name": "adam"})) == {"forward_backward"}


def test_flop_counts_with_a_diagonal_top_factor():
    """Two layers 3 -> 2 -> 4, batch 5, bce: G_L diagonal saves one recursion GEMM, the d_L³
    decomposition and one preconditioner product (explicit inverses only)."""
    from gnopt.bench.flops import update_flops

    opts = {"name": "kfra", "factor_period": 1, "step_size_fraction": 1.0, "explicit_inverse": True,
            "damping": "factored", "T_gamma": 1}
    dense = update_flops([3, 2, 4], 5, opts)
    diag = update_flops([3, 2, 4], 5, opts, diagonal_top=True)
    assert dense["factors"] - diag["factors"] == 2 * 4 ** 2 * 2      # W_Lᵀ (G_L W_L): the G_L W_L GEMM
    assert dense["decompose"] - diag["decompose"] == 4 ** 3 * 3      # no Cholesky/inverse of G_L (3 γ candidates)
    assert dense["precondition"] - diag["precondition"] == 2 * 4 ** 2 * 3 * 3
    chol = dict(opts, explicit_inverse=False)
    assert update_flops([3, 2, 4], 5, chol, diagonal_top=True)["decompose"] == update_flops([3, 2, 4], 5, chol)["decompose"]
    assert update_flops([3, 2, 4], 5, dict(opts, name="kfac"), diagonal_top=True) == update_flops([3, 2, 4], 5, dict(opts, name="kfac"))


def test_bench_step_device_option_and_memory_column(tmp_path, capsys):
    """``--device`` reaches the model and the worker; on the CPU the memory column is the peak
    ΔRSS and no device peak is reported (CUDA: tests/test_cuda.py)."""
    from gnopt.bench.step import format_table, peak_memory
    from gnopt.bench.worker import device_sync

    out = tmp_path / "d.json"
    assert main(["step", "--tiny", "--in-process", "--device", "cpu", "--configs", "adam,kfra", "--json", str(out)]) == 0
    assert "(cpu; memory column: peak ΔRSS)" in capsys.readouterr().out
    rows = json.loads(out.read_text())["results"]
    assert all(r["device"] == "cpu" and r["peak_device_mb"] is None for r in rows)
    assert device_sync("cpu") is None and device_sync(None) is None
    # a row with a device peak: that peak is the memory column, and the header says so
    row = dict(rows[1], peak_device_mb=12.5, peak_rss_mb=300.0)
    assert peak_memory(row) == 12.5 and peak_memory(rows[0]) == rows[0]["peak_rss_mb"]
    assert "peak device memory (MB)" in format_table([row])
