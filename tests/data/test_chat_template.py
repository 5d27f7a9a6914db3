"""Chat-templated prompts (data.chat_template): the user turn and the opened assistant turn as the
prompt, the response closed by the tokenizer's EOS, the loss on the assistant's tokens only. A
toy tokenizer with a ChatML template stands in here; test_real.py checks SmolLM2's own."""

from __future__ import annotations

import json

import pytest

from distill_ray.config import DataConfig
from distill_ray.data.encoding import ChatFormat, chat_format, chat_text, collate_for_training, encode_examples
from distill_ray.data.loading import Example
from distill_ray.data.prepare import prepare_split
from distill_ray.errors import DistillError
from distill_ray.models.tokenizer import train_tokenizer

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEMPLATE = "Instruction: {prompt}\nResponse:"


@pytest.fixture(scope="module")
def chat_tokenizer():
    tok = train_tokenizer([f"count to {i} then say {' '.join(map(str, range(i)))} system user assistant" for i in range(60)],
                          vocab_size=300)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    tok.chat_template = CHATML
    return tok


def test_auto_uses_the_template_only_when_the_tokenizer_has_one(chat_tokenizer):
    plain = train_tokenizer(["a b c"] * 10, vocab_size=100)
    assert chat_format(chat_tokenizer, "auto") == ChatFormat()
    assert chat_format(chat_tokenizer, "auto", "Be brief.") == ChatFormat("Be brief.")
    assert chat_format(chat_tokenizer, "none") is None
    assert chat_format(plain, "auto") is None
    with pytest.raises(DistillError, match="data.chat_template"):
        chat_format(chat_tokenizer, "always")


@pytest.mark.parametrize("system", [None, "count well"])
def test_prompt_plus_response_is_the_whole_rendered_exchange(chat_tokenizer, system):
    chat = ChatFormat(system)
    ex = [Example("count to 3", "0 1 2"), Example("count to 5", "0 1 2 3 4")]
    enc, _ = encode_examples(ex, chat_tokenizer, TEMPLATE, 64, 64, chat=chat)
    for e in enc:
        prompt, response = ex[e.index].prompt, ex[e.index].response
        assert e.prompt_ids == chat_tokenizer(chat_text(chat_tokenizer, chat, prompt), add_special_tokens=False)["input_ids"]
        # the response is its own tokens and the EOS that closes the turn (test_real checks, on SmolLM2's
        # byte-level BPE, that prompt + response is token for token the template's rendering of the exchange)
        assert chat_tokenizer.decode(e.response_ids[:-1]) == response
        assert e.response_ids[-1] == chat_tokenizer.eos_token_id == chat_tokenizer.convert_tokens_to_ids("<|im_end|>")
        text = chat_text(chat_tokenizer, chat, prompt)
        assert text.endswith("<|im_start|>assistant\n") and "Instruction:" not in text
        assert ("<|im_start|>system" in text) == (system is not None)
    batch = collate_for_training(enc, chat_tokenizer.pad_token_id)
    for b, e in enumerate(enc):  # loss targets: the assistant's tokens and the EOS that ends them, nothing else
        positions = batch["loss_mask"][b].nonzero().flatten()
        assert batch["input_ids"][b, positions + 1].tolist() == e.response_ids


def test_prepare_split_follows_data_chat_template(chat_tokenizer, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "count to 2", "response": "0 1"}) + "\n")
    chat_rows, _ = prepare_split(DataConfig(system_prompt="count well"), chat_tokenizer, str(path), shuffle=False)
    plain_rows, _ = prepare_split(DataConfig(chat_template="none"), chat_tokenizer, str(path), shuffle=False)
    def ids(text):
        return chat_tokenizer(text, add_special_tokens=False)["input_ids"]

    assert chat_rows[0].prompt_ids == ids("<|im_start|>system\ncount well<|im_end|>\n<|im_start|>user\ncount to 2<|im_end|>\n"
                                          "<|im_start|>assistant\n")
    assert plain_rows[0].prompt_ids == [chat_tokenizer.bos_token_id] + ids("Instruction: count to 2\nResponse:")
    assert chat_rows[0].response_ids == plain_rows[0].response_ids
