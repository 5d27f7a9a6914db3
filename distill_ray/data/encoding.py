"""Prompt template, tokenization with response-only loss masks, length filtering, batching.

A tokenized example is prompt ids followed by response ids (the response + EOS). Only response
tokens carry loss. Prompt and response are tokenized separately so generation (which starts
from the prompt ids) sees exactly what training saw. The prompt ids are either

- the tokenizer's chat template (`ChatFormat`: a real instruct model's ChatML, Llama or Qwen
  template), rendered as [system turn,] user turn and the opened assistant turn; the response
  then ends with the tokenizer's EOS (`<|im_end|>` for ChatML), which closes the assistant turn,
  so the loss covers the assistant's tokens and the token that ends them, nothing else; or
- BOS + `data.template` with the prompt in it (the local toy tokenizer has no chat template).
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
    skipped_context: int = 0  # prompt + response longer than the model's context (skipped)
    context: int | None = None  # the model's context length the rows were checked against
    skipped_bad: int = 0  # malformed, oversized or invalid rows skipped while loading (data.bad_rows="skip")
    first_bad: str = ""  # the first of those: "file:line: reason"

    def __str__(self) -> str:
        text = (
            f"kept {self.kept}, skipped {self.skipped_prompt} (prompt too long) + "
            f"{self.skipped_response} (response too long)"
        )
        if self.skipped_context:
            text += f" + {self.skipped_context} (longer than the model's context of {self.context} tokens)"
        text += f", truncated {self.truncated}"
        if self.skipped_bad:
            text += f", skipped {self.skipped_bad} bad row(s) (first: {self.first_bad})"
        return text


@dataclass(frozen=True)
class ChatFormat:
    """Render prompts with the tokenizer's chat template."""

    system: str | None = None  # content of a system turn; None: the template's own default (if it has one)


def chat_format(tokenizer, mode: str = "auto", system: str | None = None) -> ChatFormat | None:
    """The ChatFormat for `data.chat_template` = `mode`: "auto" uses the tokenizer's chat template
    when it has one, "none" never does (then data.template applies)."""
    if mode not in ("auto", "none"):
        raise DistillError(f"data.chat_template: must be auto or none, got {mode!r}")
    return ChatFormat(system) if mode == "auto" and getattr(tokenizer, "chat_template", None) else None


def chat_text(tokenizer, chat: ChatFormat, prompt: str, response: str | None = None) -> str:
    """The chat template's text of one exchange: the prompt as the user turn and the assistant
    turn opened (or, with `response`, closed after it)."""
    turns = ([{"role": "system", "content": chat.system}] if chat.system is not None else []) + [{"role": "user", "content": prompt}]
    if response is not None:
        turns.append({"role": "assistant", "content": response})
    return tokenizer.apply_chat_template(turns, add_generation_prompt=response is None, tokenize=False)


def apply_template(template: str, prompt: str) -> str:
    if "{prompt}" not in template:
        raise DistillError(f"data.template: must contain {{prompt}}, got {template!r}")
    return template.replace("{prompt}", prompt)


def encode_prompt(tokenizer, template: str, prompt: str, chat: ChatFormat | None = None) -> list[int]:
    """Prompt ids: the chat template's user turn and opened assistant turn (`chat`), else BOS +
    `template` with the prompt in it."""
    if chat is not None:
        return tokenizer(chat_text(tokenizer, chat, prompt), add_special_tokens=False)["input_ids"]
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
    max_total_tokens: int | None = None,
    chat: ChatFormat | None = None,
) -> tuple[list[Encoded], LengthReport]:
    """Tokenize (prompts through the chat template when `chat`), then skip or truncate over-long
    rows; the report counts what happened.

    max_total_tokens: the model's context; a row whose prompt + response is longer is skipped,
    or truncated (the response first; the prompt keeps its tail when it alone fills the context).
    """
    if tokenizer.eos_token_id is None:
        raise DistillError("tokenizer: has no EOS token; set one so responses can end")
    if max_total_tokens is not None and max_total_tokens < 3:
        raise DistillError(f"model context of {max_total_tokens} tokens is too short for a prompt and a response")
    report = LengthReport(context=max_total_tokens)
    out: list[Encoded] = []
    for i, ex in enumerate(examples):
        p = encode_prompt(tokenizer, template, ex.prompt, chat)
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
        if max_total_tokens is not None and len(p) + len(r) > max_total_tokens:
            if too_long == "skip":
                report.skipped_context += 1
                continue
            p, r = _fit_context(p, r, max_total_tokens, tokenizer.eos_token_id)
            report.truncated += 1
        out.append(Encoded(prompt_ids=p, response_ids=r, index=i, meta=ex.meta))
    report.kept = len(out)
    if not out:
        raise DistillError(f"data: no rows left after length filtering ({report})")
    return out, report


def _fit_context(p: list[int], r: list[int], limit: int, eos_id: int) -> tuple[list[int], list[int]]:
    """Cut prompt + response to `limit` tokens: the response's tail goes first (it still ends in
    EOS); a prompt that alone fills the context keeps its first token (BOS) and its tail."""
    if len(p) > limit - 1:
        p = p[:1] + p[len(p) - (limit - 2) :]
    room = limit - len(p)
    if len(r) > room:
        r = r[: room - 1] + [eos_id]
    return p, r


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


def batches_by_length(
    encoded: list[Encoded], batch_size: int, seed: int, window: int | None = None
) -> list[list[Encoded]]:
    """Batches of similar length (less padding), in a deterministic shuffled order.

    window=None sorts the whole dataset by length, so each batch holds one narrow length range.
    window=k shuffles first and sorts only within groups of k batches: each batch still has
    similar lengths, but the rows of consecutive steps come from the whole distribution (every
    task and length in every few steps), which trains small models much more steadily.
    """
    import random

    rng = random.Random(seed)
    order = list(range(len(encoded)))

    def length(i: int) -> int:
        return len(encoded[i].prompt_ids) + len(encoded[i].response_ids)

    if window is None:
        groups = [sorted(order, key=length)]
    else:
        if window < 1:
            raise ValueError(f"window must be >= 1 batch, got {window}")
        rng.shuffle(order)
        span = window * batch_size
        groups = [sorted(order[i : i + span], key=length) for i in range(0, len(order), span)]
    chunks = [g[i : i + batch_size] for g in groups for i in range(0, len(g), batch_size)]
    rng.shuffle(chunks)
    return [[encoded[i] for i in chunk] for chunk in chunks]
