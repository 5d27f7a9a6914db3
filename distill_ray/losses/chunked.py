"""Distillation loss from last hidden states and output layers, a chunk of tokens at a time.

    loss = chunked_divergence(student_hidden, student.lm_head.weight,
                              teacher_hidden, teacher.lm_head.weight, mask, kind="forward_kl")

With a 152k vocabulary, the logits of 4096 tokens are 2.5 GB in float32, and a divergence's
autograd graph keeps several tensors of that size. Here logits exist only for `chunk_size`
tokens at a time: each chunk computes its logits, its share of the loss and the gradient of
that share with respect to its logits, folds that gradient straight into grad_hidden (rows of
the chunk) and grad_weight (a [V, H] sum over chunks), and frees everything of size V. The
backward pass then only scales the stored gradients by the incoming gradient. The work is the
same as the naive path's (two matmuls forward, two backward per model needing gradients);
only the order differs, so there is no recomputation.

Gradients are exact and go to every input that requires them: the student's hidden states
and output layer, and the teacher's too (OKD's online-module loss trains the teacher side;
see `okd.py`). Tokens whose weight is 0 (prompt, padding) are skipped entirely.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from distill_ray.errors import DistillError
from distill_ray.losses.divergences import (
    IGNORE_INDEX,
    DivergenceSpec,
    as_spec,
    per_token_cross_entropy,
    per_token_divergence,
    shared_vocab,
    token_weights,
    weighted_sum,
)


@dataclass(frozen=True)
class _ChunkSpec:
    """What one chunk computes; everything that is not a tensor."""

    divergence: DivergenceSpec  # its vocab_size is the shared one, resolved
    chunk_size: int
    divergence_weight: float
    ce_weight: float

    @property
    def vocab_size(self) -> int:
        return self.divergence.vocab_size


def _chunk_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    div_weights: torch.Tensor,
    ce_weights: torch.Tensor | None,
    labels: torch.Tensor | None,
    spec: _ChunkSpec,
) -> torch.Tensor:
    """This chunk's share of the reduced loss. Logits: [c, V]; weights, labels: [c]."""
    per_token = per_token_divergence(teacher_logits, student_logits, spec.divergence)  # [c]
    loss = spec.divergence_weight * weighted_sum(per_token, div_weights)
    if ce_weights is not None:
        loss = loss + spec.ce_weight * weighted_sum(per_token_cross_entropy(student_logits, labels), ce_weights)
    return loss


def _at_least_float32(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _accumulate_chunk(idx, hidden, heads, grads, div_weights, ce_weights, labels, spec) -> torch.Tensor:
    """Loss of the tokens `idx` [c]; adds their gradients into `grads`. Returns the loss, detached.

    hidden: (student [N, Hs], teacher [N, Ht]); heads: (student [V, Hs], teacher [V, Ht]);
    grads: float32+ accumulators for (s_hidden, s_weight, t_hidden, t_weight), None where not needed.
    Everything of size [c, V] is local, so it is freed on return, before the next chunk starts.
    """
    logits = []
    for side, (h, head) in enumerate(zip(hidden, heads)):
        needs_grad = grads[2 * side] is not None or grads[2 * side + 1] is not None
        # leaf logits: autograd sees only the divergence, never the [V, H] matmuls
        chunk_logits = (h.index_select(0, idx) @ head.T).to(_at_least_float32(head))  # [c, V]
        logits.append(chunk_logits.requires_grad_(needs_grad))
    with torch.enable_grad():
        loss = _chunk_loss(
            logits[0],
            logits[1],
            div_weights.index_select(0, idx),
            None if ce_weights is None else ce_weights.index_select(0, idx),
            None if labels is None else labels.index_select(0, idx),
            spec,
        )
    sides = [side for side in (0, 1) if logits[side].requires_grad]
    if not sides:
        return loss.detach()
    logit_grads = torch.autograd.grad(loss, [logits[side] for side in sides])
    del logits  # the backward is done: free the chunk's logits before the [V, H] products
    for side, g in zip(sides, logit_grads):  # g: [c, V]
        h, head = hidden[side].index_select(0, idx), heads[side]
        g_hidden, g_weight = grads[2 * side], grads[2 * side + 1]
        if g_hidden is not None:
            g_hidden.index_copy_(0, idx, (g.to(head.dtype) @ head).to(g_hidden.dtype))  # [c, H]
        if g_weight is not None:
            # [V, H] += [V, c] @ [c, H]
            g_weight[: spec.vocab_size].addmm_(g.T.to(g_weight.dtype), h.to(g_weight.dtype))
    return loss.detach()


class _ChunkedHeadLoss(torch.autograd.Function):
    """Loss and input gradients computed together in forward, chunk by chunk; see the module doc."""

    @staticmethod
    def forward(ctx, s_hidden, s_weight, t_hidden, t_weight, div_weights, ce_weights, labels, spec):
        # s_hidden [N, Hs], s_weight [Vs, Hs], t_hidden [N, Ht], t_weight [Vt, Ht], weights/labels [N]
        inputs = (s_hidden, s_weight, t_hidden, t_weight)
        # float32 at least: bf16 accumulators lose too much when many chunks' products are summed
        grads = [
            torch.zeros_like(x, dtype=_at_least_float32(x)) if need else None
            for x, need in zip(inputs, ctx.needs_input_grad[:4])
        ]
        heads = (s_weight[: spec.vocab_size], t_weight[: spec.vocab_size])  # [V, Hs], [V, Ht]
        active = div_weights > 0
        if ce_weights is not None:
            active = active | (ce_weights > 0)
        total = torch.zeros((), dtype=_at_least_float32(s_weight), device=s_hidden.device)
        for idx in active.nonzero().squeeze(1).split(spec.chunk_size):
            total += _accumulate_chunk(idx, (s_hidden, t_hidden), heads, grads, div_weights, ce_weights, labels, spec)
        ctx.save_for_backward(*grads)
        ctx.input_dtypes = [x.dtype for x in inputs]
        return total

    @staticmethod
    def backward(ctx, grad_output):
        scaled = [
            None if g is None else (g * grad_output).to(dtype) for g, dtype in zip(ctx.saved_tensors, ctx.input_dtypes)
        ]
        return (*scaled, None, None, None, None)


def chunked_divergence(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    mask: torch.Tensor | None = None,
    spec: DivergenceSpec | None = None,
    *,
    chunk_size: int = 256,
    labels: torch.Tensor | None = None,
    ce_weight: float = 0.0,
    divergence_weight: float = 1.0,
    **settings,
) -> torch.Tensor:
    """divergence_weight * D(teacher, student) + ce_weight * CE(labels, student), each averaged
    over the response tokens: a scalar.

    Equal, in value and gradients, to `divergence(teacher_hidden @ teacher_weight.T,
    student_hidden @ student_weight.T, mask, spec)` plus the CE term, without holding logits for
    more than `chunk_size` tokens.

    student_hidden: [B, T, H_s]; student_weight: [V_s, H_s] (the output layer, no bias);
    teacher_hidden: [B, T, H_t]; teacher_weight: [V_t, H_t]; mask: [B, T] (None: all tokens).
    spec (or its fields as keywords) as in `divergence`; spec.vocab_size, the shared tokenizer's
    size, is needed when V_s != V_t (padded output layers): both are cut to it, and the cut-off
    rows get zero gradient.
    labels: [B, T] targets aligned with the hidden states (IGNORE_INDEX = no target). The CE
    term averages over mask & (labels != IGNORE_INDEX), with no temperature.
    chunk_size: tokens per chunk; one chunk holds a few [chunk_size, V] float32 tensors
    (256 tokens x 152k vocabulary: about 150 MB each).
    """
    spec = as_spec(spec, settings)
    if chunk_size < 1:
        raise DistillError(f"chunked divergence: chunk_size must be >= 1, got {chunk_size}")
    batch_shape = student_hidden.shape[:-1]
    if teacher_hidden.shape[:-1] != batch_shape or student_hidden.dim() != 3:
        raise DistillError(
            f"chunked divergence: student hidden {tuple(student_hidden.shape)} and teacher hidden "
            f"{tuple(teacher_hidden.shape)} must both be [B, T, H] with the same B, T"
        )
    if student_weight.shape[-1] != student_hidden.shape[-1] or teacher_weight.shape[-1] != teacher_hidden.shape[-1]:
        raise DistillError(
            f"chunked divergence: output layers {tuple(student_weight.shape)} / {tuple(teacher_weight.shape)} "
            f"do not match hidden sizes {student_hidden.shape[-1]} / {teacher_hidden.shape[-1]}"
        )
    vocab = shared_vocab(teacher_weight.shape[0], student_weight.shape[0], spec.vocab_size)
    if mask is None:
        mask = torch.ones(batch_shape, dtype=torch.bool, device=student_hidden.device)
    weight_dtype = _at_least_float32(student_weight)
    div_weights = token_weights(mask, weight_dtype).reshape(-1)  # [N]
    ce_weights = flat_labels = None
    if labels is not None and ce_weight != 0.0:
        has_target = mask.bool() & (labels != IGNORE_INDEX)  # [B, T]
        ce_weights = token_weights(has_target, weight_dtype).reshape(-1)  # [N]
        flat_labels = labels.reshape(-1)
    chunk_spec = _ChunkSpec(dataclasses.replace(spec, vocab_size=vocab), chunk_size, divergence_weight, ce_weight)
    return _ChunkedHeadLoss.apply(
        student_hidden.reshape(-1, student_hidden.shape[-1]),
        student_weight,
        teacher_hidden.reshape(-1, teacher_hidden.shape[-1]),
        teacher_weight,
        div_weights,
        ce_weights,
        flat_labels,
        chunk_spec,
    )
