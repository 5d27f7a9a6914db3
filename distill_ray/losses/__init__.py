"""Distillation losses: pure functions over tensors (p the teacher, q the student).

    from distill_ray.losses import divergence
    loss = divergence(teacher_logits, student_logits, mask, kind="jsd", temperature=2.0)

`divergence` (dense logits), `sparse_divergence` (a teacher's top-k log-probabilities plus a tail
bucket), `chunked_divergence` (from hidden states and output layers, a chunk of tokens at a time)
and the OKD pair `okd_student_loss` / `okd_module_loss`; README "Distillation losses" has the table.
"""

from distill_ray.losses.chunked import chunked_divergence
from distill_ray.losses.divergences import DIVERGENCES, check_same_tokenizer, divergence
from distill_ray.losses.okd import okd_module_loss, okd_student_loss
from distill_ray.losses.sparse import sparse_divergence

__all__ = ["DIVERGENCES", "check_same_tokenizer", "chunked_divergence", "divergence", "okd_module_loss",
           "okd_student_loss", "sparse_divergence"]
