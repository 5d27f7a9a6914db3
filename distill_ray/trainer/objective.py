"""What each method minimises on one batch, given the models' logits.

Methods differ in where their sequences come from (dataset, teacher, student, SWITCH) and
in which loss applies; this module holds the loss part, shared by every trainer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill_ray.config import LossConfig


def masked_cross_entropy(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over masked positions.

    logits: [B, L, V]; input_ids: [B, L]; loss_mask: [B, L] (1 where logits[:, t] predict a
    response token input_ids[:, t+1]). Returns a scalar; 0 when nothing is masked in.
    """
    logits = logits[:, :-1].float()  # (B, L-1, V)
    targets = input_ids[:, 1:]  # (B, L-1)
    mask = loss_mask[:, :-1]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return (ce.view_as(mask) * mask).sum() / mask.sum().clamp(min=1.0)


def distillation_loss(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    cfg: LossConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """D(teacher, student) on response positions (+ ce_weight * CE). Logits: [B, L, V]."""
    from distill_ray.losses.divergences import divergence

    vocab = min(teacher_logits.shape[-1], student_logits.shape[-1])  # padded vocabularies differ
    div = divergence(
        teacher_logits[:, :-1, :vocab],
        student_logits[:, :-1, :vocab],
        mask=loss_mask[:, :-1],
        kind=cfg.divergence,
        temperature=cfg.temperature,
        beta=cfg.beta,
        alpha=cfg.alpha,
    )
    metrics = {"loss/divergence": float(div.detach())}
    loss = div
    if cfg.ce_weight > 0:
        ce = masked_cross_entropy(student_logits, input_ids, loss_mask)
        metrics["loss/ce"] = float(ce.detach())
        loss = loss + cfg.ce_weight * ce
    return loss, metrics
