"""The SWITCH rule (Koo et al., arXiv 2410.19503): who writes response token t.

At response position t (0-based) the teacher distribution p_t and the student distribution
q_t are compared by the symmetric Jensen-Shannon divergence d_t (natural log, so
0 <= d_t <= ln 2). The teacher writes token t when d_t > tau_t = tau0 * exp(-decay * t);
otherwise the student does. The paper's best decay is 0.1.
"""

from __future__ import annotations

import math

import torch

from distill_ray.losses.divergences import DivergenceSpec, per_token_divergence_from_logprobs

LN2 = math.log(2.0)
SYMMETRIC_JSD = DivergenceSpec(kind="jsd", beta=0.5)


def jsd_from_logprobs(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """Symmetric JSD(p, q) in nats over the last dimension.

    teacher_logp, student_logp: [..., V] log-probabilities (each row sums to 1 in prob space).
    Returns [...], in the dtype of the inputs promoted to at least float32.

    The same JSD the losses train with (beta = 0.5). It is exactly 0 for equal distributions:
    tau_t decays toward 0 on long responses, and rounding noise of a difference of logs
    (~1e-8 in float32) would otherwise hand every late token of identical models to the teacher.
    """
    dtype = torch.promote_types(teacher_logp.dtype, torch.float32)
    d = per_token_divergence_from_logprobs(teacher_logp.to(dtype), student_logp.to(dtype), SYMMETRIC_JSD)
    return d.clamp(min=0.0, max=LN2)


def switch_threshold(position: torch.Tensor | int, tau0: float, decay: float) -> torch.Tensor:
    """tau_t = tau0 * exp(-decay * t) for response position t (0-based)."""
    t = torch.as_tensor(position, dtype=torch.float64)
    return tau0 * torch.exp(-decay * t)


def teacher_writes(
    teacher_logp: torch.Tensor,
    student_logp: torch.Tensor,
    position: torch.Tensor | int,
    tau0: float,
    decay: float,
) -> torch.Tensor:
    """Bool [...]: True where the teacher writes the token (d_t > tau_t).

    teacher_logp, student_logp: [..., V]; position: an int or a tensor broadcastable to [...].
    """
    d = jsd_from_logprobs(teacher_logp, student_logp).double()
    return d > switch_threshold(position, tau0, decay).to(d.device)


def teacher_fraction(writer_mask: torch.Tensor, response_mask: torch.Tensor) -> dict:
    """Fraction of response tokens the teacher wrote, overall and by response position.

    writer_mask: [B, T] bool, True where the teacher wrote the token.
    response_mask: [B, T] bool/0-1, True on real response tokens (not padding).
    Returns {"overall": float, "by_position": list[float | None]} where by_position[t] is None
    when no sequence has a token at position t.
    """
    valid = response_mask.bool()
    teacher = writer_mask.bool() & valid
    total = int(valid.sum())
    overall = float(teacher.sum()) / total if total else 0.0
    per_pos_valid = valid.sum(0)
    per_pos_teacher = teacher.sum(0)
    by_position = [
        (float(per_pos_teacher[t]) / int(per_pos_valid[t])) if int(per_pos_valid[t]) else None
        for t in range(valid.shape[1])
    ]
    return {"overall": overall, "by_position": by_position}


POSITION_BUCKETS = ((0, 8), (8, 32), (32, 128), (128, None))  # response positions [start, end)


def _bucket_name(start: int, end: int | None) -> str:
    return f"{start}-{end - 1}" if end is not None else f"{start}+"


def teacher_fraction_by_bucket(writer_mask: torch.Tensor, response_mask: torch.Tensor) -> dict[str, float]:
    """Metrics of one SWITCH batch by response position: `switch/teacher_fraction/<bucket>` (the
    teacher's share of the bucket's tokens) and `switch/tokens/<bucket>` (how many there were, to
    weight an average over steps), for the buckets of POSITION_BUCKETS that hold a token."""
    valid = response_mask.bool()
    teacher = writer_mask.bool() & valid
    out: dict[str, float] = {}
    for start, end in POSITION_BUCKETS:
        tokens = int(valid[:, start:end].sum())
        if tokens:
            name = _bucket_name(start, end)
            out[f"switch/teacher_fraction/{name}"] = float(teacher[:, start:end].sum()) / tokens
            out[f"switch/tokens/{name}"] = float(tokens)
    return out
