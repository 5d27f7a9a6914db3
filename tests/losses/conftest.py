"""The float64 reference every loss test compares against, written as the plain formulas."""

from __future__ import annotations

import pytest
import torch


def reference_from_probs(p: torch.Tensor, q: torch.Tensor, kind: str, beta: float = 0.5, alpha: float = 0.1):
    """D(p, q) over the last dimension, straight from the definitions, in float64.

    p, q: [..., V] probabilities (teacher, student), strictly positive.
    """
    p, q = p.double(), q.double()

    def kl(a, b):
        return (a * (a.log() - b.log())).sum(-1)

    if kind == "forward_kl":
        return kl(p, q)
    if kind == "reverse_kl":
        return kl(q, p)
    if kind == "jsd":
        if beta == 0.0:
            return kl(p, q)
        if beta == 1.0:
            return kl(q, p)
        m = beta * p + (1 - beta) * q
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    if kind == "skew_forward_kl":
        return kl(p, alpha * p + (1 - alpha) * q)
    if kind == "skew_reverse_kl":
        return kl(q, alpha * q + (1 - alpha) * p)
    if kind == "tv":
        return 0.5 * (p - q).abs().sum(-1)
    raise ValueError(kind)


def reference_from_logits(teacher_logits, student_logits, kind, temperature=1.0, beta=0.5, alpha=0.1):
    """Per-token D from logits: [..., V] -> [...], float64."""
    p = torch.softmax(teacher_logits.double() / temperature, -1)
    q = torch.softmax(student_logits.double() / temperature, -1)
    return reference_from_probs(p, q, kind, beta, alpha)


def reference_reduce(values, mask):
    """Plain mean over the masked-in tokens (0 when there is none)."""
    mask = mask.bool()
    return values[mask].sum() / max(int(mask.sum()), 1)


@pytest.fixture
def reference():
    """The reference functions, as a namespace."""

    class Reference:
        from_probs = staticmethod(reference_from_probs)
        from_logits = staticmethod(reference_from_logits)
        reduce = staticmethod(reference_reduce)

    return Reference
