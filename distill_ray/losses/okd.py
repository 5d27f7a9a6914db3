"""OKD's online-module loss (Rao et al., arXiv 2409.12512), in our configurable formulation.

The teacher is frozen except for a small online module (a LoRA adapter, see
`models/online.py`) trained together with the student on dataset responses:

    student loss  D(p_T.detach(), q_S) + ce_weight * CE(y, q_S)     (kd's loss: `divergence`)
    module loss   CE(y, p_T) + module_weight * D'(q_S.detach(), p_T)  (here)

D and D' are any of `DIVERGENCES`; in D' the detached student plays the target (first,
"teacher") role, so the module moves the teacher toward what the student can represent while
CE keeps it on the data. The module loss only ever reaches the teacher's parameters: the
student's logits are detached here, not left to the caller.

It comes in a dense form (logits) and a chunked form (last hidden states + output layers,
never holding [B, T, V] logits; see `chunked.py`). labels are aligned with the logits/hidden
states (labels[:, t] is the token predicted at t), IGNORE_INDEX marking no target; CE averages
over mask & (labels != IGNORE_INDEX).
"""

from __future__ import annotations

import torch

from distill_ray.losses.chunked import chunked_divergence
from distill_ray.losses.divergences import DivergenceSpec, as_spec, divergence, masked_cross_entropy


def okd_module_loss(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    spec: DivergenceSpec | None = None,
    *,
    module_weight: float = 1.0,
    **settings,
) -> torch.Tensor:
    """CE(labels, p_T) + module_weight * D'(q_S.detach(), p_T): a scalar; gradients reach the teacher only.

    teacher_logits (teacher with its online module): [B, T, V_t]; student_logits: [B, T, V_s];
    labels, mask: [B, T]. spec (or its fields as keywords) is D' (default: forward KL; OKD's
    config default is reverse_kl), `module_weight` its weight (design.md's beta).
    """
    spec = as_spec(spec, settings)
    d = divergence(student_logits.detach(), teacher_logits, mask, spec)
    return masked_cross_entropy(teacher_logits, labels, mask, spec.vocab_size) + module_weight * d


def okd_module_loss_chunked(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    spec: DivergenceSpec | None = None,
    *,
    module_weight: float = 1.0,
    chunk_size: int = 256,
    **settings,
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
        as_spec(spec, settings),
        chunk_size=chunk_size,
        labels=labels,
        ce_weight=1.0,
        divergence_weight=module_weight,
    )
