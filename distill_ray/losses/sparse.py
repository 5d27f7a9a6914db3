"""Divergences from the teacher's top-k log-probabilities plus one tail bucket.

A remote teacher (vLLM prompt_logprobs, a scoring service) sends, per token, the ids and
log-probabilities of its k most likely tokens instead of a [V] distribution. Both
distributions are then coarsened to the same k + 1 buckets: the k teacher tokens, and one
tail bucket holding all the remaining mass,

    teacher tail = 1 - sum_i exp(topk_logprob_i)        (log1p, clamped)
    student tail = sum of q over the tokens not in the top-k (a logsumexp, exact),

and the divergence of `divergences.py` is taken over those buckets. Merging tokens can only
lower a divergence, so this is a lower bound of the dense value that tightens as k grows and
equals it when k is the vocabulary size (then the tail is empty and contributes exactly 0).
"""

from __future__ import annotations

import math

import torch

from distill_ray.errors import DistillError
from distill_ray.losses.divergences import (
    DivergenceSpec,
    as_spec,
    log_softmax_float,
    masked_mean,
    per_token_divergence_from_logprobs,
    shared_vocab,
)


def teacher_tail_logprob(topk_logprobs: torch.Tensor) -> torch.Tensor:
    """log(1 - sum exp(topk)) per token; [..., k] -> [..., 1].

    log1p keeps a small tail accurate. When rounding makes the top-k sum reach 1 (k < V and a
    confident teacher), the tail is floored at the dtype's resolution eps instead of 0: the
    true tail is below what the sum can resolve, and a zero tail would make reverse-type
    divergences infinite wherever the student puts any mass there.
    """
    mass = topk_logprobs.exp().sum(-1, keepdim=True)
    eps = torch.finfo(mass.dtype).eps
    return torch.log1p(-mass.clamp(max=1.0 - eps))


def sparse_logprobs(
    teacher_topk_ids: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    student_logits: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student log-probabilities over the k + 1 buckets.

    teacher_topk_ids: [B, T, k] int (distinct per token, < V); teacher_topk_logprobs: [B, T, k];
    student_logits: [B, T, V]. Returns (teacher [B, T, k+1], student [B, T, k+1]), the tail last.
    """
    vocab, k = student_logits.shape[-1], teacher_topk_ids.shape[-1]
    ids_shape = teacher_topk_ids.shape
    if ids_shape != teacher_topk_logprobs.shape or ids_shape[:-1] != student_logits.shape[:-1]:
        raise DistillError(
            f"sparse divergence: top-k ids {tuple(teacher_topk_ids.shape)}, top-k logprobs "
            f"{tuple(teacher_topk_logprobs.shape)} and student logits {tuple(student_logits.shape)} do not line up"
        )
    if k > vocab or (teacher_topk_ids.numel() and int(teacher_topk_ids.max()) >= vocab):
        raise DistillError(f"sparse divergence: top-k ids must be distinct and < the vocabulary size {vocab}")
    student_logp = log_softmax_float(student_logits, temperature)  # [B, T, V]
    teacher_logp = teacher_topk_logprobs.to(student_logp.dtype)
    student_topk = student_logp.gather(-1, teacher_topk_ids)  # [B, T, k]
    if k == vocab:
        # every token is in the top-k: the tail bucket is empty for both, by construction
        # (computing it would give rounding noise, not 0)
        empty = torch.full_like(student_topk[..., :1], -math.inf)
        return torch.cat([teacher_logp, empty], -1), torch.cat([student_topk, empty], -1)
    outside_topk = student_logp.scatter(-1, teacher_topk_ids, -math.inf)
    student_tail = torch.logsumexp(outside_topk, -1, keepdim=True)  # [B, T, 1]
    teacher_tail = teacher_tail_logprob(teacher_logp)
    return torch.cat([teacher_logp, teacher_tail], -1), torch.cat([student_topk, student_tail], -1)


def sparse_divergence(
    teacher_topk_ids: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    student_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    spec: DivergenceSpec | None = None,
    **settings,
) -> torch.Tensor:
    """D(teacher, student) over the teacher's top-k tokens plus a tail bucket, averaged over the
    response tokens: a scalar.

    teacher_topk_ids, teacher_topk_logprobs: [B, T, k], the log-probabilities normalised over
    the full vocabulary and already at spec.temperature (the scorer computes
    log_softmax(logits / temperature) before taking the top k; a tail's tempered mass cannot be
    recovered afterwards). student_logits: [B, T, V_s], divided by the temperature here and cut
    to spec.vocab_size entries when given. mask: [B, T] (None: all tokens). spec, or its fields
    as keywords, as in `divergence`.
    """
    spec = as_spec(spec, settings)
    if spec.vocab_size is not None:  # a padded student output layer: keep the tokenizer's rows
        vocab = student_logits.shape[-1]
        student_logits = student_logits[..., : shared_vocab(vocab, vocab, spec.vocab_size)]
    teacher_logp, student_logp = sparse_logprobs(teacher_topk_ids, teacher_topk_logprobs, student_logits, spec.temperature)
    per_token = per_token_divergence_from_logprobs(teacher_logp, student_logp, spec)  # [B, T]
    return masked_mean(per_token, mask)
