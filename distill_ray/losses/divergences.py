"""Token-level divergences between a teacher distribution p and a student distribution q.

    loss = divergence(teacher_logits, student_logits, mask, kind="jsd", temperature=2.0)
    spec = DivergenceSpec(kind="jsd", temperature=2.0)            # the same settings, checked once
    loss = divergence(teacher_logits, student_logits, mask, spec)

p is always the teacher and q the student. Every divergence is summed over the vocabulary
(the last dimension) and then averaged over the response tokens picked by a mask:

    forward_kl        KL(p || q)
    reverse_kl        KL(q || p)
    jsd               beta * KL(p || m) + (1 - beta) * KL(q || m),  m = beta * p + (1 - beta) * q
                      (GKD's generalized JSD; beta = 0 is forward KL and beta = 1 reverse KL, as in TRL)
    skew_forward_kl   KL(p || alpha * p + (1 - alpha) * q)           (DistiLLM)
    skew_reverse_kl   KL(q || alpha * q + (1 - alpha) * p)           (DistiLLM)
    tv                0.5 * sum |p - q|

The math lives once, in `per_token_divergence_from_logprobs`, which works on log-probabilities
over any last dimension: the full vocabulary here, the teacher's top-k buckets plus one tail
bucket in `sparse.py`, one chunk of tokens at a time in `chunked.py`. Log-probabilities may be
-inf (an empty bucket, a masked vocabulary entry): a bucket with zero probability contributes
exactly 0, and no nan reaches the values or the gradients.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distill_ray.errors import DistillError

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tv")
IGNORE_INDEX = -100  # label value that marks a position without a target (as in torch's cross_entropy)


@dataclass(frozen=True)
class DivergenceSpec:
    """Which divergence, and its settings: one object every loss function takes, checked when built.

    kind: one of DIVERGENCES; temperature divides both sides' logits; beta: jsd's mixing weight;
    alpha: the skew KLs' mixing weight; vocab_size: the shared tokenizer's size, to which both
    sides are cut when their output layers have different numbers of rows (None: they must agree).
    """

    kind: str = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5
    alpha: float = 0.1
    vocab_size: int | None = None

    def __post_init__(self):
        if self.kind not in DIVERGENCES:
            raise DistillError(f"divergence: unknown kind {self.kind!r}; choose one of {DIVERGENCES}")
        if not self.temperature > 0:
            raise DistillError(f"divergence: temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.beta <= 1.0:
            raise DistillError(f"divergence: jsd beta must be in [0, 1], got {self.beta}")
        if not 0.0 <= self.alpha <= 1.0:
            raise DistillError(f"divergence: skew alpha must be in [0, 1], got {self.alpha}")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise DistillError(f"divergence: vocab_size must be >= 1, got {self.vocab_size}")


def as_spec(spec: DivergenceSpec | None, settings: dict) -> DivergenceSpec:
    """`spec` (default: forward KL) with the keyword settings a caller gave instead of, or on top of, it."""
    if not settings and spec is not None:  # the loss path's own calls: nothing to check or build
        return spec
    unknown = set(settings) - {f.name for f in dataclasses.fields(DivergenceSpec)}
    if unknown:
        raise TypeError(f"divergence settings: unknown {sorted(unknown)}")
    spec = spec or DivergenceSpec()
    return dataclasses.replace(spec, **settings) if settings else spec


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) = sum_v a_v (log a_v - log b_v); [..., V] -> [...].

    The difference is zeroed *before* the product wherever a_v == 0: multiplying afterwards
    would give 0 * inf = nan in the forward pass (log b_v = -inf too) or in the backward pass.
    """
    a = log_a.exp()
    return (a * torch.where(a > 0, log_a - log_b, 0.0)).sum(-1)


def _kl_to_mixture(log_a: torch.Tensor, log_b: torch.Tensor, w: float) -> torch.Tensor:
    """KL(a || w * a + (1 - w) * b); [..., V] -> [...].

    Written through d = log b - log a, since log(mix / a) = log(w + (1 - w) * e^d)
    = max(d, 0) + log1p(c * expm1(-|d|)) with c = w for d > 0 and 1 - w otherwise. This never
    overflows, keeps full precision when a and b are close (late in training, where the
    divergence is tiny and a difference of logs would cancel), and is exactly 0 when a == b.
    """
    if w == 1.0:
        return torch.zeros_like(log_a[..., 0])
    if w == 0.0:
        return _kl(log_a, log_b)
    d = log_b - log_a
    # both buckets empty (-inf - -inf): a == 0 drops the term below; a finite d keeps the
    # unused branch free of nan, which would otherwise leak into the gradient
    d = torch.where(torch.isnan(d), 0.0, d)
    c = torch.full_like(d, 1.0 - w).masked_fill(d > 0, w)  # in d's dtype (a where of two floats is float32)
    log_ratio = d.clamp(min=0.0) + torch.log1p(c * torch.expm1(-d.abs()))  # log(mix / a)
    a = log_a.exp()
    return -(a * torch.where(a > 0, log_ratio, 0.0)).sum(-1)


def per_token_divergence_from_logprobs(
    teacher_logp: torch.Tensor, student_logp: torch.Tensor, spec: DivergenceSpec | None = None, **settings
) -> torch.Tensor:
    """D(p, q) summed over the last dimension (spec's kind, beta, alpha; not its temperature).

    teacher_logp, student_logp: [..., V] normalised log-probabilities (log p, log q), any float
    dtype; the last dimension may be a vocabulary or a set of buckets that partition it.
    Returns [...] in the inputs' dtype.
    """
    spec = as_spec(spec, settings)
    kind, beta, alpha = spec.kind, spec.beta, spec.alpha
    lp, lq = teacher_logp, student_logp
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        return _kl(lp, lq)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        return _kl(lq, lp)
    if kind == "jsd":  # m = beta * p + (1 - beta) * q, seen from p and from q
        return beta * _kl_to_mixture(lp, lq, beta) + (1.0 - beta) * _kl_to_mixture(lq, lp, 1.0 - beta)
    if kind == "skew_forward_kl":
        return _kl_to_mixture(lp, lq, alpha)
    if kind == "skew_reverse_kl":
        return _kl_to_mixture(lq, lp, alpha)
    # tv: abs has gradient 0 at p == q, which is the right subgradient at the minimum
    return 0.5 * (lp.exp() - lq.exp()).abs().sum(-1)


def log_softmax_float(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log_softmax(logits / temperature) over the last dimension, in at least float32.

    bf16/fp16 logits lose too much in the normalisation, so they are upcast first.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature != 1.0:
        logits = logits / temperature
    return F.log_softmax(logits, dim=-1)


def per_token_divergence(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, spec: DivergenceSpec | None = None, **settings
) -> torch.Tensor:
    """D(p, q) per token from logits; both logits are divided by spec.temperature.

    teacher_logits, student_logits: [..., V] (same V; see `shared_vocab`).
    Returns [...] in float32 (float64 for float64 inputs).
    """
    spec = as_spec(spec, settings)
    if teacher_logits.shape != student_logits.shape:
        raise DistillError(
            f"divergence: teacher logits {tuple(teacher_logits.shape)} and student logits "
            f"{tuple(student_logits.shape)} differ in shape"
        )
    lp = log_softmax_float(teacher_logits, spec.temperature)
    lq = log_softmax_float(student_logits, spec.temperature)
    return per_token_divergence_from_logprobs(lp, lq, spec)


def per_token_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """-log q(label) per token, in at least float32; 0 where label == ignore_index.

    logits: [..., V]; labels: [...] aligned with logits (labels[t] is what logits[t] predicts).
    Returns [...].
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    flat = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=ignore_index, reduction="none"
    )
    return flat.view(labels.shape)


def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None, vocab_size: int | None = None
) -> torch.Tensor:
    """Mean -log q(label) over the positions with a target (label != IGNORE_INDEX) and in `mask`:
    a scalar, 0 when there is none. logits: [B, T, V] (cut to `vocab_size` entries when given);
    labels, mask: [B, T], labels[t] being what logits[t] predicts."""
    if vocab_size is not None:
        logits = logits[..., :vocab_size]
    has_target = labels != IGNORE_INDEX
    if mask is not None:
        has_target = has_target & mask.bool()
    return masked_mean(per_token_cross_entropy(logits, labels), has_target)


def token_weights(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-token weights w [B, T] such that the token mean is sum(w * values): mask / (tokens in
    the mask). An all-masked batch gets all-zero weights, so its loss is 0, not nan."""
    m = mask.to(dtype)
    return m / m.sum().clamp(min=1.0)


def weighted_sum(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(weights * values), with masked-out positions (weight 0) dropped before the product,
    so an inf there (garbage logits on padding) cannot turn the loss into inf or nan.
    """
    return (torch.where(weights > 0, values, 0.0) * weights).sum()


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of per-token values [B, T] over the tokens where mask [B, T] is set; a scalar."""
    if mask is None:
        mask = torch.ones(values.shape, dtype=torch.bool, device=values.device)
    return weighted_sum(values, token_weights(mask, values.dtype))


def shared_vocab(teacher_size: int, student_size: int, vocab_size: int | None) -> int:
    """How many leading vocabulary entries teacher and student share.

    Models pad their output layer to different multiples (Qwen2: 151936 or 152064 rows for one
    151665-token tokenizer); the rows past the tokenizer are never real tokens, so both sides
    are cut to the tokenizer's size. Without `vocab_size`, the sizes must agree.
    """
    if vocab_size is None:
        if teacher_size != student_size:
            raise DistillError(
                f"divergence: teacher vocabulary {teacher_size} != student vocabulary {student_size}; "
                "pass vocab_size=<shared tokenizer size> (see check_same_tokenizer)"
            )
        return teacher_size
    if not 0 < vocab_size <= min(teacher_size, student_size):
        raise DistillError(
            f"divergence: vocab_size {vocab_size} must be in 1..{min(teacher_size, student_size)} "
            f"(teacher {teacher_size}, student {student_size} output rows)"
        )
    return vocab_size


def check_same_tokenizer(teacher_tokenizer, student_tokenizer) -> int:
    """The shared vocabulary size (pass it as `vocab_size`); DistillError when they differ.

    Logit-level distillation compares distributions entry by entry, so token i must be the
    same string for both models.
    """
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher_vocab != student_vocab:
        differing = sorted(set(teacher_vocab.items()) ^ set(student_vocab.items()), key=lambda kv: kv[1])
        token, index = differing[0]
        raise DistillError(
            f"teacher and student tokenizers differ: {len(teacher_vocab)} vs {len(student_vocab)} tokens, "
            f"{len(differing)} (token, id) entries not shared, e.g. {token!r} -> {index}; "
            "logit distillation needs one shared tokenizer"
        )
    return len(teacher_vocab)


def divergence(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    spec: DivergenceSpec | None = None,
    **settings,
) -> torch.Tensor:
    """D(teacher, student) per token, averaged over the response tokens: a scalar.

    teacher_logits: [B, T, V_t]; student_logits: [B, T, V_s]; mask: [B, T] (None: all tokens).
    spec (or its fields as keywords: kind, temperature, beta, alpha, vocab_size): the divergence.
    Both sides are cut to spec.vocab_size entries (needed when V_t != V_s). Gradients flow to
    whichever logits require them; detach the teacher's for plain distillation.
    """
    spec = as_spec(spec, settings)
    vocab = shared_vocab(teacher_logits.shape[-1], student_logits.shape[-1], spec.vocab_size)
    per_token = per_token_divergence(teacher_logits[..., :vocab], student_logits[..., :vocab], spec)  # [B, T]
    return masked_mean(per_token, mask)
