"""Prompt template, tokenization with response-only loss masks, length filtering, batching.

A tokenized example is prompt ids (BOS + the templated prompt) followed by response ids (the
response + EOS). Only response tokens carry loss. Prompt and response are tokenized
separately so generation (which starts from the prompt ids) sees exactly what training saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from distill_ray.data.loading import Example
from distill_ray.errors import DistillError


@dataclass
class Encoded:
    prompt_ids: list[int]  # BOS + templated prompt
    response_ids: list[int]  # response + EOS
    index: int  # position of the example in its (shuffled) dataset
    meta: dict = field(default_factory=dict)


@dataclass
class LengthReport:
    kept: int = 0
    skipped_prompt: int = 0  # prompt longer than max_prompt_tokens (skipped)
    skipped_response: int = 0  # response longer than max_response_tokens (skipped)
    truncated: int = 0  # rows truncated to fit (too_long="truncate")

    def __str__(self) -> str:
        return (
            f"kept {self.kept}, skipped {self.skipped_prompt} (prompt too long) + "
            f"{self.skipped_response} (response too long), truncated {self.truncated}"
        )


def apply_template(template: str, prompt: str) -> str:
    if "{prompt}" not in template:
        raise DistillError(f"data.template: must contain {{prompt}}, got {template!r}")
    return template.replace("{prompt}", prompt)


def encode_prompt(tokenizer, template: str, prompt: str) -> list[int]:
    ids = tokenizer(apply_template(template, prompt), add_special_tokens=False)["input_ids"]
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids


def encode_response(tokenizer, response: str) -> list[int]:
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def encode_examples(
    examples: list[Example],
    tokenizer,
    template: str,
    max_prompt_tokens: int,
    max_response_tokens: int,
    too_long: str = "skip",
) -> tuple[list[Encoded], LengthReport]:
    """Tokenize, then skip or truncate over-long rows; the report counts what happened."""
    if tokenizer.eos_token_id is None:
        raise DistillError("tokenizer: has no EOS token; set one so responses can end")
    report = LengthReport()
    out: list[Encoded] = []
    for i, ex in enumerate(examples):
        p = encode_prompt(tokenizer, template, ex.prompt)
        r = encode_response(tokenizer, ex.response)
        if len(p) > max_prompt_tokens or len(r) > max_response_tokens:
            if too_long == "skip":
                if len(p) > max_prompt_tokens:
                    report.skipped_prompt += 1
                else:
                    report.skipped_response += 1
                continue
            # keep the end of the prompt (the instruction's tail sits next to the response)
            p = p[:1] + p[len(p) - max_prompt_tokens + 1 :] if len(p) > max_prompt_tokens else p
            r = r[: max_response_tokens - 1] + [tokenizer.eos_token_id] if len(r) > max_response_tokens else r
            report.truncated += 1
        out.append(Encoded(prompt_ids=p, response_ids=r, index=i, meta=ex.meta))
    report.kept = len(out)
    if not out:
        raise DistillError(f"data: no rows left after length filtering ({report})")
    return out, report


def collate_for_training(batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt+response sequences for teacher-forced training.

    Returns input_ids, attention_mask [B, L] and loss_mask [B, L] where loss_mask[b, t] is 1
    when the token at t+1 is a response token (i.e. the logits at t predict a response token),
    so logits[:, :-1] line up with loss_mask[:, :-1] and labels input_ids[:, 1:].
    """
    lengths = [len(e.prompt_ids) + len(e.response_ids) for e in batch]
    L = max(lengths)
    input_ids = torch.full((len(batch), L), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), L), dtype=torch.long)
    loss_mask = torch.zeros((len(batch), L), dtype=torch.float32)
    for b, e in enumerate(batch):
        seq = e.prompt_ids + e.response_ids
        input_ids[b, : len(seq)] = torch.tensor(seq)
        attention_mask[b, : len(seq)] = 1
        # positions predicting response tokens: from the last prompt token to the token before EOS
        loss_mask[b, len(e.prompt_ids) - 1 : len(seq) - 1] = 1.0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


def collate_prompts(prompts: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts for batched generation: input_ids, attention_mask [B, P]."""
    P = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), P), dtype=torch.long)
    for b, p in enumerate(prompts):
        input_ids[b, P - len(p) :] = torch.tensor(p)
        attention_mask[b, P - len(p) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def batches_by_length(encoded: list[Encoded], batch_size: int, seed: int) -> list[list[Encoded]]:
    """Batches of similar length (less padding), in a deterministic shuffled order."""
    import random

    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].prompt_ids) + len(encoded[i].response_ids))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    random.Random(seed).shuffle(chunks)
    return [[encoded[i] for i in chunk] for chunk in chunks]
