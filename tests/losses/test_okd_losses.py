"""OKD's online-module loss: value, which side gets gradients, chunked == dense. (OKD's student
loss is kd's, `divergence` against the detached teacher: tests/trainer/test_trainer_step.py.)"""

from __future__ import annotations

import pytest
import torch

from distill_ray.losses.divergences import IGNORE_INDEX, DivergenceSpec, divergence
from distill_ray.losses.okd import okd_module_loss, okd_module_loss_chunked


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
    """Plain mean -log p(label) over positions with a target and in the mask, first 16 entries."""
    has_target = (labels != IGNORE_INDEX) & mask.bool()
    logp = torch.log_softmax(logits_[..., :16], -1)
    nll = -logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return nll[has_target].sum() / has_target.sum()


def test_module_loss_value_and_only_teacher_gradients():
    x, labels, mask = inputs(1)
    t, s = logits(x)
    loss = okd_module_loss(t, s, labels, mask, kind="reverse_kl", module_weight=0.7, vocab_size=16)
    # D'(q_S, p_T): the student is the target (first argument), the teacher the one that moves
    expected = ce(t, labels, mask) + 0.7 * divergence(s, t, mask, kind="reverse_kl", vocab_size=16)
    torch.testing.assert_close(loss, expected, atol=1e-12, rtol=0)
    spec = DivergenceSpec(kind="reverse_kl", vocab_size=16)  # the same settings as one object
    torch.testing.assert_close(okd_module_loss(t, s, labels, mask, spec, module_weight=0.7), loss, atol=0, rtol=0)
    loss.backward()
    assert x["student_hidden"].grad is None and x["student_weight"].grad is None
    assert float(x["teacher_hidden"].grad.abs().sum()) > 0


@pytest.mark.parametrize("kind", ["forward_kl", "skew_forward_kl"])
def test_chunked_form_equals_dense_form(kind):
    x, labels, mask = inputs(2)
    params = list(x.values())
    t, s = logits(x)
    common = dict(mask=mask, labels=labels, kind=kind, vocab_size=16)
    pairs = [
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
