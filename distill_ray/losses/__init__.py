"""Distillation losses: pure functions over tensors (p the teacher, q the student).

    from distill_ray.losses import DivergenceSpec, divergence
    loss = divergence(teacher_logits, student_logits, mask, kind="jsd", temperature=2.0)
    loss = divergence(teacher_logits, student_logits, mask, DivergenceSpec(kind="jsd", temperature=2.0))

`divergence` (dense logits), `sparse_divergence` (a teacher's top-k log-probabilities plus a tail
bucket), `chunked_divergence` (from hidden states and output layers, a chunk of tokens at a time),
`masked_cross_entropy`, and OKD's online-module loss `okd_module_loss` (its student loss is
kd's: `divergence` against the teacher with its module, detached). Every divergence takes one
`DivergenceSpec` (or its fields as keywords); README "Distillation losses" has the table.
"""

from distill_ray.losses.chunked import chunked_divergence
from distill_ray.losses.divergences import (
    DIVERGENCES,
    DivergenceSpec,
    check_same_tokenizer,
    divergence,
    masked_cross_entropy,
)
from distill_ray.losses.okd import okd_module_loss, okd_module_loss_chunked
from distill_ray.losses.sparse import sparse_divergence

__all__ = ["DIVERGENCES", "DivergenceSpec", "check_same_tokenizer", "chunked_divergence", "divergence",
           "masked_cross_entropy", "okd_module_loss", "okd_module_loss_chunked", "sparse_divergence"]
