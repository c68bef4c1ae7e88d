"""Smoke test of ``gnopt bench step`` (no timing assertions)."""

import json

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
