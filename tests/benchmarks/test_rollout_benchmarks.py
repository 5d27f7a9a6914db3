"""Smoke runs of the rollout benchmarks (--quick): they run and write valid JSON; no timing checks."""

from __future__ import annotations

import json

import pytest


def test_switch_rollout_quick(tmp_path, load_benchmark):
    out = tmp_path / "switch.json"
    load_benchmark("switch_rollout").main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["all_identical"] is True  # drafted (cost model, fixed, planned) == sequential, in the benchmark's own runs
    assert set(result["sets"]) == {"long", "mixed"} and result["headline_set"] == "long"
    for s in result["sets"].values():
        assert len(s["rows"]) == 3
        for key in ("speedup_at_half_teacher", "efficiency_at_half_teacher", "decode_cost_ms", "topk_jsd_error_at_half"):
            assert key in s
        assert all(r["fixed_speedup"] > 0 and r["planned_speedup"] > 0 and r["tokens"] > 0 for r in s["rows"])
        assert s["planned_efficiency_at_half_teacher"] > 0
    assert result["efficiency_at_half_teacher"] == result["sets"]["long"]["efficiency_at_half_teacher"]
    assert result["models"]["source"].startswith("random")


@pytest.mark.slow
def test_rollout_throughput_quick(ray_local, tmp_path, load_benchmark):
    out = tmp_path / "throughput.json"
    load_benchmark("rollout_throughput").main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    assert {(r["backend"], r["workers"]) for r in result["rows"]} == {("torch", 1), ("torch", 2)}
    assert all(r["tokens_per_s"] > 0 for r in result["rows"])
