"""benchmarks/losses.py runs end to end at tiny sizes and writes the JSON the README quotes.

A smoke run only: no timing or memory figure is asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "losses.py"


def test_quick_benchmark_writes_valid_json(tmp_path):
    out = tmp_path / "losses.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    for key in ("mem_ratio_152k_4096", "time_ratio_152k_4096", "torch_version", "threads", "cases", "headline"):
        assert key in report
    assert report["quick"] is True
    assert {c["impl"] for c in report["cases"]} == {"naive", "chunked"}
    assert all(c["fits"] for c in report["cases"])
    assert all(c["peak_mem_bytes"] > 0 and c["time_s"] > 0 for c in report["cases"])
    # both implementations computed the same loss
    by_size = {}
    for case in report["cases"]:
        by_size.setdefault((case["vocab"], case["seq"]), []).append(case["loss"])
    assert all(abs(a - b) < 1e-5 for a, b in by_size.values())
    assert "did not fit" not in proc.stdout
