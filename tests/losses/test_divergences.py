"""Dense divergences against the float64 reference, their limits, masks and temperature."""

from __future__ import annotations

import math

import pytest
import torch

from distill_ray.errors import DistillError
from distill_ray.losses.divergences import (
    DIVERGENCES,
    DivergenceSpec,
    check_same_tokenizer,
    divergence,
    masked_mean,
    per_token_divergence,
)

PARAMS = [  # (kind, beta, alpha): defaults plus the edge settings that switch formulas
    *[(kind, 0.5, 0.1) for kind in DIVERGENCES],
    ("jsd", 0.0, 0.1),
    ("jsd", 1.0, 0.1),
    ("jsd", 0.2, 0.1),
    ("skew_forward_kl", 0.5, 0.0),
    ("skew_reverse_kl", 0.5, 0.3),
]


def random_logits(*shape, dtype=torch.float64, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("kind,beta,alpha", PARAMS)
def test_matches_float64_reference_values_and_gradients(reference, kind, beta, alpha, temperature, dtype):
    t = random_logits(2, 4, 50, dtype=dtype, seed=1).requires_grad_()
    s = random_logits(2, 4, 50, dtype=dtype, seed=2).requires_grad_()
    ours = per_token_divergence(t, s, kind=kind, temperature=temperature, beta=beta, alpha=alpha)  # [2, 4]
    t64 = t.detach().double().requires_grad_()
    s64 = s.detach().double().requires_grad_()
    ref = reference.from_logits(t64, s64, kind, temperature, beta, alpha)
    assert ours.shape == (2, 4)
    # float64 inputs: far inside the 1e-6 bound; float32 inputs: 1e-6 plus float32's own
    # relative resolution, since a divergence of 8 nats cannot be resolved to 1e-6 in float32
    atol, rtol = (1e-10, 0.0) if dtype == torch.float64 else (1e-6, 1e-6)
    torch.testing.assert_close(ours.double(), ref, atol=atol, rtol=rtol)
    # a weighted sum gives every token its own gradient scale
    w = torch.rand(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    g_ours = torch.autograd.grad((ours.double() * w).sum(), [t, s])
    g_ref = torch.autograd.grad((ref * w).sum(), [t64, s64])
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a.double(), b, atol=atol, rtol=rtol)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_equal_distributions_give_zero(kind):
    logits = random_logits(3, 5, 40, dtype=torch.float32).requires_grad_()
    d = per_token_divergence(logits, logits.detach().clone(), kind=kind)
    assert d.abs().max().item() == 0.0  # exactly: the mixture terms are written so that they cancel
    (grad,) = torch.autograd.grad(d.sum(), [logits])
    torch.testing.assert_close(grad, torch.zeros_like(grad), atol=1e-6, rtol=0)  # log_softmax's rounding


def test_jsd_is_at_most_ln2_and_reaches_it_for_disjoint_supports():
    t = torch.full((1, 1, 6), -60.0, dtype=torch.float64)
    s = t.clone()
    t[..., :3] = 0.0
    s[..., 3:] = 0.0
    d = per_token_divergence(t, s, kind="jsd")
    assert abs(float(d) - math.log(2)) < 1e-9
    t, s = random_logits(4, 8, 30, scale=20.0, seed=4), random_logits(4, 8, 30, scale=20.0, seed=5)
    many = per_token_divergence(t, s, kind="jsd")
    assert float(many.max()) <= math.log(2) + 1e-12 and float(many.min()) >= 0.0


def test_limits_of_the_parameters():
    t, s = random_logits(2, 3, 20, seed=6), random_logits(2, 3, 20, seed=7)
    fkl, rkl = per_token_divergence(t, s, kind="forward_kl"), per_token_divergence(t, s, kind="reverse_kl")
    torch.testing.assert_close(per_token_divergence(t, s, kind="skew_forward_kl", alpha=0.0), fkl)
    torch.testing.assert_close(per_token_divergence(t, s, kind="skew_reverse_kl", alpha=0.0), rkl)
    assert float(per_token_divergence(t, s, kind="skew_forward_kl", alpha=1.0).abs().max()) == 0.0
    torch.testing.assert_close(per_token_divergence(t, s, kind="jsd", beta=0.0), fkl)
    torch.testing.assert_close(per_token_divergence(t, s, kind="jsd", beta=1.0), rkl)
    tv = per_token_divergence(t, s, kind="tv")
    assert float(tv.min()) >= 0.0 and float(tv.max()) <= 1.0
    # skewing only ever lowers the divergence: the mixture is closer to p than q is
    assert bool((per_token_divergence(t, s, kind="skew_forward_kl", alpha=0.1) <= fkl).all())


def test_temperature_divides_both_logits():
    t, s = random_logits(2, 3, 20, seed=8), random_logits(2, 3, 20, seed=9)
    for kind in DIVERGENCES:
        hot = divergence(t, s, kind=kind, temperature=2.5)
        torch.testing.assert_close(hot, divergence(t / 2.5, s / 2.5, kind=kind), atol=1e-12, rtol=0)
    assert float(divergence(t, s, temperature=2.5)) != pytest.approx(float(divergence(t, s)))


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_masked_token_mean_matches_reference(reference, kind):
    t = random_logits(3, 6, 25, seed=10)
    s = random_logits(3, 6, 25, seed=11).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    ours = divergence(t, s, mask, kind=kind)
    ref = reference.reduce(reference.from_logits(t, s, kind), mask)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=0)
    (grad,) = torch.autograd.grad(ours, [s])
    assert float(grad[~mask].abs().max()) == 0.0  # masked-out tokens get no gradient


def test_masked_mean_is_the_mean_over_masked_in_tokens():
    values = torch.tensor([[1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    assert float(masked_mean(values, mask)) == pytest.approx(9.0 / 5.0)
    assert float(masked_mean(values, None)) == pytest.approx(values.mean().item())


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_all_masked_batch_is_zero_with_zero_gradient(kind):
    t = random_logits(2, 3, 10, seed=12)
    s = random_logits(2, 3, 10, seed=13).requires_grad_()
    t[0, 0] = 1e30  # garbage where nothing counts must not leak in
    loss = divergence(t, s, torch.zeros(2, 3), kind=kind)
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss, [s])
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().max()) == 0.0


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_minus_inf_logits_on_shared_entries_are_ignored_without_nan(kind):
    """Entries both models rule out (a masked vocabulary slot) contribute 0, not nan."""
    t = random_logits(2, 3, 12, seed=14)
    s = random_logits(2, 3, 12, seed=15)
    t_inf, s_inf = t.clone(), s.clone()
    t_inf[..., -4:] = -math.inf
    s_inf[..., -4:] = -math.inf
    t_inf.requires_grad_()
    s_inf.requires_grad_()
    d = per_token_divergence(t_inf, s_inf, kind=kind)
    torch.testing.assert_close(d, per_token_divergence(t[..., :-4], s[..., :-4], kind=kind), atol=1e-12, rtol=0)
    grads = torch.autograd.grad(d.sum(), [t_inf, s_inf])
    for g in grads:
        assert bool(torch.isfinite(g).all())
        assert float(g[..., -4:].abs().max()) == 0.0


def test_low_precision_logits_are_upcast():
    t, s = random_logits(2, 3, 64, seed=16), random_logits(2, 3, 64, seed=17)
    d16 = divergence(t.bfloat16(), s.bfloat16())
    assert d16.dtype == torch.float32
    assert abs(float(d16) - float(divergence(t.bfloat16().double(), s.bfloat16().double()))) < 1e-5


def test_bad_arguments_raise_one_line_errors():
    t = s = torch.zeros(1, 2, 5)
    with pytest.raises(DistillError, match="unknown kind 'kl'.*forward_kl"):
        divergence(t, s, kind="kl")
    with pytest.raises(TypeError, match="reduction"):
        divergence(t, s, reduction="sum")  # not a setting (every loss is a token mean)
    with pytest.raises(DistillError, match="temperature"):
        divergence(t, s, temperature=0.0)
    with pytest.raises(DistillError, match="beta"):
        divergence(t, s, kind="jsd", beta=1.5)
    with pytest.raises(DistillError, match="vocab_size"):
        divergence(torch.zeros(1, 2, 5), torch.zeros(1, 2, 7))


def test_padded_vocabularies_are_cut_to_the_shared_size():
    t = random_logits(2, 3, 37, seed=18)
    s = random_logits(2, 3, 41, seed=19)
    torch.testing.assert_close(divergence(t, s, vocab_size=32), divergence(t[..., :32], s[..., :32]))
    with pytest.raises(DistillError, match="vocab_size 40"):
        divergence(t, s, vocab_size=40)


def test_check_same_tokenizer():
    from distill_ray.models.tokenizer import train_tokenizer

    texts_a = ["the cat sat on the mat", "a dog ran in the park"] * 20
    texts_b = ["quantum fields vibrate", "entropy always grows slowly"] * 20
    tok_a, tok_a2, tok_b = train_tokenizer(texts_a, 60), train_tokenizer(texts_a, 60), train_tokenizer(texts_b, 60)
    assert check_same_tokenizer(tok_a, tok_a2) == len(tok_a)
    with pytest.raises(DistillError, match="teacher and student tokenizers differ"):
        check_same_tokenizer(tok_a, tok_b)


def test_a_spec_is_checked_once_when_built_and_keywords_override_it():
    with pytest.raises(DistillError, match="unknown kind 'kl'"):
        DivergenceSpec(kind="kl")
    with pytest.raises(DistillError, match="alpha"):
        DivergenceSpec(kind="skew_forward_kl", alpha=-0.1)
    with pytest.raises(DistillError, match="vocab_size"):
        DivergenceSpec(vocab_size=0)
    t, s = random_logits(2, 3, 12, seed=18), random_logits(2, 3, 12, seed=19)
    spec = DivergenceSpec(kind="jsd", temperature=2.0, beta=0.3)
    assert float(divergence(t, s, None, spec)) == float(divergence(t, s, kind="jsd", temperature=2.0, beta=0.3))
    # keywords on top of a spec replace its fields
    assert float(divergence(t, s, None, spec, beta=0.7)) == float(divergence(t, s, kind="jsd", temperature=2.0, beta=0.7))
