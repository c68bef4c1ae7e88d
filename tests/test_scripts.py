"""The README's table helpers in scripts/ (run as the README runs them)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_align_table_averages_layers_and_flags_capped_solves(tmp_path):
    rows = [
        {"step": 0, "cos_layer": {"kfra": [1.0, 0.5], "kfac": [0.25, 0.75]}, "cos_full": {"kfra": 0.9, "kfac": 0.3},
         "cos_block_full": 0.8, "cg_converged_full": False, "cg_converged_block": [True, False], "time_s": 12.0},
        {"step": 10, "cos_layer": {"kfra": [0.2, 0.4], "kfac": [0.1, 0.1]}, "cos_full": {"kfra": 0.7, "kfac": 0.2},
         "cos_block_full": 0.6, "cg_converged_full": True, "cg_converged_block": [True, True], "time_s": 30.0},
    ]
    (tmp_path / "alignment.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "align_table.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert "| KFRA vs block GN (layer mean) | 0.75 | 0.30 |" in out
    assert "| KFAC vs full GN | 0.30 | 0.20 |" in out
    assert "| block GN vs full GN | 0.80 | 0.60 |" in out
    assert "at its cap at updates [0]" in out and "(0, 2)" in out


def test_align_table_names_an_empty_run(tmp_path):
    (tmp_path / "alignment.jsonl").write_text("")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "align_table.py"), str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "has no measurements" in r.stderr


def test_memory_profile_reports_every_kind_of_update():
    """scripts/memory_profile.py (README "Memory") runs end to end on a small batch and reports
    the peaks of ordinary, refresh and γ-search updates (T_γ = 2, factors every 2)."""
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "memory_profile.py"), "--optimizer", "kfra",
                        "--batch", "8", "--steps", "4", "--options", '{"T_gamma": 2, "factor_period": 2}'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "peak above it" in r.stdout
    for kind in ("ordinary", "refresh", "γ search"):
        assert kind.ljust(9) + " updates: peak +" in r.stdout, r.stdout


def test_mixture_table_reports_objective_with_l2_jumps_and_guard(tmp_path):
    """scripts/mixture_table.py (README "The odd/even mixture classifier"): full-set cells with and
    without the (η/2)‖θ‖² term, a tenfold minibatch jump, the guard's counts, the training time."""
    rows = [
        {"step": 1, "loss": 0.2, "time_s": 1.0},
        {"step": 2, "loss": 0.05, "time_s": 2.0, "guard_checks": 1.0},
        {"step": 3, "loss": 0.6, "time_s": 3.0, "guard_checks": 2.0,  # > 0.1 and > 10 × 0.05: a jump
         "train_objective": 0.25, "l2": 0.5, "train_error_rate": 0.125},
        {"step": 4, "loss": 0.1, "rejected": True, "reason": "step guard: not confirmed", "time_s": 4.0},
    ]
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = str(ROOT / "scripts" / "mixture_table.py")
    plain = subprocess.run([sys.executable, script, str(run), "--steps", "3,4"],
                           capture_output=True, text=True, check=True).stdout
    assert f"| {run} | 0.25 / 12.50 % | – | 1 | 2 / 1 / 1 | 4 |" in plain
    with_l2 = subprocess.run([sys.executable, script, str(run), "--steps", "3", "--l2"],
                             capture_output=True, text=True, check=True).stdout
    assert f"| {run} | 0.75 (0.25) / 12.50 % | 1 | 2 / 1 / 1 | 4 |" in with_l2
