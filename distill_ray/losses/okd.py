"""OKD's two losses (Rao et al., arXiv 2409.12512), in our configurable formulation.

The teacher is frozen except for a small online module (a LoRA adapter, see
`models/online.py`) trained together with the student on dataset responses:

    student loss  D(p_T.detach(), q_S) + ce_weight * CE(y, q_S)
    module loss   CE(y, p_T) + module_weight * D'(q_S.detach(), p_T)

D and D' are any of `DIVERGENCES`; in D' the detached student plays the target (first,
"teacher") role, so the module moves the teacher toward what the student can represent while
CE keeps it on the data. Each loss only ever reaches its own side's parameters: the other
side's logits are detached here, not left to the caller.

Both come in a dense form (logits) and a chunked form (last hidden states + output layers,
never holding [B, T, V] logits; see `chunked.py`). labels are aligned with the logits/hidden
states (labels[:, t] is the token predicted at t), IGNORE_INDEX marking no target; the CE terms
reduce over mask & (labels != IGNORE_INDEX) with the same reduction as D.
"""

from __future__ import annotations

import torch

from distill_ray.losses.chunked import chunked_divergence
from distill_ray.losses.divergences import IGNORE_INDEX, divergence, masked_reduce, per_token_cross_entropy


def _masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None, reduction: str, vocab_size: int | None
) -> torch.Tensor:
    """CE over positions with a target (and in the mask). logits: [B, T, V]; labels, mask: [B, T]."""
    if vocab_size is not None:
        logits = logits[..., :vocab_size]
    has_target = labels != IGNORE_INDEX
    if mask is not None:
        has_target = has_target & mask.bool()
    return masked_reduce(per_token_cross_entropy(logits, labels), has_target, reduction)


def okd_student_loss(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    kind: str = "forward_kl",
    ce_weight: float = 0.0,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    reduction: str = "token_mean",
    vocab_size: int | None = None,
) -> torch.Tensor:
    """D(p_T.detach(), q_S) + ce_weight * CE(labels, q_S): a scalar; gradients reach the student only.

    teacher_logits (teacher with its online module): [B, T, V_t]; student_logits: [B, T, V_s];
    mask, labels: [B, T]. beta/alpha parameterise jsd / skew divergences.
    """
    loss = divergence(
        teacher_logits.detach(), student_logits, mask, kind, temperature, beta, alpha, reduction, vocab_size
    )
    if labels is not None and ce_weight != 0.0:
        loss = loss + ce_weight * _masked_cross_entropy(student_logits, labels, mask, reduction, vocab_size)
    return loss


def okd_module_loss(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    kind: str = "reverse_kl",
    module_weight: float = 1.0,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    reduction: str = "token_mean",
    vocab_size: int | None = None,
) -> torch.Tensor:
    """CE(labels, p_T) + module_weight * D'(q_S.detach(), p_T): a scalar; gradients reach the teacher only.

    `kind` is D' and `module_weight` its weight (design.md's beta); shapes as in `okd_student_loss`.
    """
    d = divergence(
        student_logits.detach(), teacher_logits, mask, kind, temperature, beta, alpha, reduction, vocab_size
    )
    return _masked_cross_entropy(teacher_logits, labels, mask, reduction, vocab_size) + module_weight * d


def okd_student_loss_chunked(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    kind: str = "forward_kl",
    ce_weight: float = 0.0,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    reduction: str = "token_mean",
    vocab_size: int | None = None,
    chunk_size: int = 256,
) -> torch.Tensor:
    """`okd_student_loss` from hidden states [B, T, H] and output layers [V, H], chunked."""
    return chunked_divergence(
        student_hidden,
        student_weight,
        teacher_hidden.detach(),
        teacher_weight.detach(),
        mask,
        kind=kind,
        temperature=temperature,
        beta=beta,
        alpha=alpha,
        reduction=reduction,
        vocab_size=vocab_size,
        chunk_size=chunk_size,
        labels=labels,
        ce_weight=ce_weight,
    )


def okd_module_loss_chunked(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    kind: str = "reverse_kl",
    module_weight: float = 1.0,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    reduction: str = "token_mean",
    vocab_size: int | None = None,
    chunk_size: int = 256,
) -> torch.Tensor:
    """`okd_module_loss` from hidden states [B, T, H] and output layers [V, H], chunked.

    The roles swap: the teacher side is the one trained (the "student" slot of
    chunked_divergence, which also carries the CE term) and the detached student is the target.
    """
    return chunked_divergence(
        teacher_hidden,
        teacher_weight,
        student_hidden.detach(),
        student_weight.detach(),
        mask,
        kind=kind,
        temperature=temperature,
        beta=beta,
        alpha=alpha,
        reduction=reduction,
        vocab_size=vocab_size,
        chunk_size=chunk_size,
        labels=labels,
        ce_weight=1.0,
        divergence_weight=module_weight,
    )
