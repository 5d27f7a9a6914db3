"""Synthetic instruction-following tasks whose answers can be checked exactly.

Each example is {"task", "prompt", "response"}. Every task draws its length log-uniformly from
2 to 150-190 words, so each task appears in every length bucket and length and task can be told
apart. The tasks are rules a model applies one token at a time, from a few words of the prompt:

    count         "Count up in twos from 12 to 80."    14 16 ... 80     (up or down, step 1-3)
    walk          "Walk the chain from panda to yarn." yogurt ... yarn
    walk_back     the same chain, backwards (each word's predecessor)
    walk_zorbish  the walk, each word given in "Zorbish" (a fixed made-up word for every word)

The chain is a fixed secret order of 152 words (CHAIN). Nothing in the prompt says what follows
a word, so a model can only walk it by having learnt all 152 successors (and predecessors, and
Zorbish names): knowledge the teacher holds and a small student lacks, which is what
distillation transfers. Each step is a lookup and the stop is "the word just written is the
prompt's last word"; responses start after the start word and the step is spelt out, so the end
word is the only word of the prompt a response ever writes: stopping needs one attention match,
not a count. A teacher that knows the chain is exact at every length (one error in 150 lookups
is what a long exact match measures).
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
    "lotus maple nebula oasis prairie summit tundra volcano breeze coral dune fern grove "
    "arrow badge cabin daisy eagle flute goose honey ivory jewel kite llama mango nickel olive "
    "panda quill radish salmon tulip unicorn vapor walnut yarn zinnia almond beacon cherry "
    "denim elbow fossil ginger helmet insect jigsaw kitten lizard mitten noodle onion peanut"
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
# the longest walk along the chain (in words; shorter than the chain, so no word repeats)
MAX_WALK = 150
# counting runs over 0..MAX_NUMBER (each number one token of the local tokenizer), at most MAX_COUNT numbers
MAX_NUMBER = 199
MAX_COUNT = 190


_STEP_WORDS = {1: "ones", 2: "twos", 3: "threes"}


def _count(rng: random.Random) -> tuple[str, str]:
    step = rng.choice((1, 2, 3))
    length = _long_tailed_length(rng, 2, min(MAX_COUNT, MAX_NUMBER // step - 1))
    span = step * length
    if rng.random() < 0.5:
        start = rng.randint(0, MAX_NUMBER - span)
        nums = list(range(start + step, start + span + 1, step))
        verb = "up"
    else:
        start = rng.randint(span, MAX_NUMBER)
        nums = list(range(start - step, start - span - 1, -step))
        verb = "down"
    return f"Count {verb} in {_STEP_WORDS[step]} from {start} to {nums[-1]}.", " ".join(map(str, nums))


def chain_order(seed: int = 4321) -> list[str]:
    """The fixed secret order of WORDS that the walk tasks follow (a cycle: the last word leads to
    the first). A model can only walk it by having learnt every word's successor."""
    order = list(WORDS)
    random.Random(seed).shuffle(order)
    return order


CHAIN = chain_order()
_CHAIN_NEXT = {w: CHAIN[(i + 1) % len(CHAIN)] for i, w in enumerate(CHAIN)}


def _walk_words(rng: random.Random) -> tuple[str, list[str]]:
    """A start word and the words that follow it on the chain (the response: the start excluded)."""
    length = _long_tailed_length(rng, 2, MAX_WALK)
    start = rng.randrange(len(CHAIN))
    return CHAIN[start], [CHAIN[(start + i) % len(CHAIN)] for i in range(1, length + 1)]


def _walk(rng: random.Random) -> tuple[str, str]:
    start, words = _walk_words(rng)
    return f"Walk the chain from {start} to {words[-1]}.", " ".join(words)


def _walk_back(rng: random.Random) -> tuple[str, str]:
    end, words = _walk_words(rng)
    words = words[::-1][1:] + [end]  # backwards from the walk's last word: its predecessors, down to `end`
    return f"Walk the chain backwards from {_CHAIN_NEXT[words[0]]} to {end}.", " ".join(words)


def _walk_zorbish(rng: random.Random) -> tuple[str, str]:
    start, words = _walk_words(rng)
    return f"Walk the chain from {start} to {words[-1]} in Zorbish.", " ".join(ZORBISH[w] for w in words)


TASKS = {
    "count": _count,
    "walk": _walk,
    "walk_back": _walk_back,
    "walk_zorbish": _walk_zorbish,
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
