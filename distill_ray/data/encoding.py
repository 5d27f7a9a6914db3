"""Prompt template, tokenization with response-only loss masks, length filtering, batching.

Each row's prompt and response are also checked to survive the tokenizer (no <unk>, and
decode(encode(text)) is the text up to the tokenizer's own normalisation): a row that does not
stops the load, is skipped or is kept (`data.unrepresentable`), and eval always scores against
the dataset's own text (`Encoded.reference`), so text the tokenizer drops cannot match.

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
    reference: str | None = None  # the dataset's response text (whole, even if response_ids were truncated): what eval scores against; None: decode response_ids


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
    unrepresentable: int = 0  # rows whose text the tokenizer cannot write (skipped, or kept: data.unrepresentable)
    unrepresentable_kept: bool = False  # those rows were kept (data.unrepresentable="keep"), not skipped
    unk_tokens: int = 0  # <unk> tokens in the kept rows
    first_unrepresentable: str = ""  # the first of those rows: "file:line: reason"

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
        if self.unrepresentable and self.unrepresentable_kept:
            unk = f"{self.unk_tokens} <unk> token(s); " if self.unk_tokens else ""
            text += (f", {self.unrepresentable} kept row(s) the tokenizer cannot represent "
                     f"({unk}first: {self.first_unrepresentable})")
        elif self.unrepresentable:
            text += f", skipped {self.unrepresentable} row(s) the tokenizer cannot represent (first: {self.first_unrepresentable})"
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


def token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text's ids, no special tokens added: one batched call (a fast tokenizer encodes the
    whole list in Rust, about 3x faster than one call per text)."""
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def encode_prompts(tokenizer, template: str, prompts: list[str], chat: ChatFormat | None = None) -> list[list[int]]:
    """Prompt ids: the chat template's user turn and opened assistant turn (`chat`), else BOS +
    `template` with the prompt in it."""
    if chat is not None:
        return token_ids(tokenizer, [chat_text(tokenizer, chat, p) for p in prompts])
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [bos + ids for ids in token_ids(tokenizer, [apply_template(template, p) for p in prompts])]


def encode_prompt(tokenizer, template: str, prompt: str, chat: ChatFormat | None = None) -> list[int]:
    return encode_prompts(tokenizer, template, [prompt], chat)[0]


def encode_responses(tokenizer, responses: list[str]) -> list[list[int]]:
    """Response ids + EOS."""
    return [ids + [tokenizer.eos_token_id] for ids in token_ids(tokenizer, responses)]


def encode_response(tokenizer, response: str) -> list[int]:
    return encode_responses(tokenizer, [response])[0]


def decode_texts(tokenizer, ids: list[list[int]]) -> list[str]:
    """The text each id list stands for, as a model writing them would have written it: special
    tokens dropped, and no clean-up of spaces before punctuation (that would rewrite the dataset's text)."""
    return tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) if ids else []


def decode_text(tokenizer, ids: list[int]) -> str:
    return decode_texts(tokenizer, [ids])[0]


def normal_form(tokenizer, text: str) -> str:
    """`text` as the tokenizer's own normalizer writes it (e.g. NFKC for the local BPE, nothing for
    GPT-2's), whitespace collapsed: two texts with the same normal form are the same answer."""
    normalizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
    text = " ".join(text.split())
    return " ".join(normalizer.normalize_str(text).split()) if normalizer is not None else text


UNREPRESENTABLE = ("error", "skip", "keep")


def unrepresentable_texts(tokenizer, texts: list[str], ids: list[list[int]]) -> list[str | None]:
    """Why each `ids`, the tokenization of its text, does not stand for it (None when it does):
    <unk> tokens, or a decoding whose normal form differs (a character the vocabulary lacks, a
    literal special token such as "</s>" in the text)."""
    unk = tokenizer.unk_token_id
    out: list[str | None] = []
    for text, row, back in zip(texts, ids, decode_texts(tokenizer, ids)):
        n_unk = row.count(unk) if unk is not None else 0
        if not n_unk and (back == text or normal_form(tokenizer, back) == normal_form(tokenizer, text)):
            out.append(None)
            continue
        start = next((i for i, (a, b) in enumerate(zip(text, back)) if a != b), min(len(text), len(back)))
        start = max(0, start - 10)  # show where they part, with a little of what comes before
        unk_note = f", {n_unk} <unk> token(s)" if n_unk else ""
        out.append(f"{_clip(text[start:])!r} decodes to {_clip(back[start:])!r}{unk_note}")
    return out


def unrepresentable_text(tokenizer, text: str, ids: list[int]) -> str | None:
    return unrepresentable_texts(tokenizer, [text], [ids])[0]


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n] + "..."


def encode_examples(
    examples: list[Example],
    tokenizer,
    template: str,
    max_prompt_tokens: int,
    max_response_tokens: int,
    too_long: str = "skip",
    max_total_tokens: int | None = None,
    chat: ChatFormat | None = None,
    unrepresentable: str = "error",
) -> tuple[list[Encoded], LengthReport]:
    """Tokenize (prompts through the chat template when `chat`), then skip or truncate over-long
    rows; the report counts what happened.

    max_total_tokens: the model's context; a row whose prompt + response is longer is skipped,
    or truncated (the response first; the prompt keeps its tail when it alone fills the context).
    unrepresentable: a row whose prompt or response the tokenizer cannot write (`unrepresentable_text`)
    stops with its file:line ("error"), is skipped ("skip") or kept ("keep"); counted either way.
    """
    if tokenizer.eos_token_id is None:
        raise DistillError("tokenizer: has no EOS token; set one so responses can end")
    if max_total_tokens is not None and max_total_tokens < 3:
        raise DistillError(f"model context of {max_total_tokens} tokens is too short for a prompt and a response")
    if unrepresentable not in UNREPRESENTABLE:
        raise DistillError(f"data.unrepresentable: expected one of {UNREPRESENTABLE}, got {unrepresentable!r}")
    report = LengthReport(context=max_total_tokens, unrepresentable_kept=unrepresentable == "keep")
    out: list[Encoded] = []
    for i, ex, p, r, problem in _encoded_rows(tokenizer, examples, template, chat):
        if problem:
            if unrepresentable == "error":
                raise DistillError(f"{problem}; set data.unrepresentable=skip or keep to go on")
            report.unrepresentable += 1
            report.first_unrepresentable = report.first_unrepresentable or problem
            if unrepresentable == "skip":
                continue
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
        if problem and tokenizer.unk_token_id is not None:
            report.unk_tokens += (p + r).count(tokenizer.unk_token_id)
        out.append(Encoded(prompt_ids=p, response_ids=r, index=i, meta=ex.meta, reference=ex.response))
    report.kept = len(out)
    if not out:
        raise DistillError(f"data: no rows left after length filtering ({report})")
    return out, report


ENCODE_CHUNK = 2048  # rows tokenized per batched call


def _encoded_rows(tokenizer, examples: list[Example], template: str, chat: ChatFormat | None):
    """(index, example, prompt ids, response ids, problem) per example, tokenized in chunks.
    problem: 'file:line: the tokenizer cannot represent the prompt/response: why', or None when
    it can write both (the prompt alone, without the template: the template is the config's)."""
    for start in range(0, len(examples), ENCODE_CHUNK):
        chunk = examples[start : start + ENCODE_CHUNK]
        prompts = [ex.prompt for ex in chunk]
        responses = [ex.response for ex in chunk]
        prompt_ids = encode_prompts(tokenizer, template, prompts, chat)
        response_ids = encode_responses(tokenizer, responses)
        prompt_why = unrepresentable_texts(tokenizer, prompts, token_ids(tokenizer, prompts))
        response_why = unrepresentable_texts(tokenizer, responses, [r[:-1] for r in response_ids])
        for n, ex in enumerate(chunk):
            i = start + n
            name, why = ("prompt", prompt_why[n]) if prompt_why[n] else ("response", response_why[n])
            where = ex.location or f"row {ex.meta.get('row', i)}"
            problem = f"{where}: the tokenizer cannot represent the {name}: {why}" if why else None
            yield i, ex, prompt_ids[n], response_ids[n], problem


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
