"""Pruned students (models/prune.py) on tiny random Llama and Qwen2 models: the blocks kept, the
forward pass of the pruned model against the same blocks run by hand, MLP width slicing, and the
saved directory reloading in transformers. The real SmolLM2 pair is in test_real.py."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from distill_ray.errors import DistillError
from distill_ray.models.build import ModelShape, build_causal_lm, count_parameters
from distill_ray.models.prune import MANIFEST, choose_blocks, measure, prune, prune_depth, prune_mlp
from distill_ray.models.tokenizer import train_tokenizer

SHAPE = ModelShape(32, 6, 2, 64, max_position_embeddings=128)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([f"word{i} and word{i + 1} or more text {i}" for i in range(200)], vocab_size=300)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def source(request, tmp_path_factory, tokenizer):
    model = build_causal_lm(request.param, SHAPE, len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, seed=3)
    path = tmp_path_factory.mktemp(f"src-{request.param}")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_choose_blocks_keeps_first_last_and_the_most_influential():
    scores = [0.9, 0.1, 0.5, 0.05, 0.7, 0.2, 0.3, 0.8]
    assert choose_blocks(scores, 4) == [0, 2, 4, 7]  # 0 and 7 always; then 0.7 (4), 0.5 (2)
    assert choose_blocks(scores, 2) == [0, 7]
    assert choose_blocks(scores, 8) == list(range(8))
    assert choose_blocks(scores, 3, "even") == [0, 4, 7]  # round(3.5) = 4 (banker's rounding)
    assert choose_blocks(scores, 4, "even") == [0, 2, 5, 7]
    for bad in (1, 9):
        with pytest.raises(DistillError, match="--layers"):
            choose_blocks(scores, bad)
    with pytest.raises(DistillError, match="--method"):
        choose_blocks(scores, 4, "random")


def test_block_influence_is_one_minus_cosine_of_each_block(source, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(source)
    text = "word3 and word4 or more text 3"
    scores, activity = measure(model, tokenizer, [text])
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    # hidden_states[i] enters block i; the last entry is after the final norm, so the last block is left out
    for i in range(SHAPE.num_layers - 1):
        cos = torch.nn.functional.cosine_similarity(hidden[i].double(), hidden[i + 1].double(), dim=-1)
        assert scores[i] == pytest.approx(float((1 - cos).mean()), abs=1e-9)
    assert len(activity) == SHAPE.num_layers and all(a.shape == (SHAPE.intermediate_size,) for a in activity)
    assert all(float(a.min()) >= 0 for a in activity)


def _run_blocks(model, ids, keep):
    """The logits of `model` with only the blocks `keep`, computed through the unpruned model's own
    modules (so an error in prune_depth cannot hide in both sides)."""
    from transformers.masking_utils import create_causal_mask

    inner = model.model
    h = inner.embed_tokens(ids)
    pos = torch.arange(ids.shape[1])[None]
    mask = create_causal_mask(config=model.config, inputs_embeds=h, attention_mask=torch.ones_like(ids),
                              past_key_values=None, position_ids=pos)
    rope = inner.rotary_emb(h, pos)
    for i in keep:
        h = inner.layers[i](h, attention_mask=mask, position_ids=pos, position_embeddings=rope)
        h = h[0] if isinstance(h, tuple) else h
    return model.lm_head(inner.norm(h))


def test_pruned_model_runs_the_kept_blocks_in_order(source, tokenizer):
    full = AutoModelForCausalLM.from_pretrained(source).eval()
    keep = [0, 2, 5]
    ids = tokenizer("word7 and word8 or more", add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = _run_blocks(full, ids, keep)
        pruned = AutoModelForCausalLM.from_pretrained(source).eval()
        prune_depth(pruned, keep)
        got = pruned(input_ids=ids).logits
        # generation with a KV cache uses the renumbered layer slots
        out = pruned.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        again = pruned.generate(ids, max_new_tokens=5, do_sample=False, use_cache=False, pad_token_id=tokenizer.pad_token_id)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert pruned.config.num_hidden_layers == 3 and len(pruned.model.layers) == 3
    assert torch.equal(out, again)


def test_mlp_width_keeps_the_most_active_channels(source, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(source).eval()
    layer = model.model.layers[1].mlp
    imp = torch.zeros(SHAPE.intermediate_size)
    chosen = [3, 10, 40, 63]
    imp[chosen] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    x = torch.randn(2, 5, SHAPE.hidden_size)
    with torch.no_grad():
        act = layer.act_fn(layer.gate_proj(x)) * layer.up_proj(x)
        expected = act[..., chosen] @ layer.down_proj.weight[:, chosen].T  # the MLP restricted to the chosen channels
    prune_mlp(model, 4, [imp] * SHAPE.num_layers)
    with torch.no_grad():
        got = model.model.layers[1].mlp(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert model.config.intermediate_size == 4 and model.model.layers[1].mlp.down_proj.in_features == 4
    with pytest.raises(DistillError, match="--mlp-width"):
        prune_mlp(model, 5, [imp] * SHAPE.num_layers)


def test_prune_saves_a_directory_transformers_loads(source, tmp_path, capsys):
    out = tmp_path / "student"
    manifest = prune(source, out, 3, mlp_width=48)
    student = AutoModelForCausalLM.from_pretrained(out)
    assert student.config.num_hidden_layers == 3 and student.config.intermediate_size == 48
    assert manifest["kept_blocks"][0] == 0 and manifest["kept_blocks"][-1] == SHAPE.num_layers - 1
    assert manifest["parameters"] == count_parameters(student) < manifest["parameters_before"]
    assert json.loads((out / MANIFEST).read_text())["kept_blocks"] == manifest["kept_blocks"]
    assert (out / "tokenizer.json").is_file()
    assert "kept blocks" in capsys.readouterr().out
    with pytest.raises(DistillError, match="already exists"):
        prune(source, out, 3)
    assert not (tmp_path / "student.pruning").exists()


def test_prune_refuses_bad_input_before_loading(source, tmp_path):
    with pytest.raises(DistillError, match="--from: no model directory"):
        prune(tmp_path / "missing", tmp_path / "x", 2)
    with pytest.raises(DistillError, match="out of range"):
        prune(source, tmp_path / "x", 7)
    bad = tmp_path / "cal.jsonl"
    bad.write_text('{"prompt": "a"}\nnot json\n')
    with pytest.raises(DistillError, match=r"cal.jsonl:2"):
        prune(source, tmp_path / "x", 2, calibration=str(bad))
    assert not (tmp_path / "x").exists()
