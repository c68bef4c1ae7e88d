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
