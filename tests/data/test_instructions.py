"""The locally made instruction prompts (data/instructions.py): distinct, every kind present,
deterministic for a seed. Their answers from the real teacher are checked in tests/models/test_real.py."""

from __future__ import annotations

import collections

import pytest

from distill_ray.data.instructions import KINDS, make_prompts
from distill_ray.errors import DistillError


def test_prompts_are_distinct_varied_and_seeded():
    rows = make_prompts(2200, seed=0)
    assert len({r["prompt"] for r in rows}) == 2200
    counts = collections.Counter(r["kind"] for r in rows)
    assert set(counts) == set(KINDS) and min(counts.values()) >= 50  # no kind left out
    assert make_prompts(50, seed=0) == rows[:50]  # the same seed gives the same prompts
    assert make_prompts(50, seed=1) != rows[:50]
    first16 = make_prompts(16, seed=3)
    assert {r["kind"] for r in first16} == set(KINDS)  # the kinds in turn: a small split holds them all


def test_asking_for_more_prompts_than_exist_is_a_clear_error():
    with pytest.raises(DistillError, match="cannot make 10000000 distinct prompts"):
        make_prompts(10_000_000)
