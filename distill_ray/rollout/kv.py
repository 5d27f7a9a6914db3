"""A batched KV cache whose rows may hold different numbers of tokens (torch backend).

HF's `DynamicCache` keeps one slot axis for the whole batch. Speculative (drafted) decoding
makes rows ragged: one row keeps all its drafted tokens, another rejects most of them. Here
each row owns a 0/1 mask over the slots: a rejected draft is rolled back by masking its slots
(and cropping the tail slots that no row uses any more, `DynamicCache.crop`), position ids are
per row, and finished rows are dropped with `batch_select_indices`. With one row the mask is
all ones and every rollback is a plain crop.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel


class SlotCache:
    """One model's KV cache for a batch of rows, fed a block of tokens at a time."""

    def __init__(self, model: PreTrainedModel, batch_size: int):
        self.model = model
        self.device = next(model.parameters()).device
        self.cache = DynamicCache()
        self.slot_mask = torch.zeros((batch_size, 0), dtype=torch.long, device=self.device)  # [B, S]
        self.next_position = torch.zeros(batch_size, dtype=torch.long, device=self.device)  # [B] valid tokens per row

    @property
    def num_slots(self) -> int:
        return self.slot_mask.shape[1]

    @torch.inference_mode()
    def feed(self, tokens: torch.Tensor, valid: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """Append a block of tokens and return the logits at its positions.

        tokens: [B, L] int64; valid: [B, L] bool (False = a filler slot, masked from now on; valid
        slots must come first in each row). Returns float32 logits [B, L, V] ([B, 1, V] with
        last_only, the logits at the block's last slot).
        """
        B, L = tokens.shape
        if valid is None:
            valid = torch.ones((B, L), dtype=torch.bool, device=self.device)
        valid_long = valid.to(self.device).long()
        # each valid token's position = tokens already in its row + its rank in the block
        position_ids = self.next_position[:, None] + (valid_long.cumsum(1) - 1).clamp(min=0)
        attention_mask = torch.cat([self.slot_mask, valid_long], 1)
        out = self.model(
            input_ids=tokens.to(self.device),
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1 if last_only else 0,
        )
        self.slot_mask = attention_mask
        self.next_position = self.next_position + valid_long.sum(1)
        return out.logits.float()

    def rollback(self, keep: torch.Tensor, block: int) -> None:
        """Of the last `block` slots, keep the first keep[b] of row b and mask the rest.

        keep: [B] int64 in [0, block]. Trailing slots masked in every row are cropped away.
        """
        keep = keep.to(self.device)
        cols = torch.arange(block, device=self.device)
        tail = self.slot_mask[:, -block:]
        new_tail = tail * (cols[None, :] < keep[:, None]).long()
        self.next_position = self.next_position - (tail.sum(1) - new_tail.sum(1))
        self.slot_mask = torch.cat([self.slot_mask[:, :-block], new_tail], 1)
        used = self.slot_mask.any(0).nonzero()
        last_used = int(used[-1]) + 1 if len(used) else 0
        unused_tail = self.num_slots - last_used
        if unused_tail > 0:
            self.cache.crop(-unused_tail)
            self.slot_mask = self.slot_mask[:, :last_used]

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (int64 indices), e.g. drop finished sequences."""
        rows = rows.to(self.device)
        if self.num_slots:
            self.cache.batch_select_indices(rows)
        self.slot_mask = self.slot_mask[rows]
        self.next_position = self.next_position[rows]
