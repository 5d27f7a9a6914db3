"""PromptStream: the per-epoch order of the training rows, with and without length grouping."""

import random

import pytest

from distill_ray.config import load_config
from distill_ray.data.encoding import Encoded
from distill_ray.errors import DistillError
from distill_ray.pipeline.sources import DataPosition, PromptStream


def rows(n: int, seed: int = 0) -> list[Encoded]:
    rng = random.Random(seed)  # lengths spread like the testbed's: mostly short, a long tail
    return [Encoded([1] * rng.randint(5, 20), [2] * int(rng.lognormvariate(3.0, 1.0) + 1), i) for i in range(n)]


def epoch_batches(stream: PromptStream, n_batches: int) -> list[list[int]]:
    return [[r.index for r in stream.next_rows()] for _ in range(n_batches)]


def padded_tokens(batches: list[list[int]], data: list[Encoded]) -> int:
    return sum(len(b) * max(len(data[i].prompt_ids) + len(data[i].response_ids) for i in b) for b in batches)


@pytest.mark.parametrize("window", [0, 4])
def test_every_row_comes_once_per_epoch(window):
    data = rows(200)  # 200 = 6 batches of 32 + 8 rows a full batch cannot take
    stream = PromptStream(data, 32, seed=3, length_window=window)
    first, second = epoch_batches(stream, 6), epoch_batches(stream, 6)
    assert stream.position.epoch == 1
    for epoch in (first, second):
        seen = [i for b in epoch for i in b]
        assert len(seen) == len(set(seen)) == 192
    assert first != second  # a new order each epoch


def test_without_a_window_the_order_is_the_plain_seeded_shuffle():
    data = rows(100)
    order = list(range(100))
    random.Random(5 * 100_003 + 0).shuffle(order)
    assert epoch_batches(PromptStream(data, 10, seed=5), 10) == [order[i : i + 10] for i in range(0, 100, 10)]


def test_length_windows_cut_padding_and_keep_every_length_in_every_window():
    data = rows(640)
    plain = epoch_batches(PromptStream(data, 32, seed=0), 20)
    grouped = epoch_batches(PromptStream(data, 32, seed=0, length_window=4), 20)
    real = sum(len(d.prompt_ids) + len(d.response_ids) for d in data)
    waste_plain = padded_tokens(plain, data) / real
    waste_grouped = padded_tokens(grouped, data) / real
    assert waste_grouped < 0.6 * waste_plain, (waste_plain, waste_grouped)
    # each window of 4 batches holds the same rows as that window of the plain shuffle, just regrouped
    for w in range(5):
        assert sorted(sum(plain[4 * w : 4 * w + 4], [])) == sorted(sum(grouped[4 * w : 4 * w + 4], []))


def test_a_stream_restored_mid_epoch_continues_the_grouped_order_exactly():
    data = rows(300)
    whole = PromptStream(data, 16, seed=1, length_window=3)
    done = epoch_batches(whole, 7)
    rest = epoch_batches(whole, 30)  # crosses into the next epoch
    restored = PromptStream(data, 16, seed=1, position=DataPosition(0, 7 * 16), length_window=3)
    assert epoch_batches(restored, 30) == rest
    assert done  # (the first 7 batches were consumed before the "checkpoint")


def test_a_negative_length_window_is_refused_at_load_naming_the_key():
    with pytest.raises(DistillError, match=r"data\.length_window: must be >= 0, got -1"):
        load_config(None, ["data.length_window=-1"])
