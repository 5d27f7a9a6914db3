"""Synthetic instruction-following tasks whose answers can be checked exactly.

Each example is {"task", "prompt", "response"}. Response lengths spread from a few words to
about 200, so quality can be measured by exact match and ROUGE-L per length bucket. The tasks
are algorithmic (counting, copying, reversing, a fixed word-for-word "translation",
sorting numbers) so a small teacher can learn them well and a much smaller student visibly
cannot, which is what a distillation testbed needs.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

# A fixed word list; the fictional language "Zorbish" maps each word to a made-up one.
WORDS = (
    "apple river stone cloud bread green quiet light music paper table window garden "
    "silver forest ocean candle mirror pencil button rocket planet yellow winter summer "
    "market bridge castle dragon feather island jungle kettle ladder marble needle orange "
    "pepper rabbit saddle ticket velvet wagon zebra anchor basket cactus dolphin engine "
    "falcon guitar hammer igloo jacket koala lemon magnet napkin otter parrot quilt raven "
    "sunset tiger umbrella violin walrus yogurt acorn bamboo copper desert echo fabric "
    "glacier harbor iron jade kernel lantern meadow nectar orbit pebble quartz ribbon "
    "shadow thunder valley willow canyon comet crystal ember frost galaxy horizon lagoon "
    "lotus maple nebula oasis prairie summit tundra volcano breeze coral dune fern grove"
).split()

_SYLLABLES = ["ka", "zo", "mi", "ru", "te", "lo", "shi", "vo", "na", "bu", "xe", "pi", "da", "qua", "fe", "gu"]


def zorbish_dictionary(seed: int = 1234) -> dict[str, str]:
    """The fixed English -> Zorbish word map (deterministic, one-to-one)."""
    rng = random.Random(seed)
    out: dict[str, str] = {}
    used: set[str] = set()
    for word in WORDS:
        while True:
            candidate = "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 3))))
            if candidate not in used:
                used.add(candidate)
                out[word] = candidate
                break
    return out


ZORBISH = zorbish_dictionary()
# the words the translation task uses: a vocabulary small enough for the teacher to learn well
TRANSLATABLE = WORDS[:32]


def _words(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(WORDS) for _ in range(n)]


def _count_up(rng: random.Random) -> tuple[str, str]:
    length = _long_tailed_length(rng, 3, 190)
    start = rng.randint(0, 299 - length)
    nums = list(range(start, start + length))
    return f"Count from {nums[0]} to {nums[-1]}.", " ".join(map(str, nums))


def _count_down(rng: random.Random) -> tuple[str, str]:
    length = _long_tailed_length(rng, 3, 120)
    start = rng.randint(length, 299)
    nums = list(range(start, start - length, -1))
    return f"Count down from {nums[0]} to {nums[-1]}.", " ".join(map(str, nums))


def _copy(rng: random.Random) -> tuple[str, str]:
    words = _words(rng, _long_tailed_length(rng, 2, 40))
    text = " ".join(words)
    return f"Repeat these words: {text}", text


def _reverse(rng: random.Random) -> tuple[str, str]:
    words = _words(rng, rng.randint(2, 5))
    return f"Reverse these words: {' '.join(words)}", " ".join(reversed(words))


def _translate(rng: random.Random) -> tuple[str, str]:
    words = [rng.choice(TRANSLATABLE) for _ in range(_long_tailed_length(rng, 2, 30))]
    return f"Translate to Zorbish: {' '.join(words)}", " ".join(ZORBISH[w] for w in words)


def _sort_numbers(rng: random.Random) -> tuple[str, str]:
    nums = rng.sample(range(100), rng.randint(2, 5))
    return f"Sort these numbers: {' '.join(map(str, nums))}", " ".join(map(str, sorted(nums)))


TASKS = {
    "count_up": _count_up,
    "count_down": _count_down,
    "copy": _copy,
    "reverse": _reverse,
    "translate": _translate,
    "sort": _sort_numbers,
}


def _long_tailed_length(rng: random.Random, lo: int, hi: int) -> int:
    """A length in [lo, hi] spread over short, medium and long (log-uniform)."""
    import math

    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def make_example(rng: random.Random, task: str | None = None) -> dict:
    name = task or rng.choice(sorted(TASKS))
    prompt, response = TASKS[name](rng)
    return {"task": name, "prompt": prompt, "response": response}


def generate_splits(
    num_train: int, num_validation: int, num_test: int, seed: int = 0
) -> dict[str, list[dict]]:
    """Disjoint train/validation/test splits (no prompt appears in two splits)."""
    rng = random.Random(seed)
    sizes = {"train": num_train, "validation": num_validation, "test": num_test}
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split in ("test", "validation", "train"):  # held-out splits first, so they are never starved
        rows: list[dict] = []
        while len(rows) < sizes[split]:
            ex = make_example(rng)
            if ex["prompt"] in seen:
                continue
            seen.add(ex["prompt"])
            rows.append(ex)
        splits[split] = rows
    return {k: splits[k] for k in ("train", "validation", "test")}


def write_splits(out_dir: str | Path, splits: dict[str, list[dict]]) -> dict[str, Path]:
    """Write each split as JSONL (atomically: a temp file renamed into place)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in splits.items():
        path = out / f"{name}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        tmp.replace(path)
        paths[name] = path
    return paths


def describe(splits: dict[str, list[dict]]) -> str:
    lines = []
    for name, rows in splits.items():
        lengths = sorted(len(r["response"].split()) for r in rows)
        tasks = Counter(r["task"] for r in rows)
        lines.append(
            f"{name:<10} {len(rows):>6} rows  response words min/median/max "
            f"{lengths[0]}/{lengths[len(lengths) // 2]}/{lengths[-1]}  tasks {dict(sorted(tasks.items()))}"
        )
    return "\n".join(lines)
