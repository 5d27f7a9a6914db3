"""The SWITCH rule: the JSD it compares, the decaying threshold, who writes, the fractions."""

from __future__ import annotations

import math

import pytest
import torch

from distill_ray.losses.divergences import per_token_divergence_from_logprobs
from distill_ray.rollout.switch_rule import (
    jsd_from_logprobs,
    switch_threshold,
    teacher_fraction,
    teacher_fraction_by_bucket,
    teacher_writes,
)


def logprobs(*shape, scale=3.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(*shape, generator=g, dtype=torch.float64) * scale, -1).to(dtype)


def test_jsd_matches_the_float64_formula():
    lp, lq = logprobs(3, 4, 30, seed=1), logprobs(3, 4, 30, seed=2)
    p, q = lp.exp(), lq.exp()
    m = 0.5 * (p + q)
    expected = 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)
    torch.testing.assert_close(jsd_from_logprobs(lp, lq), expected, atol=1e-12, rtol=0)
    # the rollout rule and the training loss use the same JSD
    torch.testing.assert_close(jsd_from_logprobs(lp, lq), per_token_divergence_from_logprobs(lp, lq, kind="jsd"))


def test_jsd_bounds():
    lp = logprobs(5, 40, seed=3)
    assert float(jsd_from_logprobs(lp, lp).abs().max()) == 0.0
    # disjoint supports reach ln 2, and it never goes over, even with -inf entries
    disjoint_p = torch.log(torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64))
    disjoint_q = torch.log(torch.tensor([0.0, 0.0, 0.25, 0.75], dtype=torch.float64))
    assert float(jsd_from_logprobs(disjoint_p, disjoint_q)) == pytest.approx(math.log(2), abs=1e-12)
    many = jsd_from_logprobs(logprobs(200, 50, scale=30.0, seed=4), logprobs(200, 50, scale=30.0, seed=5))
    assert float(many.max()) <= math.log(2) and float(many.min()) >= 0.0
    assert jsd_from_logprobs(lp.bfloat16(), lp.bfloat16()).dtype == torch.float32


def test_threshold_decays_from_tau0():
    assert float(switch_threshold(0, 0.2, 0.1)) == pytest.approx(0.2)
    assert float(switch_threshold(10, 0.2, 0.1)) == pytest.approx(0.2 * math.exp(-1.0))
    taus = switch_threshold(torch.arange(5), 0.3, 0.5)
    torch.testing.assert_close(taus, 0.3 * torch.exp(-0.5 * torch.arange(5, dtype=torch.float64)))
    assert float(switch_threshold(7, 0.3, 0.0)) == pytest.approx(0.3)  # no decay: constant


def test_who_writes():
    lp = logprobs(4, 30, seed=6)
    same, far = lp.clone(), logprobs(4, 30, seed=7)
    d = jsd_from_logprobs(lp, far)
    # equal distributions: the student writes at any threshold >= 0
    assert not bool(teacher_writes(lp, same, 0, tau0=0.0, decay=0.1).any())
    # strictly above the threshold: the teacher; at or below it: the student
    assert bool(teacher_writes(lp, far, 0, tau0=float(d.min()) * 0.5, decay=0.1).all())
    assert not bool(teacher_writes(lp, far, 0, tau0=float(d.max()), decay=0.1).any())
    assert not bool(teacher_writes(lp, far, 0, tau0=math.log(2), decay=0.0).any())
    # the same disagreement hands over to the teacher later in the response, as tau_t decays
    tau0 = float(d.max()) * 1.01
    positions = torch.tensor([0, 100, 0, 100])
    assert teacher_writes(lp, far, positions, tau0=tau0, decay=0.1).tolist() == [False, True, False, True]


def test_teacher_fraction_overall_and_by_position():
    writer = torch.tensor([[1, 0, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    valid = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
    result = teacher_fraction(writer, valid)
    # padding (the 1 at [0, 3]) is not a response token and is not counted
    assert result["overall"] == pytest.approx(4 / 6)
    assert result["by_position"][:3] == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert result["by_position"][3] is None
    empty = teacher_fraction(writer, torch.zeros(3, 4))
    assert empty["overall"] == 0.0 and empty["by_position"] == [None] * 4


def test_teacher_fraction_by_position_bucket_counts_real_tokens_only():
    writer = torch.zeros(2, 40, dtype=torch.bool)
    writer[0, :8] = True  # the teacher wrote row 0's first bucket
    writer[1, 30:40] = True  # and the tail of row 1 (past its end from 35: padding, not counted)
    valid = torch.zeros(2, 40)
    valid[0, :10], valid[1, :35] = 1, 1
    m = teacher_fraction_by_bucket(writer, valid)
    assert m == {
        "switch/teacher_fraction/0-7": pytest.approx(8 / 16), "switch/tokens/0-7": 16.0,
        "switch/teacher_fraction/8-31": pytest.approx(2 / 26), "switch/tokens/8-31": 26.0,
        "switch/teacher_fraction/32-127": pytest.approx(3 / 3), "switch/tokens/32-127": 3.0,
    }  # no token at 128+: no bucket


def test_identical_models_never_hand_over_even_late_in_a_long_response():
    """tau_t -> 0 as t grows; rounding noise in the JSD (~1e-8 in float32) must not beat it."""
    lp = logprobs(64, 1000, seed=8, dtype=torch.float32)
    assert float(switch_threshold(300, 0.2, 0.1)) < 1e-13
    assert float(jsd_from_logprobs(lp, lp.clone()).abs().max()) == 0.0
    assert not bool(teacher_writes(lp, lp.clone(), 300, tau0=0.2, decay=0.1).any())
