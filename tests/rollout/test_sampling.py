"""Position-keyed draws and inverse-CDF sampling."""

from __future__ import annotations

import pytest
import torch

from distill_ray.errors import DistillError
from distill_ray.rollout.sampling import (
    STUDENT_STREAM,
    TEACHER_STREAM,
    SamplingConfig,
    keyed_uniform,
    sample_tokens,
    sampling_probs,
)


def test_keyed_uniform_is_a_function_of_its_key():
    seq = torch.arange(1000)
    pos = torch.arange(1000) % 37
    a = keyed_uniform(3, seq, pos, STUDENT_STREAM)
    b = keyed_uniform(3, seq.flip(0), pos.flip(0), STUDENT_STREAM).flip(0)  # another order, same keys
    assert torch.equal(a, b)
    assert a.dtype == torch.float64 and (a >= 0).all() and (a < 1).all()
    # one element at a time gives the same numbers
    assert keyed_uniform(3, seq[5:6], pos[5:6], STUDENT_STREAM).item() == a[5].item()
    # every part of the key matters
    assert not torch.equal(a, keyed_uniform(4, seq, pos, STUDENT_STREAM))
    assert not torch.equal(a, keyed_uniform(3, seq, pos, TEACHER_STREAM))
    assert not torch.equal(a, keyed_uniform(3, seq, pos + 1, STUDENT_STREAM))


def test_keyed_uniform_looks_uniform_and_independent():
    seq = torch.arange(200).repeat_interleave(100)
    pos = torch.arange(100).repeat(200)
    u = keyed_uniform(0, seq, pos, STUDENT_STREAM)
    v = keyed_uniform(0, seq, pos, TEACHER_STREAM)
    assert abs(u.mean().item() - 0.5) < 0.01
    counts = torch.histc(u.float(), bins=10, min=0, max=1)
    assert (counts - 2000).abs().max() < 200  # 20000 draws, 10 bins
    assert abs(torch.corrcoef(torch.stack([u, v]))[0, 1].item()) < 0.03
    # neighbouring positions of one sequence are uncorrelated
    assert abs(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1].item()) < 0.03


def test_inverse_cdf_sampling_follows_the_distribution():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 6, generator=g) * 1.5
    n = 40000
    u = keyed_uniform(1, torch.arange(n), torch.zeros(n, dtype=torch.long), STUDENT_STREAM)
    tokens = sample_tokens(logits.expand(n, -1), u, temperature=1.0, top_p=1.0)
    freq = torch.bincount(tokens, minlength=6).double() / n
    torch.testing.assert_close(freq, logits.softmax(-1)[0].double(), atol=0.01, rtol=0)


def test_temperature_top_p_and_greedy():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])
    probs = logits.softmax(-1)[0]  # about 0.61, 0.22, 0.14, 0.03, 0.004
    nucleus = sampling_probs(logits, temperature=1.0, top_p=0.8)[0]
    # the smallest set of most likely tokens with mass >= 0.8: tokens 0 and 1 (0.61 < 0.8 <= 0.83)
    kept = (nucleus > 0).nonzero().squeeze(1).tolist()
    assert kept == [0, 1]
    torch.testing.assert_close(nucleus[:2], probs[:2].double())
    n = 5000
    u = keyed_uniform(0, torch.arange(n), torch.zeros(n, dtype=torch.long), 0)
    tokens = sample_tokens(logits.expand(n, -1), u, temperature=1.0, top_p=0.8)
    assert set(tokens.tolist()) <= set(kept)
    assert (sample_tokens(logits.expand(n, -1), u, temperature=0.0, top_p=1.0) == 0).all()
    hot = sample_tokens(logits.expand(n, -1), u, temperature=5.0, top_p=1.0)
    assert (hot == 4).float().mean() > 0.05  # a high temperature reaches the unlikely tokens


def test_never_samples_a_zero_probability_token():
    logits = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")]]).expand(4, -1)
    u = torch.tensor([0.0, 0.4999, 0.5, 1.0 - 2**-53], dtype=torch.float64)
    assert set(sample_tokens(logits, u, 1.0, 1.0).tolist()) <= {0, 2}


def test_sampling_config_validates():
    with pytest.raises(DistillError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(DistillError, match="max_new_tokens"):
        SamplingConfig(max_new_tokens=0)
    with pytest.raises(DistillError, match="temperature"):
        SamplingConfig(temperature=-1.0)


def test_small_and_large_inputs_hash_alike():
    """Few draws are hashed with Python ints, many with tensor ops: the same bits either way."""
    seq = torch.tensor([0, 1, 2**40, -5, 7, 2**62])
    pos = torch.tensor([0, 3, 5, 2**33, 9, 1])
    stream = torch.tensor([0, 1, 0, 1, 1, 0])
    small = keyed_uniform(9, seq, pos, stream)
    large = keyed_uniform(9, seq.repeat(10), pos.repeat(10), stream.repeat(10))[:6]  # > the small-input cut-off
    assert torch.equal(small, large)
