import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quickstart_fast_runs_end_to_end(tmp_path):
    """`distill-ray quickstart --fast --methods kd,sgo`: every stage runs, an off-policy and an
    on-policy method go through the pipeline with the quickstart's settings, and the summary has
    their rows. (Every method through the pipeline: tests/pipeline/test_driver.py; all five in the
    quickstart: `make demo`. Two here for CI's time budget.)"""
    proc = subprocess.run(
        [sys.executable, "-m", "distill_ray.cli", "quickstart", "--fast", "--methods", "kd,sgo", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exact match" in proc.stdout and "kd student" in proc.stdout
    summary = json.loads((tmp_path / "quickstart.json").read_text())
    methods = ("kd", "sgo")
    assert set(summary["rows"]) == {"teacher", "warm-up student (SFT)", *(f"{m} student" for m in methods)}
    for m in methods:
        assert (tmp_path / "runs" / m / "student" / "config.json").is_file()
        assert summary["rows"][f"{m} student"]["train_seconds"] > 0
    assert summary["parameters"]["teacher"] >= 4 * summary["parameters"]["warm-up student (SFT)"]  # 5x: 1.31M vs 0.26M
    for row in summary["rows"].values():
        assert 0.0 <= row["overall"]["exact_match"] <= 1.0 and 0.0 <= row["overall"]["rouge_l"] <= 1.0


def test_quickstart_names_an_unknown_method_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "distill_ray.cli", "quickstart", "--methods", "kd,gkd"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: quickstart --methods 'kd,gkd': unknown method(s) gkd (known: sft, kd, sgo, switch, okd)"], proc.stderr
