"""evaluate_model scores predictions against the dataset's own text, not against what the
tokenizer makes of it: a reference the tokenizer cannot write ('APPLE' with the local BPE, whose
<unk> tokens decode to nothing) never matches an empty prediction."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from distill_ray.config import DataConfig
from distill_ray.data.encoding import decode_text, normal_form
from distill_ray.data.prepare import prepare_split
from distill_ray.eval.evaluate import evaluate_model
from distill_ray.eval.scores import Scored, exact_match
from distill_ray.models.build import ModelShape, build_causal_lm
from distill_ray.models.tokenizer import load_tokenizer

ROWS = [
    {"prompt": "count to 3", "response": "0 1 2"},
    {"prompt": "name a fruit", "response": "APPLE"},  # no uppercase A, P, L, E, M in the local BPE
    {"prompt": "count to 2", "response": "0 1"},
    {"prompt": "name a thing", "response": "LAMP"},
]


def ends_at_once(tokenizer):
    """A real Llama whose weights make EOS the greedy choice at every position: the layers add
    nothing to the residual stream, dimension 0 of every embedding is 1, and only EOS reads it."""
    model = build_causal_lm("llama", ModelShape(16, 1, 2, 32, max_position_embeddings=128), len(tokenizer),
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[tokenizer.eos_token_id, 0] = 1.0
    return model.eval()


def test_empty_predictions_do_not_match_references_the_tokenizer_cannot_write(tiny_local, tmp_path):
    tokenizer = load_tokenizer(tiny_local["tokenizer"])
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    rows, report = prepare_split(DataConfig(unrepresentable="keep"), tokenizer, str(path), shuffle=False)
    assert len(rows) == 4 and report.unrepresentable == 2

    result = evaluate_model(ends_at_once(tokenizer), tokenizer, rows, max_new_tokens=4)
    assert result["overall"]["mean_length"] == 0 and result["generated_tokens"] == 0  # every prediction is ''
    assert result["overall"]["hit_cap"] == 0.0  # every one stopped at EOS
    assert [e["prediction"] for e in result["examples"]] == ["", "", "", ""]
    # before the fix the references were decode(encode(text)): 'APPLE' -> '', an exact match of ''
    assert [e["reference"] for e in result["examples"]] == [r["response"] for r in ROWS]
    assert result["overall"]["exact_match"] == 0.0 and result["overall"]["rouge_l"] == 0.0

    # the tokenized references themselves show what was wrong: '0 1 2' survives, 'APPLE' does not
    form = partial(normal_form, tokenizer)
    survives = [exact_match(decode_text(tokenizer, r.response_ids[:-1]), r.reference, form) for r in rows]
    assert survives == [1.0, 0.0, 1.0, 0.0]


def test_exact_match_compares_the_tokenizers_normal_form(tiny_local):
    """The local BPE normalises NFKC: a model can only write '12' for the dataset's full-width
    '１２', and that is a match; a different text is not."""
    tokenizer = load_tokenizer(tiny_local["tokenizer"])
    form = partial(normal_form, tokenizer)
    assert Scored("12  3", "１２ 3", 2, 2, form=form).em == 1.0
    assert Scored("12 4", "１２ 3", 2, 2, form=form).em == 0.0
    assert Scored("12 3", "１２ 3", 2, 2).em == 0.0  # whitespace only: the default form


@pytest.mark.parametrize("mode", ["skip", "keep"])
def test_skipped_rows_are_not_evaluated_and_kept_ones_are_scored_on_their_text(tiny_local, tmp_path, mode):
    tokenizer = load_tokenizer(tiny_local["tokenizer"])
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    rows, report = prepare_split(DataConfig(unrepresentable=mode), tokenizer, str(path), shuffle=False)
    result = evaluate_model(ends_at_once(tokenizer), tokenizer, rows, max_new_tokens=4)
    want = ["0 1 2", "0 1"] if mode == "skip" else [r["response"] for r in ROWS]
    assert [e["reference"] for e in result["examples"]] == want and result["overall"]["n"] == len(want)
    assert report.unrepresentable == 2


def test_responses_that_never_reach_eos_are_counted_as_cut_at_the_cap(tiny_local, tmp_path):
    tokenizer = load_tokenizer(tiny_local["tokenizer"])
    model = ends_at_once(tokenizer)
    with torch.no_grad():  # the greedy choice is now a plain token, never EOS
        model.lm_head.weight[tokenizer.eos_token_id, 0] = 0.0
        plain = max({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}) + 1
        model.lm_head.weight[plain, 0] = 1.0
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    rows, _ = prepare_split(DataConfig(unrepresentable="keep"), tokenizer, str(path), shuffle=False)
    result = evaluate_model(model, tokenizer, rows, max_new_tokens=4)
    assert result["overall"]["mean_length"] == 4 and result["overall"]["hit_cap"] == 1.0
