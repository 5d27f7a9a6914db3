import pytest
import torch

from distill_ray.data.encoding import (
    batches_by_length,
    collate_for_training,
    collate_prompts,
    encode_examples,
)
from distill_ray.data.loading import Example
from distill_ray.errors import DistillError
from distill_ray.models.tokenizer import train_tokenizer

TEMPLATE = "Instruction: {prompt}\nResponse:"


@pytest.fixture(scope="module")
def tokenizer():
    texts = [TEMPLATE.replace("{prompt}", f"count to {i}") for i in range(50)] + [" ".join(map(str, range(i))) for i in range(50)]
    return train_tokenizer(texts, vocab_size=300)


def test_loss_mask_covers_exactly_the_response(tokenizer):
    ex = [Example("count to 3", "0 1 2"), Example("count to 5", "0 1 2 3 4")]
    enc, report = encode_examples(ex, tokenizer, TEMPLATE, 64, 64)
    assert report.kept == 2
    for e in enc:
        assert e.prompt_ids[0] == tokenizer.bos_token_id and e.response_ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(e.response_ids[:-1]) == ex[e.index].response  # separate tokenization round-trips
    batch = collate_for_training(enc, tokenizer.pad_token_id)
    for b, e in enumerate(enc):
        # loss positions t predict input_ids[t + 1]; those targets are exactly the response ids
        positions = batch["loss_mask"][b].nonzero().flatten()
        targets = batch["input_ids"][b, positions + 1].tolist()
        assert targets == e.response_ids
        assert int(batch["attention_mask"][b].sum()) == len(e.prompt_ids) + len(e.response_ids)


def test_length_filter_counts_and_truncation(tokenizer):
    ex = [Example("count to 3", "0 1 2"), Example("count to 40", " ".join(map(str, range(40))))]
    enc, report = encode_examples(ex, tokenizer, TEMPLATE, 64, 10, too_long="skip")
    assert (report.kept, report.skipped_response) == (1, 1)
    enc, report = encode_examples(ex, tokenizer, TEMPLATE, 64, 10, too_long="truncate")
    assert (report.kept, report.truncated) == (2, 1)
    assert len(enc[1].response_ids) == 10 and enc[1].response_ids[-1] == tokenizer.eos_token_id
    with pytest.raises(DistillError, match="no rows left after length filtering"):
        encode_examples(ex, tokenizer, TEMPLATE, 2, 64, too_long="skip")


@pytest.mark.parametrize("text, why", [
    ("0 1 2", None),
    ("0  1\n2", None),  # whitespace: exact match collapses it too
    ("１２ ３", None),  # full-width digits: the tokenizer's own NFKC makes them "12 3", which it can write
    ("0 1 X", "'0 1 X' decodes to '0 1 ', 1 <unk> token(s)"),  # no X in the vocabulary
    ("0 1 </s> 2", "'0 1 </s> 2' decodes to '0 1  2'"),  # a literal EOS would end the response early
])
def test_unrepresentable_text_is_named_and_normalisation_is_not(tokenizer, text, why):
    from distill_ray.data.encoding import unrepresentable_text

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert unrepresentable_text(tokenizer, text, ids) == why


def test_unrepresentable_rows_stop_are_skipped_or_kept_and_counted(tokenizer):
    ex = [Example("count to 3", "0 1 2"), Example("count to X", "0 1"), Example("count to 2", "0 1 Y Z"),
          Example("count to 1", "0")]
    with pytest.raises(DistillError) as info:
        encode_examples(ex, tokenizer, TEMPLATE, 64, 64)  # "error" by default, as data.unrepresentable
    assert str(info.value) == ("row 1: the tokenizer cannot represent the prompt: 'count to X' decodes to "
                               "'count to ', 1 <unk> token(s); set data.unrepresentable=skip or keep to go on")
    enc, report = encode_examples(ex, tokenizer, TEMPLATE, 64, 64, unrepresentable="skip")
    assert [e.index for e in enc] == [0, 3] and (report.kept, report.unrepresentable, report.unk_tokens) == (2, 2, 0)
    assert "skipped 2 row(s) the tokenizer cannot represent (first: row 1: " in str(report)
    enc, report = encode_examples(ex, tokenizer, TEMPLATE, 64, 64, unrepresentable="keep")
    assert [e.reference for e in enc] == [e.response for e in ex]  # what eval scores against
    assert (report.kept, report.unrepresentable, report.unk_tokens) == (4, 2, 3)
    assert "2 kept row(s) the tokenizer cannot represent (3 <unk> token(s); first: row 1: " in str(report)
    with pytest.raises(DistillError, match="data.unrepresentable: expected one of"):
        encode_examples(ex, tokenizer, TEMPLATE, 64, 64, unrepresentable="drop")


def test_template_must_have_placeholder(tokenizer):
    with pytest.raises(DistillError, match="data.template: must contain"):
        encode_examples([Example("a", "b")], tokenizer, "no placeholder", 64, 64)


def test_left_padded_prompts_and_length_batches():
    batch = collate_prompts([[5, 6, 7], [8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    from distill_ray.data.encoding import Encoded

    enc = [Encoded([1] * n, [2], i) for i, n in enumerate([5, 1, 9, 3, 7, 2])]
    a, b = batches_by_length(enc, 2, seed=1), batches_by_length(enc, 2, seed=1)
    assert [[e.index for e in x] for x in a] == [[e.index for e in x] for x in b]
    assert sorted(e.index for x in a for e in x) == list(range(6))
    for x in a:  # similar lengths together
        assert abs(len(x[0].prompt_ids) - len(x[1].prompt_ids)) <= 2


def test_windowed_length_batches_mix_the_whole_distribution():
    from distill_ray.data.encoding import Encoded

    # two length populations: with a global sort every batch is pure; with a window of 4
    # batches most batches still are similar in length, but short and long rows alternate in
    # the order of steps instead of sitting in one region of the sorted data
    enc = [Encoded([1] * (3 if i % 2 else 40), [2], i) for i in range(64)]
    windowed = batches_by_length(enc, 4, seed=0, window=4)
    assert windowed == batches_by_length(enc, 4, seed=0, window=4)  # deterministic
    assert sorted(e.index for x in windowed for e in x) == list(range(64))  # each row once
    spread = [max(len(e.prompt_ids) for e in x) - min(len(e.prompt_ids) for e in x) for x in windowed]
    assert sum(s == 0 for s in spread) >= len(windowed) - 4  # at most one mixed batch per window
    assert windowed != batches_by_length(enc, 4, seed=1, window=4)
    with pytest.raises(ValueError, match="window"):
        batches_by_length(enc, 4, seed=0, window=0)
