"""Pieces shared by the torch backend's generators: rows, prefill, and the response buffer."""

from __future__ import annotations

import torch

from distill_ray.batch import RolloutBatch
from distill_ray.errors import DistillError
from distill_ray.rollout.kv import SlotCache


def expand_prompts(
    prompts: list[list[int]], prompt_index: list[int] | None, samples_per_prompt: int
) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
    """One row per (prompt, sample), prompt-major.

    Returns (row prompts, prompt_index [B], sequence keys [B]) where the key of sample j of dataset
    prompt i is i * samples_per_prompt + j: the `sequence` of the position-keyed draws, so a row's
    tokens do not depend on which batch or worker it landed in.
    """
    if not prompts:
        raise DistillError("rollout: no prompts to generate from")
    if any(len(p) == 0 for p in prompts):
        raise DistillError("rollout: empty prompt (every prompt needs at least one token, e.g. BOS)")
    if prompt_index is None:
        prompt_index = list(range(len(prompts)))
    if len(prompt_index) != len(prompts):
        raise DistillError(f"rollout: {len(prompts)} prompts but {len(prompt_index)} prompt_index entries")
    n = samples_per_prompt
    rows = [p for p in prompts for _ in range(n)]
    index = torch.as_tensor(prompt_index, dtype=torch.long).repeat_interleave(n)
    keys = index * n + torch.arange(n).repeat(len(prompts))
    return rows, index, keys


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """prompt_ids [B, P] int64 left-padded, prompt_mask [B, P] bool."""
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), P), dtype=torch.bool)
    for b, p in enumerate(prompts):
        ids[b, P - len(p) :] = torch.as_tensor(p, dtype=torch.long)
        mask[b, P - len(p) :] = True
    return ids, mask


def prefill(caches: list[SlotCache], prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
    """Feed every prompt token but the last to each cache; return the last tokens [B].

    The last prompt token stays "pending": every decoding step then starts the same way, by
    feeding the one token each row has that the caches have not seen.
    """
    if prompt_ids.shape[1] > 1:
        for cache in caches:
            cache.feed(prompt_ids[:, :-1], prompt_mask[:, :-1], last_only=True)
    return prompt_ids[:, -1].clone()


def prefill_all(caches: list[SlotCache], prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[torch.Tensor]:
    """Feed every prompt token to each cache; return each model's next-token logits [B, V].

    The first response position's distributions come with the prompt's forward pass, so a
    generator that needs both models' distributions there (SWITCH) gets them without a decode step.
    """
    return [cache.feed(prompt_ids, prompt_mask, last_only=True)[:, 0] for cache in caches]


class ResponseBuffer:
    """Response tokens, student log-probs and writers of B rows, written a block at a time."""

    def __init__(self, batch_size: int, max_new_tokens: int):
        self.tokens = torch.zeros((batch_size, max_new_tokens), dtype=torch.long)
        self.logprobs = torch.zeros((batch_size, max_new_tokens), dtype=torch.float32)
        self.writers = torch.zeros((batch_size, max_new_tokens), dtype=torch.bool)
        self.lengths = torch.zeros(batch_size, dtype=torch.long)

    def write(
        self,
        rows: torch.Tensor,
        tokens: torch.Tensor,
        logprobs: torch.Tensor,
        writers: torch.Tensor,
        counts: torch.Tensor,
    ) -> None:
        """Append the first counts[r] entries of each block row to row rows[r].

        rows: [A] int64 batch rows; tokens, logprobs, writers: [A, L]; counts: [A] in [0, L].
        """
        L = tokens.shape[1]
        take = torch.arange(L)[None, :] < counts[:, None]  # [A, L]
        r_idx = rows[:, None].expand(-1, L)[take]
        c_idx = (self.lengths[rows][:, None] + torch.arange(L)[None, :])[take]
        self.tokens[r_idx, c_idx] = tokens.cpu()[take]
        self.logprobs[r_idx, c_idx] = logprobs.cpu().float()[take]
        self.writers[r_idx, c_idx] = writers.cpu()[take]
        self.lengths[rows] += counts

    def to_batch(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        prompt_index: torch.Tensor,
        policy_version: int,
        metrics: dict[str, float],
        pad_id: int,
    ) -> RolloutBatch:
        R = int(self.lengths.max()) if len(self.lengths) else 0
        mask = torch.arange(R)[None, :] < self.lengths[:, None]
        return RolloutBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=torch.where(mask, self.tokens[:, :R], pad_id),
            response_mask=mask,
            logprobs=torch.where(mask, self.logprobs[:, :R], 0.0),
            writer_mask=self.writers[:, :R] & mask,
            prompt_index=prompt_index,
            policy_version=policy_version,
            metrics=metrics,
            pad_id=pad_id,
        )


def stop_counts(
    tokens: torch.Tensor, counts: torch.Tensor, room: torch.Tensor, eos_token_id: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each row's accepted block at its first EOS (kept) and at the room left.

    tokens: [A, L]; counts: [A] accepted tokens per row; room: [A] tokens the row may still add.
    Returns (counts after the cut [A], finished [A] bool).
    """
    L = tokens.shape[1]
    cols = torch.arange(L, device=tokens.device)[None, :]
    counts = torch.minimum(counts, room)
    finished = counts >= room
    if eos_token_id is not None:
        is_eos = (tokens == eos_token_id) & (cols < counts[:, None])
        has_eos = is_eos.any(1)
        first_eos = torch.where(has_eos, is_eos.long().argmax(1) + 1, counts)
        counts = torch.minimum(counts, first_eos)
        finished = finished | has_eos
    return counts, finished
