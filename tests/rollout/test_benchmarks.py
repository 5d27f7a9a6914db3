"""Smoke runs of the rollout benchmarks (--quick): they run and write valid JSON; no timing checks."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_switch_rollout_quick(tmp_path):
    out = tmp_path / "switch.json"
    load("switch_rollout").main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["all_identical"] is True  # drafted == sequential, also in the benchmark's own runs
    assert len(result["rows"]) == 3
    for key in ("speedup_at_half_teacher", "efficiency_at_half_teacher", "decode_cost_ms", "topk_jsd_error_at_half"):
        assert key in result
    assert result["models"]["source"].startswith("random")


@pytest.mark.slow
def test_rollout_throughput_quick(ray_local, tmp_path):
    out = tmp_path / "throughput.json"
    load("rollout_throughput").main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    assert {(r["backend"], r["workers"]) for r in result["rows"]} == {("torch", 1), ("torch", 2)}
    assert all(r["tokens_per_s"] > 0 for r in result["rows"])
