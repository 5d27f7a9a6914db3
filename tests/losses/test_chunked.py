"""The chunked loss equals the unchunked one in value and in every gradient."""

from __future__ import annotations

import pytest
import torch

from distill_ray.errors import DistillError
from distill_ray.losses.chunked import chunked_divergence
from distill_ray.losses.divergences import (
    DIVERGENCES,
    IGNORE_INDEX,
    DivergenceSpec,
    divergence,
    masked_cross_entropy,
)


def make_inputs(B=2, T=7, Hs=8, Ht=12, Vs=29, Vt=29, dtype=torch.float64, seed=0, teacher_grad=False):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, grad=False):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_(grad)

    return dict(
        student_hidden=r(B, T, Hs, grad=True),
        student_weight=r(Vs, Hs, scale=0.7, grad=True),
        teacher_hidden=r(B, T, Ht, grad=teacher_grad),
        teacher_weight=r(Vt, Ht, scale=0.7, grad=teacher_grad),
    )


def dense_loss(x, mask=None, vocab_size=None, labels=None, ce_weight=0.0, **kw):
    """The naive path: whole logits, then the dense divergence (+ CE)."""
    t_logits = x["teacher_hidden"] @ x["teacher_weight"].T
    s_logits = x["student_hidden"] @ x["student_weight"].T
    loss = divergence(t_logits, s_logits, mask, vocab_size=vocab_size, **kw)
    if labels is not None and ce_weight:
        loss = loss + ce_weight * masked_cross_entropy(s_logits, labels, mask, vocab_size)
    return loss


def assert_same(x, chunked, dense, atol=1e-10):
    torch.testing.assert_close(chunked, dense, atol=atol, rtol=0)
    inputs = [v for v in x.values() if v.requires_grad]
    for a, b in zip(torch.autograd.grad(chunked, inputs), torch.autograd.grad(dense, inputs)):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


MASK = torch.tensor([[1, 1, 1, 0, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1]], dtype=torch.bool)


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
@pytest.mark.parametrize("kind", DIVERGENCES)
def test_chunked_equals_unchunked(kind, chunk_size):
    x = make_inputs(seed=1)
    kw = dict(kind=kind, temperature=1.3)
    assert_same(x, chunked_divergence(**x, mask=MASK, chunk_size=chunk_size, **kw), dense_loss(x, MASK, **kw))


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_chunked_equals_unchunked_in_float32(kind):
    x = make_inputs(seed=2, dtype=torch.float32)
    chunked = chunked_divergence(**x, mask=MASK, kind=kind, chunk_size=4)
    assert_same(x, chunked, dense_loss(x, MASK, kind=kind), atol=1e-6)


@pytest.mark.parametrize("kind", ["forward_kl", "jsd", "skew_reverse_kl"])
def test_different_padded_vocabularies(kind):
    """Teacher and student output layers padded to different sizes share the tokenizer's rows."""
    x = make_inputs(Vs=41, Vt=37, seed=3)
    chunked = chunked_divergence(**x, mask=MASK, kind=kind, vocab_size=32, chunk_size=5)
    assert_same(x, chunked, dense_loss(x, MASK, kind=kind, vocab_size=32))
    (g_weight,) = torch.autograd.grad(chunked_divergence(**x, kind=kind, vocab_size=32), [x["student_weight"]])
    assert float(g_weight[32:].abs().max()) == 0.0  # padding rows are not part of the loss
    with pytest.raises(DistillError, match="vocab_size"):
        chunked_divergence(**x)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "tv"])
def test_teacher_side_gradients_when_the_teacher_trains(kind):
    x = make_inputs(seed=4, teacher_grad=True)
    assert_same(x, chunked_divergence(**x, mask=MASK, kind=kind, chunk_size=2), dense_loss(x, MASK, kind=kind))


def test_cross_entropy_term():
    x = make_inputs(seed=5)
    labels = torch.randint(0, 29, (2, 7), generator=torch.Generator().manual_seed(0))
    labels[0, 1] = IGNORE_INDEX
    labels[1, 4] = IGNORE_INDEX
    kw = dict(kind="reverse_kl", labels=labels, ce_weight=0.5)
    assert_same(x, chunked_divergence(**x, mask=MASK, chunk_size=3, **kw), dense_loss(x, MASK, **kw))
    # divergence_weight=0 leaves plain CE
    ce_only = chunked_divergence(**x, mask=MASK, labels=labels, ce_weight=1.0, divergence_weight=0.0)
    # the settings as one DivergenceSpec are the same loss
    spec = DivergenceSpec(kind="reverse_kl")
    torch.testing.assert_close(chunked_divergence(**x, mask=MASK, spec=spec, chunk_size=3, labels=labels, ce_weight=0.5),
                               chunked_divergence(**x, mask=MASK, chunk_size=3, **kw), atol=0, rtol=0)
    dense_ce = dense_loss(x, MASK, labels=labels, ce_weight=1.0) - dense_loss(x, MASK)
    torch.testing.assert_close(ce_only, dense_ce, atol=1e-10, rtol=0)


def test_all_masked_batch_is_zero_with_zero_gradients():
    x = make_inputs(seed=6)
    loss = chunked_divergence(**x, mask=torch.zeros(2, 7))
    assert loss.item() == 0.0
    for g in torch.autograd.grad(loss, [x["student_hidden"], x["student_weight"]]):
        assert float(g.abs().max()) == 0.0


def test_loss_scales_gradients_by_the_incoming_gradient():
    x = make_inputs(seed=7)
    (g1,) = torch.autograd.grad(chunked_divergence(**x, chunk_size=3), [x["student_weight"]])
    (g3,) = torch.autograd.grad(3.0 * chunked_divergence(**x, chunk_size=3), [x["student_weight"]])
    torch.testing.assert_close(g3, 3.0 * g1)


def test_frozen_output_layer_and_bf16():
    x = make_inputs(seed=8, dtype=torch.bfloat16)
    x["student_weight"].requires_grad_(False)
    loss = chunked_divergence(**x, chunk_size=4)
    (g_hidden,) = torch.autograd.grad(loss, [x["student_hidden"]])
    assert loss.dtype == torch.float32 and g_hidden.dtype == torch.bfloat16
    x32 = {k: v.detach().float().requires_grad_(v.requires_grad) for k, v in x.items()}
    (g_ref,) = torch.autograd.grad(dense_loss(x32), [x32["student_hidden"]])
    # bf16 logits (the matmul's output) are rounded before the float32 softmax, hence ~1e-3
    torch.testing.assert_close(loss, dense_loss(x32).detach(), atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(g_hidden.float(), g_ref, atol=2e-3, rtol=2e-2)


def test_bad_shapes_raise():
    x = make_inputs()
    with pytest.raises(DistillError, match="chunk_size"):
        chunked_divergence(**x, chunk_size=0)
    with pytest.raises(DistillError, match="hidden"):
        chunked_divergence(x["student_hidden"], x["student_weight"], x["teacher_hidden"][:, :3], x["teacher_weight"])
    with pytest.raises(DistillError, match="output layers"):
        chunked_divergence(x["student_hidden"], x["teacher_weight"], x["teacher_hidden"], x["teacher_weight"])
