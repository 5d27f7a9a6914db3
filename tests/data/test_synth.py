import random
from collections import Counter

from distill_ray.data import synth
from distill_ray.eval.scores import LENGTH_BUCKETS


def test_splits_are_disjoint_deterministic_and_spread_in_length():
    a = synth.generate_splits(3000, 200, 200, seed=3)
    b = synth.generate_splits(3000, 200, 200, seed=3)
    assert a == b
    prompts = [set(r["prompt"] for r in rows) for rows in a.values()]
    assert not (prompts[0] & prompts[1]) and not (prompts[0] & prompts[2]) and not (prompts[1] & prompts[2])
    lengths = [len(r["response"].split()) for r in a["train"]]
    assert min(lengths) <= 5 and max(lengths) >= 140
    assert set(Counter(r["task"] for r in a["train"])) == set(synth.TASKS)
    # every task at every length: each (task, bucket) pair has rows, so length and task are separable
    for task in synth.TASKS:
        words = [len(r["response"].split()) for r in a["train"] if r["task"] == task]
        for name, lo, hi in LENGTH_BUCKETS:
            assert sum(lo <= n <= hi for n in words) >= 30, (task, name)


def test_chain_is_a_fixed_cycle_of_distinct_words():
    assert sorted(synth.CHAIN) == sorted(synth.WORDS) and len(set(synth.WORDS)) == len(synth.WORDS)
    assert synth.chain_order() == synth.CHAIN  # deterministic
    assert len(set(synth.ZORBISH.values())) == len(synth.ZORBISH)  # one-to-one


def test_answers_are_checkable():
    rng = random.Random(0)
    succ = {w: synth.CHAIN[(i + 1) % len(synth.CHAIN)] for i, w in enumerate(synth.CHAIN)}
    zorbish_back = {v: k for k, v in synth.ZORBISH.items()}
    seen = Counter()
    for _ in range(400):
        ex = synth.make_example(rng)
        seen[ex["task"]] += 1
        out = ex["response"].split()
        if ex["task"] == "count":
            words = ex["prompt"].rstrip(".").split()  # Count up in twos from 12 to 80
            step = {"ones": 1, "twos": 2, "threes": 3}[words[3]]
            start, end = int(words[5]), int(words[7])
            sign = 1 if words[1] == "up" else -1
            assert [int(x) for x in out] == list(range(start + sign * step, end + sign, sign * step))
            prompt_words = {start}
        else:
            words = [zorbish_back[w] for w in out] if ex["task"] == "walk_zorbish" else out
            if ex["task"] == "walk_back":
                words = words[::-1]
            assert all(succ[a] == b for a, b in zip(words, words[1:]))
            start = ex["prompt"].split("from ")[1].split()[0]
            if ex["task"] == "walk_back":
                assert succ[out[0]] == start and ex["prompt"].rstrip(".").endswith(f"to {out[-1]}")
            else:
                assert succ[start] == words[0] and f"to {words[-1]}" in ex["prompt"]
            assert len(set(words)) == len(words)  # never around the whole cycle
            prompt_words = {start}
        # the start is never written: the end word is the only prompt word a response contains
        assert not prompt_words & {int(x) if ex["task"] == "count" else x for x in out}
    assert set(seen) == set(synth.TASKS)


def test_write_splits(tmp_path):
    paths = synth.write_splits(tmp_path, synth.generate_splits(10, 2, 2, seed=0))
    assert sorted(p.name for p in paths.values()) == ["test.jsonl", "train.jsonl", "validation.jsonl"]
    assert len(paths["train"].read_text().splitlines()) == 10


def test_the_local_tokenizer_represents_every_text_the_synthetic_tasks_write(tiny_local):
    """The quickstart's and the benchmarks' data pass data.unrepresentable=error (the default): the
    tiny tokenizer, trained on 600 training rows only, writes its own splits, rows of another seed,
    and every word, Zorbish word and number the tasks can use."""
    from distill_ray.config import DataConfig
    from distill_ray.data.encoding import encode_examples
    from distill_ray.data.loading import Example
    from distill_ray.data.prepare import prepare_split
    from distill_ray.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tiny_local["tokenizer"])
    for split in ("train", "validation", "test"):
        rows, report = prepare_split(DataConfig(), tokenizer, f"{tiny_local['data']}/{split}.jsonl", shuffle=False)
        assert report.unrepresentable == 0 and rows
    other = [Example(r["prompt"], r["response"]) for r in synth.generate_splits(2000, 0, 0, seed=7)["train"]]
    other += [Example("walk", " ".join(synth.WORDS)), Example("walk", " ".join(synth.ZORBISH.values())),
              Example("count", " ".join(map(str, range(synth.MAX_NUMBER + 1))))]
    _, report = encode_examples(other, tokenizer, DataConfig().template, 10**6, 10**6, unrepresentable="keep")
    assert (report.kept, report.unrepresentable) == (len(other), 0)
