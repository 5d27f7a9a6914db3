"""Smoke run of benchmarks/okd_vs_sgo.py --quick (every variant it names through the real driver,
two seeds, valid JSON with the headline keys), and its arithmetic on known numbers; no timing
assertions."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_okd_vs_sgo_quick(ray_local, tmp_path, load_benchmark):
    module = load_benchmark("okd_vs_sgo")
    out = tmp_path / "okd_vs_sgo.json"
    rc = module.main(["--quick", "--methods", "okd,sgo", "--out", str(out)])  # the two it must have (CI's time budget)
    written = out if rc == 0 else out.with_suffix(".rejected.json")  # tiny models may not improve in 4 steps
    assert rc in (0, 1) and written.is_file()
    result = json.loads(written.read_text())
    assert set(result["methods"]) == {"okd", "sgo"} and result["seeds"] == 2
    assert result["target_above_warmup"] == (rc == 0) == (result["target_rouge_l"] > result["warmup_rouge_l"])
    for key in ("sgo_over_okd_time_to_target", "teacher_validation", "best_gap_recovered", "target_rule"):
        assert key in result
    for name, r in result["methods"].items():
        assert len(r["runs"]) == 2, name
        for run in r["runs"]:
            assert run["steps"] == 4 and [c["step"] for c in run["validation"]] == [0, 2, 4], name  # step 0 + every 2
            assert run["validation"][0]["rouge_l"] == result["warmup_rouge_l"]
            assert run["step_seconds"]["mean"] > 0 and run["tokens_trained"] > 0
        assert set(r["breakdown_seconds"]) == {"rollout_wait", "teacher_forward", "student_fwd_bwd", "optimizer",
                                               "weight_sync", "other"}
        for key in ("steps_to_target", "seconds_to_target", "cpu_seconds_to_target"):
            assert len(r[key]["per_seed"]) == 2
    # the rollout worker's core is counted for the on-policy variants only
    # (BENCH_SETTINGS: one trainer rank of one thread, plus the rollout worker's one)
    assert result["methods"]["okd"]["cores_held"] == 1 and result["methods"]["sgo"]["cores_held"] == 2
    assert result["settings"]["bench_settings"] == module._common.BENCH_SETTINGS
    assert result["methods"]["okd"]["rollout_busy_seconds"] == 0.0
    assert result["methods"]["sgo"]["rollout_busy_seconds"] > 0.0
    assert result["methods"]["sgo"]["on_policy_fraction"] < 1.0  # lambda_on 0.5 mixes dataset batches in

    if rc == 0:  # the plots made from it (benchmarks/plots.py): valid PNGs
        plots = load_benchmark("plots")
        assert plots.main(["--results", str(tmp_path)]) == 0
        for png in ("quality_vs_time.png", "time_breakdown.png"):
            data = (tmp_path / png).read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png


def _run(curve, cores=2):
    return {"validation": [{"step": s, "train_seconds": t, "rouge_l": r, "exact_match": 0.0} for s, t, r in curve],
            "final_rouge_l": curve[-1][2], "cores_held": cores, "step_seconds": {"mean": 1.0, "median": 1.0},
            "train_seconds": curve[-1][1], "tokens_trained": 100.0, "on_policy_fraction": 0.0,
            "breakdown_seconds": {"other": 0.1}, "rollout_busy_seconds": 0.0}


def test_time_to_target_arithmetic(load_benchmark):
    m = load_benchmark("okd_vs_sgo")
    fast = [_run([(0, 0.0, 0.1), (10, 5.0, 0.3), (20, 10.0, 0.4)]), _run([(0, 0.0, 0.1), (10, 6.0, 0.25), (20, 12.0, 0.5)])]
    slow = [_run([(0, 0.0, 0.1), (10, 8.0, 0.2), (20, 16.0, 0.3)], cores=3), _run([(0, 0.0, 0.1), (10, 9.0, 0.1), (20, 18.0, 0.15)], cores=3)]
    a, b = m.aggregate(fast, 0.1, 0.25), m.aggregate(slow, 0.1, 0.25)
    assert a["steps_to_target"]["per_seed"] == [10, 10] and a["seconds_to_target"]["median"] == 5.5
    assert a["cpu_seconds_to_target"]["per_seed"] == [10.0, 12.0]
    assert b["steps_to_target"]["per_seed"] == [20, "never"] and b["seconds_to_target"]["median"] == "never"
    assert b["cpu_seconds_to_target"]["per_seed"] == [48.0, "never"]
    assert a["final_minus_warmup"]["per_seed"] == pytest.approx([0.3, 0.4]) and a["above_warmup_beyond_spread"]
    flat = m.aggregate([_run([(0, 0.0, 0.1), (10, 1.0, 0.3)]), _run([(0, 0.0, 0.1), (10, 1.0, 0.05)])], 0.1, 0.2)
    assert not flat["above_warmup_beyond_spread"]  # one seed below the warm-up
    r = m.time_ratio(b, a)
    assert r["ratio_of_medians"] is None and r["per_seed"] == [16.0 / 5.0] and "never" in r["why_none"]
    assert m.time_ratio(a, a)["ratio_of_medians"] == 1.0
