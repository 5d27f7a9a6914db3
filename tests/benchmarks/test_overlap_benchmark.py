"""Smoke run of benchmarks/pipeline_overlap.py --quick: it runs the real driver twice (async and
sync) and writes valid JSON with the headline keys; no timing assertions (shared machine)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_pipeline_overlap_quick(ray_local, tmp_path):
    spec = importlib.util.spec_from_file_location("bench_pipeline_overlap", ROOT / "benchmarks" / "pipeline_overlap.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "overlap.json"
    assert module.main(["--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("async_over_max", "sync_over_sum", "async_speedup", "meets_target"):
        assert key in result
    assert result["runs"]["async"]["steps"] > 0 and result["runs"]["sync"]["steps"] > 0
    assert max(result["runs"]["async"]["staleness"]) <= 1 and set(result["runs"]["sync"]["staleness"]) == {0}
    assert result["async_over_max"] > 0 and result["sync_over_sum"] > 0
