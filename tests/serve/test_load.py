"""A short load test against the session's teacher service: benchmarks/serve_load.py --quick
(8 concurrent clients for 5 s) must see every request answered, none failed or dropped."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_serve_load", ROOT / "benchmarks/serve_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_load_has_no_failures(services, tmp_path):
    out = tmp_path / "serve_load.json"
    result = load_benchmark().main(["--quick", "--url", services["teacher"], "--out", str(out)])
    assert json.loads(out.read_text())["requests"] == result["requests"]
    assert result["settings"]["clients"] == 8 and result["settings"]["seconds"] == 5.0
    assert result["failed"] == 0 and result["dropped"] == 0, result["errors"]
    assert result["ok"] >= 8 and result["requests_per_s"] > 0
    assert result["latency_ms"]["p50"] <= result["latency_ms"]["p99"] <= result["latency_ms"]["max"]


def test_percentile():
    percentile = load_benchmark().percentile
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0 and percentile(values, 100) == 100.0
    assert percentile([], 50) is None and percentile([3.0], 99) == 3.0
