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


def test_switch_rollout_at_fixed_tau0_and_batch(tmp_path, load_benchmark):
    # the training setting: a given tau0 (no calibration) at a batch above 1 (no planned ceiling there)
    out = tmp_path / "switch.json"
    load_benchmark("switch_rollout").main(["--quick", "--prompt-sets", "long", "--batch-size", "2", "--tau0", "0.05,1.0",
                                           "--out", str(out)])
    result = json.loads(out.read_text())
    rows = result["sets"]["long"]["rows"]
    assert [r["tau0"] for r in rows] == [0.05, 1.0] and result["settings"]["tau0"] == [0.05, 1.0]
    assert [r["target_fraction"] for r in rows] == [None, None]
    assert [r["tau0_above_ln2"] for r in rows] == [False, True]
    assert rows[0]["teacher_fraction"] >= rows[1]["teacher_fraction"]  # a lower threshold hands the teacher more
    assert result["all_identical"] is True and all(r["planned_speedup"] is None for r in rows)
    assert result["meets_target"] is None  # the 0.75 target is set at ~50% teacher tokens, not at a given tau0


def test_switch_rollout_rejects_a_bad_tau0(tmp_path, load_benchmark, capsys):
    with pytest.raises(SystemExit) as exc:
        load_benchmark("switch_rollout").main(["--quick", "--tau0", "0.2,nan", "--out", str(tmp_path / "s.json")])
    assert exc.value.code == 2 and "--tau0" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_switch_tau0_quick(tmp_path, load_benchmark):
    out = tmp_path / "tau0.json"
    load_benchmark("switch_tau0").main(["--quick", "--grid", "0.01,0.3,1.0", "--seeds", "0,1", "--out", str(out)])
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["tau0"] for r in rows] == [0.01, 0.3, 1.0]
    assert [r["tau0_above_ln2"] for r in rows] == [False, False, True] and result["tau0_above_ln2"] is True
    shares = [r["teacher_fraction"]["mean"] for r in rows]
    assert all(0.0 <= f <= 1.0 for f in shares)
    assert shares[0] > shares[2]  # a lower threshold hands the teacher more tokens
    assert len(rows[0]["teacher_fraction"]["per_seed"]) == 2 and rows[0]["teacher_fraction_by_position"]
    best = min(rows, key=lambda r: abs(r["teacher_fraction"]["mean"] - 0.5))
    assert result["calibrated_tau0"] == best["tau0"] and result["calibrated_above_ln2"] == best["tau0_above_ln2"]

@pytest.mark.slow
def test_rollout_throughput_quick(ray_local, tmp_path, load_benchmark):
    out = tmp_path / "throughput.json"
    load_benchmark("rollout_throughput").main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    assert {(r["backend"], r["workers"]) for r in result["rows"]} == {("torch", 1), ("torch", 2)}
    assert all(r["tokens_per_s"] > 0 for r in result["rows"])
