"""The SWITCH divergence from top-k log-probabilities (what a vLLM teacher sends).

vLLM returns, per position, the teacher's k most likely tokens and their log-probabilities
(`prompt_logprobs=k`), not its whole distribution. The approximation: both distributions are
coarsened to k + 1 outcomes, the teacher's top-k tokens and ONE tail bucket holding the rest
of the vocabulary,

    p = (p_1 .. p_k, 1 - sum p_i)        q = (q(id_1) .. q(id_k), 1 - sum q(id_i))

and JSD(p, q) is taken over those outcomes. JSD is an f-divergence, so merging outcomes can
only lower it: the estimate is a lower bound of the exact JSD, equal to it when the two
distributions agree in shape over the tail (in particular when k = V). The error is largest
when the models disagree on tokens outside the teacher's top-k; `tests/rollout/test_topk_jsd.py`
and `benchmarks/switch_rollout.py` measure it against the exact full-vocabulary JSD.

The student's probabilities at the teacher's ids are exact when the student's full
distribution is at hand; when only the student's own top-K is known (vLLM `logprobs=K`),
`logprobs_at` spreads the student's remaining mass evenly over the tokens outside its top-K.
"""

from __future__ import annotations

import math

import torch

LN2 = math.log(2.0)


def _tail_logprob(logp: torch.Tensor) -> torch.Tensor:
    """log(1 - sum exp(logp)) over the last dim, floored at the dtype's resolution; [..., k] -> [..., 1]."""
    mass = logp.exp().sum(-1, keepdim=True)
    eps = torch.finfo(mass.dtype).eps
    return torch.log1p(-mass.clamp(max=1.0 - eps))


def topk_jsd(teacher_topk_logp: torch.Tensor, student_logp_at_topk: torch.Tensor) -> torch.Tensor:
    """Symmetric JSD (nats) over the teacher's top-k tokens plus one tail bucket.

    teacher_topk_logp: [..., k] the teacher's top-k log-probs; student_logp_at_topk: [..., k] the
    student's log-probs of the same token ids. Returns [...] float64, in [0, ln 2].
    """
    lp = teacher_topk_logp.double()
    lq = student_logp_at_topk.double()
    lp = torch.cat([lp, _tail_logprob(lp)], -1)  # [..., k+1]
    lq = torch.cat([lq, _tail_logprob(lq)], -1)
    log_m = torch.logaddexp(lp, lq) - LN2
    kl_pm = (lp.exp() * (lp - log_m)).sum(-1)
    kl_qm = (lq.exp() * (lq - log_m)).sum(-1)
    return (0.5 * kl_pm + 0.5 * kl_qm).clamp(0.0, LN2)


def logprobs_at(
    query_ids: torch.Tensor, known_ids: torch.Tensor, known_logp: torch.Tensor, vocab_size: int
) -> torch.Tensor:
    """A model's log-probs at `query_ids` when only its top-K (`known_ids`, `known_logp`) is known.

    query_ids: [..., k]; known_ids, known_logp: [..., K]. A query id among the known ids gets its
    known value; any other gets the unknown mass spread evenly over the V - K unknown tokens
    (never more than the smallest known probability). Returns float64 [..., k].
    """
    known_logp = known_logp.double()
    match = query_ids[..., :, None] == known_ids[..., None, :]  # [..., k, K]
    found = match.any(-1)
    value = (match.double() * known_logp[..., None, :]).sum(-1)
    unknown = max(vocab_size - known_ids.shape[-1], 1)
    fill = _tail_logprob(known_logp) - math.log(unknown)  # [..., 1]
    fill = torch.minimum(fill, known_logp.min(-1, keepdim=True).values)
    return torch.where(found, value, fill.expand_as(value))
