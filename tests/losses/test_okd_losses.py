"""OKD's student and module losses: values, which side gets gradients, chunked == dense."""

from __future__ import annotations

import pytest
import torch

from distill_ray.losses.divergences import IGNORE_INDEX, divergence, masked_reduce, per_token_cross_entropy
from distill_ray.losses.okd import okd_module_loss, okd_module_loss_chunked, okd_student_loss, okd_student_loss_chunked


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = dict(
        student_hidden=torch.randn(2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True),
        student_weight=torch.randn(19, 6, generator=g, dtype=torch.float64, requires_grad=True),
        teacher_hidden=torch.randn(2, 5, 10, generator=g, dtype=torch.float64, requires_grad=True),
        teacher_weight=torch.randn(17, 10, generator=g, dtype=torch.float64, requires_grad=True),
    )
    labels = torch.randint(0, 16, (2, 5), generator=g)
    labels[0, 0] = IGNORE_INDEX
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]])
    return x, labels, mask


def logits(x):
    return x["teacher_hidden"] @ x["teacher_weight"].T, x["student_hidden"] @ x["student_weight"].T


def ce(logits_, labels, mask):
    return masked_reduce(per_token_cross_entropy(logits_[..., :16], labels), (labels != IGNORE_INDEX) & mask.bool())


def test_student_loss_value_and_only_student_gradients():
    x, labels, mask = inputs()
    t, s = logits(x)
    loss = okd_student_loss(t, s, mask, labels, kind="jsd", ce_weight=0.3, vocab_size=16)
    expected = divergence(t, s, mask, "jsd", vocab_size=16) + 0.3 * ce(s, labels, mask)
    torch.testing.assert_close(loss, expected, atol=1e-12, rtol=0)
    loss.backward()
    assert x["teacher_hidden"].grad is None and x["teacher_weight"].grad is None
    assert float(x["student_hidden"].grad.abs().sum()) > 0


def test_module_loss_value_and_only_teacher_gradients():
    x, labels, mask = inputs(1)
    t, s = logits(x)
    loss = okd_module_loss(t, s, labels, mask, kind="reverse_kl", module_weight=0.7, vocab_size=16)
    # D'(q_S, p_T): the student is the target (first argument), the teacher the one that moves
    expected = ce(t, labels, mask) + 0.7 * divergence(s, t, mask, "reverse_kl", vocab_size=16)
    torch.testing.assert_close(loss, expected, atol=1e-12, rtol=0)
    loss.backward()
    assert x["student_hidden"].grad is None and x["student_weight"].grad is None
    assert float(x["teacher_hidden"].grad.abs().sum()) > 0


@pytest.mark.parametrize("kind", ["forward_kl", "skew_forward_kl"])
def test_chunked_forms_equal_dense_forms(kind):
    x, labels, mask = inputs(2)
    params = list(x.values())
    t, s = logits(x)
    common = dict(mask=mask, labels=labels, kind=kind, vocab_size=16)
    pairs = [
        (
            okd_student_loss_chunked(**x, **common, ce_weight=0.5, chunk_size=3),
            okd_student_loss(t, s, mask, labels, kind=kind, ce_weight=0.5, vocab_size=16),
        ),
        (
            okd_module_loss_chunked(**x, **common, module_weight=2.0, chunk_size=3),
            okd_module_loss(t, s, labels, mask, kind=kind, module_weight=2.0, vocab_size=16),
        ),
    ]
    for chunked, dense in pairs:
        torch.testing.assert_close(chunked, dense, atol=1e-10, rtol=0)
        g_chunked = torch.autograd.grad(chunked, params, allow_unused=True, retain_graph=True)
        g_dense = torch.autograd.grad(dense, params, allow_unused=True, retain_graph=True)
        for a, b in zip(g_chunked, g_dense):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
