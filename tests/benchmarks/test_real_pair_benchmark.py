"""benchmarks/real_pair.py --quick on the real pair: it runs end to end and its JSON says what
the README reads from it (the start and final KL, per seed, the depth-cost table)."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.real_extended]  # `make test-real`


def test_real_pair_benchmark_quick(ray_local, load_benchmark, real_teacher, tmp_path):
    bench = load_benchmark("real_pair")
    out = tmp_path / "real_pair.json"
    assert bench.main(["--quick", "--models", str(tmp_path / "root"), "--teacher", str(real_teacher),
                       "--depth-costs", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    kd = result["methods"]["kd"]
    start = result["reference"]["start"]["kl_teacher_student_per_token"]
    assert start > 0 and kd["kl_final"]["per_seed"][0] > 0
    assert kd["kl_drop"]["per_seed"][0] == pytest.approx(start - kd["kl_final"]["per_seed"][0])
    assert kd["runs"][0]["steps"] == 2 and [c["step"] for c in kd["runs"][0]["validation"]] == [1, 2]
    # the references are the teacher's own greedy answers (batched, left-padded generation may split a near-tie)
    assert result["reference"]["teacher_rouge_l_self"] >= 0.8
    assert result["depth_costs"][0]["layers"] == 2 and result["depth_costs"][0]["step_seconds"] > 0
    assert result["prune"]["layers"] == 6 and result["prune"]["kept_blocks"][0] == 0
