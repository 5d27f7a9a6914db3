"""Sampling settings and position-keyed randomness.

Every random draw of the torch backend is a fixed function of (seed, sequence, position,
stream): a counter-based hash (splitmix64's finaliser, chained) turns the four integers into
one uniform number in [0, 1), and the token is the inverse CDF of the sampling distribution at
that number. Nothing depends on call order, batch composition or how many forward passes
produced the distribution, so two generators that compute the same distributions (drafted and
sequential SWITCH, a batch of 64 and 64 batches of one) pick the same tokens.

Streams keep the models' draws independent: the student samples with `STUDENT_STREAM`, the
teacher with `TEACHER_STREAM`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distill_ray.errors import DistillError

STUDENT_STREAM = 0
TEACHER_STREAM = 1


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0  # softmax temperature; 0 means greedy (argmax)
    top_p: float = 1.0  # nucleus sampling: keep the smallest set of tokens with this much mass
    max_new_tokens: int = 64  # longest response, EOS included
    samples_per_prompt: int = 1  # responses sampled per prompt (rows are prompt-major)
    seed: int = 0  # seed of the position-keyed draws (vary it per step to get fresh samples)

    def __post_init__(self):
        if self.temperature < 0:
            raise DistillError(f"sampling.temperature: must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise DistillError(f"sampling.top_p: must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens <= 0:
            raise DistillError(f"sampling.max_new_tokens: must be positive, got {self.max_new_tokens}")
        if self.samples_per_prompt <= 0:
            raise DistillError(f"sampling.samples_per_prompt: must be positive, got {self.samples_per_prompt}")


# ------------------------------------------------------------------ counter-based hash

_MASK64 = (1 << 64) - 1


def _signed(c: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)
_GOLDEN = _signed(0x9E3779B97F4A7C15)


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser; int64 multiplication wraps modulo 2**64 like uint64 would."""
    x = x ^ _shr(x, 30)
    x = x * _M1
    x = x ^ _shr(x, 27)
    x = x * _M2
    return x ^ _shr(x, 31)


def _mix_int(x: int) -> int:
    """`_mix` on a Python int (unsigned 64-bit arithmetic): the same bits, without tensor overhead."""
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


_SMALL = 16  # below this many draws, plain Python ints beat a chain of tiny tensor ops


def keyed_uniform(
    seed: int, sequence: torch.Tensor, position: torch.Tensor, stream: int | torch.Tensor
) -> torch.Tensor:
    """Uniform draws in [0, 1), one per element, a fixed function of (seed, sequence, position, stream).

    sequence, position (and stream, if a tensor): int64 tensors of one shape. Returns float64 of
    that shape. h = mix(mix(seed + G) ^ sequence * G); h = mix(h ^ (position * M1 + stream * M2));
    u = (h >> 11) / 2**53, in uint64 arithmetic.
    """
    sequence = torch.as_tensor(sequence, dtype=torch.int64)
    position = torch.as_tensor(position, dtype=torch.int64).to(sequence.device)
    stream = torch.as_tensor(stream, dtype=torch.int64).to(sequence.device).expand_as(sequence)
    h0 = _mix_int((seed + 0x9E3779B97F4A7C15) & _MASK64)
    if sequence.numel() <= _SMALL:
        out = []
        for i, t, m in zip(sequence.reshape(-1).tolist(), position.reshape(-1).tolist(), stream.reshape(-1).tolist()):
            h = _mix_int(h0 ^ ((i * 0x9E3779B97F4A7C15) & _MASK64))
            h = _mix_int(h ^ ((t * 0xBF58476D1CE4E5B9 + m * 0x94D049BB133111EB) & _MASK64))
            out.append((h >> 11) * (1.0 / (1 << 53)))
        return torch.tensor(out, dtype=torch.float64).reshape(sequence.shape)
    h = _mix(torch.full_like(sequence, _signed(h0)) ^ (sequence * _GOLDEN))
    h = _mix(h ^ (position * _M1 + stream * _M2))
    return _shr(h, 11).to(torch.float64) * (1.0 / (1 << 53))


# ------------------------------------------------------------------ sampling from logits


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The distribution a sampler draws from: softmax(logits / T), restricted to the top-p nucleus.

    logits: [N, V]. Returns float64 [N, V] (unnormalised after the nucleus cut; rows sum to <= 1).
    The nucleus is applied as a mask in vocabulary order, not by re-ordering the vocabulary, so a
    tiny change in the logits moves the inverse-CDF boundaries only a tiny bit.
    """
    probs = torch.softmax(logits.to(torch.float64) / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
        # keep a token while the mass strictly before it is below top_p (the top token always stays)
        keep_sorted = (sorted_p.cumsum(-1) - sorted_p) < top_p
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        probs = probs * keep
    return probs


def sample_tokens(logits: torch.Tensor, uniform: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Inverse-CDF sampling: token = first id whose cumulative probability exceeds u * total mass.

    logits: [N, V]; uniform: [N] float64 in [0, 1). Returns int64 [N] on the logits' device.
    temperature 0 is greedy.
    """
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = sampling_probs(logits, temperature, top_p)
    cdf = probs.cumsum(dim=-1)  # [N, V]
    total = cdf[:, -1:]
    u = uniform.to(cdf.device).unsqueeze(-1)
    token = torch.searchsorted(cdf, u * total, right=True).squeeze(-1)
    # u * total can round up to total: fall back to the last token with mass
    last_with_mass = (cdf < total).sum(-1)
    return torch.minimum(token, last_with_mass)
