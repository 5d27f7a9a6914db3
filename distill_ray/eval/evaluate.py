"""Generate responses for held-out prompts and score them (`distill-ray eval`)."""

from __future__ import annotations

import json
import math
import time
from functools import partial
from pathlib import Path

import torch

from distill_ray.data.encoding import Encoded, collate_prompts, decode_text, normal_form
from distill_ray.errors import DistillError
from distill_ray.eval.scores import LENGTH_BUCKETS, Scored, summarize
from distill_ray.progress import progress_bar


@torch.no_grad()
def generate_responses(
    model,
    prompts: list[list[int]],
    *,
    eos_token_id: int,
    pad_token_id: int,
    max_new_tokens: int,
    batch_size: int = 64,
    sample: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> list[list[int]]:
    """Response token ids (EOS stripped) for each prompt, in input order.

    Prompts are generated in batches of similar length (left-padded) so little compute is
    spent on padding.
    """
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int] | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    if sample:
        torch.manual_seed(seed)
    bar = progress_bar(len(prompts), "generated", unit="prompt", enabled=progress)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate_prompts([prompts[i] for i in idx], pad_token_id)
        gen = model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            temperature=1.0 if sample else None,
            top_p=None,
            top_k=None,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )
        for i, row in zip(idx, gen[:, batch["input_ids"].shape[1] :].tolist()):
            if eos_token_id in row:
                row = row[: row.index(eos_token_id)]
            out[i] = [t for t in row if t != pad_token_id]
        bar.update(len(idx))
    bar.close()
    return out  # type: ignore[return-value]


def evaluate_model(
    model,
    tokenizer,
    encoded: list[Encoded],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 64,
    sample: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Greedy (or sampled) generation on `encoded` and the metrics of `summarize`."""
    t0 = time.perf_counter()
    responses = generate_responses(
        model,
        [e.prompt_ids for e in encoded],
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        sample=sample,
        seed=seed,
        progress=progress,
    )
    seconds = time.perf_counter() - t0
    scored = []
    form = partial(normal_form, tokenizer)
    for e, resp in zip(encoded, responses):
        reference_ids = e.response_ids[:-1]  # without EOS
        scored.append(
            Scored(
                prediction=decode_text(tokenizer, resp),
                # the dataset's text, not decode(encode(text)): text the tokenizer cannot write
                # (an <unk> decodes to nothing) must not match a prediction that lacks it
                reference=e.reference if e.reference is not None else decode_text(tokenizer, reference_ids),
                reference_tokens=len(reference_ids),
                prediction_tokens=len(resp),
                task=e.meta.get("task"),
                form=form,
                hit_cap=len(resp) >= max_new_tokens,  # responses are cut at EOS, so a full-length one never reached it
            )
        )
    result = summarize(scored)
    result["decoding"] = "sampled" if sample else "greedy"
    result["generation_seconds"] = seconds
    result["generated_tokens"] = sum(len(r) for r in responses)
    result["examples"] = [
        {"prediction": s.prediction, "reference": s.reference, "task": s.task} for s in scored[:5]
    ]
    return result


@torch.no_grad()
def teacher_closeness(student, teacher, encoded: list[Encoded], *, pad_token_id: int, batch_size: int = 4,
                      progress: bool = False) -> dict:
    """How close the student is to the teacher on the references (teacher-forced, response tokens
    only): KL(teacher || student) per token in nats, and both models' perplexity on the references
    (for a real pair the references are the teacher's own answers: `distill-ray data instruct`)."""
    from distill_ray.data.encoding import collate_for_training
    from distill_ray.losses.divergences import log_softmax_float, per_token_divergence_from_logprobs

    student.eval()
    teacher.eval()
    kl_sum = nll_s = nll_t = 0.0
    tokens = 0
    bar = progress_bar(len(encoded), "scored against the teacher", unit="row", enabled=progress)
    for start in range(0, len(encoded), batch_size):
        b = collate_for_training(encoded[start : start + batch_size], pad_token_id)
        ids, attn, mask = b["input_ids"], b["attention_mask"], b["loss_mask"][:, :-1].bool()
        labels = ids[:, 1:]
        ls = log_softmax_float(student(input_ids=ids, attention_mask=attn).logits[:, :-1])
        lt = log_softmax_float(teacher(input_ids=ids, attention_mask=attn).logits[:, :-1])
        if ls.shape[-1] != lt.shape[-1]:
            raise DistillError(f"eval --teacher: teacher vocabulary {lt.shape[-1]} != student vocabulary {ls.shape[-1]}")
        kl_sum += float(per_token_divergence_from_logprobs(lt, ls, kind="forward_kl")[mask].sum())
        nll_s -= float(ls.gather(-1, labels[..., None])[..., 0][mask].sum())
        nll_t -= float(lt.gather(-1, labels[..., None])[..., 0][mask].sum())
        tokens += int(mask.sum())
        bar.update(len(b["input_ids"]))
    bar.close()
    return {"kl_teacher_student_per_token": kl_sum / max(tokens, 1), "student_perplexity": math.exp(nll_s / max(tokens, 1)),
            "teacher_perplexity": math.exp(nll_t / max(tokens, 1)), "tokens": tokens}


def format_table(results: dict[str, dict]) -> str:
    """A plain-text table: one row per evaluated model, overall and per length bucket."""
    buckets = [name for name, _, _ in LENGTH_BUCKETS]
    head = f"{'model':<22}{'EM':>7}{'ROUGE-L':>9}{'len':>7}" + "".join(f"  {b.split()[0] + ' EM/RL':>15}" for b in buckets)
    lines = [head, "-" * len(head)]
    for name, res in results.items():
        o = res["overall"]
        row = f"{name:<22}{o['exact_match']:>7.3f}{o['rouge_l']:>9.3f}{o['mean_length']:>7.1f}"
        for b in buckets:
            r = res["by_length"][b]
            cell = "-" if not r["n"] else f"{r['exact_match']:.2f}/{r['rouge_l']:.2f}"
            row += f"  {cell:>15}"
        lines.append(row)
    return "\n".join(lines)


def write_json(path: str | Path, payload: dict) -> None:
    """Write JSON atomically (temp file, then rename), so no half-written result is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)
