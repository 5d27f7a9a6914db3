from collections import Counter

from distill_ray.data import synth


def test_splits_are_disjoint_deterministic_and_spread_in_length():
    a = synth.generate_splits(3000, 200, 200, seed=3)
    b = synth.generate_splits(3000, 200, 200, seed=3)
    assert a == b
    prompts = [set(r["prompt"] for r in rows) for rows in a.values()]
    assert not (prompts[0] & prompts[1]) and not (prompts[0] & prompts[2]) and not (prompts[1] & prompts[2])
    lengths = [len(r["response"].split()) for r in a["train"]]
    assert min(lengths) <= 5 and max(lengths) >= 150
    assert sum(n > 64 for n in lengths) >= 50  # a real long tail
    assert set(Counter(r["task"] for r in a["train"])) == set(synth.TASKS)


def test_answers_are_checkable():
    import random

    rng = random.Random(0)
    for _ in range(200):
        ex = synth.make_example(rng)
        words = ex["prompt"].split(": ", 1)[-1].split()
        if ex["task"] == "copy":
            assert ex["response"].split() == words
        elif ex["task"] == "reverse":
            assert ex["response"].split() == words[::-1]
        elif ex["task"] == "sort":
            assert ex["response"].split() == [str(n) for n in sorted(map(int, words))]
        elif ex["task"] == "translate":
            assert ex["response"].split() == [synth.ZORBISH[w] for w in words]
        elif ex["task"] == "count_up":
            nums = [int(x) for x in ex["response"].split()]
            assert nums == list(range(nums[0], nums[-1] + 1))


def test_write_splits(tmp_path):
    paths = synth.write_splits(tmp_path, synth.generate_splits(10, 2, 2, seed=0))
    assert sorted(p.name for p in paths.values()) == ["test.jsonl", "train.jsonl", "validation.jsonl"]
    assert len(paths["train"].read_text().splitlines()) == 10
