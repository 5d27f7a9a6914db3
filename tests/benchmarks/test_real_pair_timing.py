"""benchmarks/real_pair.py's time to a KL target, on made-up curves (no models): the target is the
start minus half the best mean drop, reached at the first validation at or below it, and the
per-method times over okd's pair seeds."""

from __future__ import annotations

import pytest


def _run(curve, cores=1):
    """curve: (step, train seconds, KL) per validation."""
    return {"validation": [{"step": s, "train_seconds": t, "kl_teacher": kl} for s, t, kl in curve], "cores_held": cores}


def _entry(runs, kl0):
    return {"kl_drop": {"mean": sum(kl0 - r["validation"][-1]["kl_teacher"] for r in runs) / len(runs)}}


def test_time_to_kl_target(load_benchmark):
    m = load_benchmark("real_pair")
    kl0 = 10.0
    runs = {
        # drops 6 and 4 (mean 5): the best, so the target is 10 - 2.5 = 7.5
        "okd": [_run([(10, 10.0, 8.0), (20, 20.0, 7.0), (30, 30.0, 4.0)]), _run([(10, 12.0, 7.5), (20, 24.0, 6.0)])],
        # reaches 7.5 at its second validation in one seed and never in the other
        "sgo": [_run([(10, 30.0, 9.0), (20, 60.0, 7.4)], cores=2), _run([(10, 30.0, 9.5), (20, 60.0, 8.0)], cores=2)],
    }
    per_method = {name: _entry(rs, kl0) for name, rs in runs.items()}
    out = m.time_to_kl(per_method, runs, kl0)
    assert out["kl_target"] == pytest.approx(7.5) and out["kl_target_below_start"] and out["best_method"] == "okd"
    okd, sgo = per_method["okd"], per_method["sgo"]
    assert okd["steps_to_kl_target"]["per_seed"] == [20, 10]  # the first point at or below 7.5 (7.0; 7.5 itself)
    assert okd["seconds_to_kl_target"]["median"] == 16.0 and okd["cpu_seconds_to_kl_target"]["per_seed"] == [20.0, 12.0]
    assert sgo["steps_to_kl_target"]["per_seed"] == [20, "never"] and sgo["seconds_to_kl_target"]["median"] == "never"
    assert sgo["cpu_seconds_to_kl_target"]["per_seed"] == [120.0, "never"]  # 2 cores held
    ratio = out["sgo_over_okd_time_to_kl_target"]
    assert ratio["ratio_of_medians"] is None and ratio["per_seed"] == [3.0] and "numerator" in ratio["why_none"]
    assert out["over_okd_time_to_kl_target"] == {"sgo": ratio}


def test_a_kl_target_above_the_start_is_flagged(load_benchmark):
    m = load_benchmark("real_pair")
    runs = {"kd": [_run([(10, 1.0, 10.5), (20, 2.0, 11.0)])]}  # the KL rose: no method got closer
    per_method = {"kd": _entry(runs["kd"], 10.0)}
    out = m.time_to_kl(per_method, runs, 10.0)
    assert out["kl_target"] == pytest.approx(10.5) and out["kl_target_below_start"] is False
    assert "sgo_over_okd_time_to_kl_target" not in out  # no okd run to compare with
