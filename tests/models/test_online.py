"""OKD's online module: size, frozen base, one OKD step, PEFT save/load round trip."""

from __future__ import annotations

import pytest
import torch

from distill_ray.errors import DistillError
from distill_ray.losses.divergences import divergence, masked_cross_entropy
from distill_ray.losses.okd import okd_module_loss
from distill_ray.models.build import ModelShape, build_causal_lm
from distill_ray.models.online import (
    attach_online_module,
    load_online_module,
    merged_layer_weights,
    online_module_parameters,
    online_module_report,
    save_online_module,
    should_update_module,
    top_block_indices,
)

TEACHER_SHAPE = ModelShape(hidden_size=256, num_layers=4, num_heads=8, intermediate_size=768)  # the quickstart teacher
STUDENT_SHAPE = ModelShape(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
VOCAB = 1024


def teacher(seed=0):
    return build_causal_lm("llama", TEACHER_SHAPE, vocab_size=VOCAB, seed=seed)


def trainable_names(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


def test_quickstart_teacher_module_is_under_one_percent():
    model = attach_online_module(teacher())
    report = online_module_report(model)
    # rank 8 on q/k/v/o (256 -> 256) of the top block (4 blocks, top quarter = 1): 4 * 8 * (256 + 256)
    assert report["trainable"] == 16384
    assert report["teacher"] == 3_934_464
    assert report["fraction"] < 0.01  # about 0.42%
    names = trainable_names(model)
    assert names and all(".layers.3.self_attn." in n and "lora_" in n for n in names)


def test_qwen2_half_billion_module_count_with_real_peft():
    """Qwen2-0.5B's shape, built on the meta device: real parameter counts, no memory, no download."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = attach_online_module(Qwen2ForCausalLM(config))
    report = online_module_report(model)
    # top 6 of 24 blocks; q, o: 896 -> 896; k, v: 896 -> 128 (2 kv heads of 64)
    assert report["trainable"] == 6 * 8 * (2 * (896 + 896) + 2 * (896 + 128)) == 270336
    assert report["teacher"] == 494_032_768
    assert report["fraction"] < 0.001  # about 0.055%


def test_module_is_configurable():
    model = attach_online_module(teacher(), rank=4, blocks=[0, 1], target_modules=("q_proj", "v_proj"))
    assert online_module_report(model)["trainable"] == 2 * 2 * 4 * (256 + 256)
    assert {n.split(".")[4] for n in trainable_names(model)} == {"0", "1"}
    assert top_block_indices(24, 0.25) == list(range(18, 24))
    assert top_block_indices(4, 0.01) == [3]
    with pytest.raises(DistillError, match="blocks"):
        attach_online_module(teacher(), blocks=[7])
    with pytest.raises(DistillError, match="online module"):
        attach_online_module(teacher(), target_modules=("no_such_proj",))


def test_fresh_module_leaves_the_teacher_unchanged():
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = teacher()(ids).logits
        adapted = attach_online_module(teacher())(ids).logits
    torch.testing.assert_close(adapted, base, atol=0, rtol=0)


def okd_steps(model, student, ids, steps):
    """Train student and online module together, as the OKD trainer does."""
    student_opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    module_opt = torch.optim.AdamW(online_module_parameters(model), lr=1e-2)
    labels = ids[:, 1:]
    mask = torch.ones_like(labels)
    for step in range(steps):
        t_logits = model(ids).logits[:, :-1]
        s_logits = student(ids).logits[:, :-1]
        # OKD's student loss is kd's: against the adapted teacher, detached
        student_loss = divergence(t_logits.detach(), s_logits, mask, kind="forward_kl") + 0.5 * masked_cross_entropy(s_logits, labels, mask)
        module_loss = okd_module_loss(t_logits, s_logits, labels, mask, kind="reverse_kl", module_weight=1.0)
        student_opt.zero_grad()
        module_opt.zero_grad()
        (student_loss + module_loss).backward()  # the module loss detaches the student itself
        student_opt.step()
        if should_update_module(step, 1):
            module_opt.step()


def test_okd_step_changes_only_the_module_and_the_student():
    model = attach_online_module(teacher())
    student = build_causal_lm("llama", STUDENT_SHAPE, vocab_size=VOCAB, seed=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    student_before = {n: p.detach().clone() for n, p in student.named_parameters()}
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    # two steps: LoRA's B starts at 0, so A only gets a gradient from the second step on
    okd_steps(model, student, ids, steps=2)
    for name, p in model.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == ("lora_" in name), name
    assert all(not torch.equal(p, student_before[n]) for n, p in student.named_parameters() if p.dim() > 1)


def test_save_and_load_give_identical_outputs(tmp_path):
    model = attach_online_module(teacher())
    student = build_causal_lm("llama", STUDENT_SHAPE, vocab_size=VOCAB, seed=1)
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(2))
    okd_steps(model, student, ids, steps=2)
    directory = save_online_module(model, tmp_path / "online_module")
    assert (directory / "adapter_config.json").exists() and (directory / "adapter_model.safetensors").exists()
    loaded = load_online_module(teacher(), directory)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        expected, got = model(ids).logits, loaded(ids).logits
        base = teacher()(ids).logits
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert not torch.equal(got, base)  # the trained module does change the teacher
    assert online_module_report(loaded)["trainable"] == 16384
    with pytest.raises(DistillError, match="no PEFT adapter"):
        load_online_module(teacher(), tmp_path / "missing")


def test_should_update_module():
    assert [should_update_module(s, 3) for s in range(7)] == [True, False, False, True, False, False, True]
    assert all(should_update_module(s, 1) for s in range(5))
    with pytest.raises(DistillError):
        should_update_module(0, 0)


def test_merged_layer_weights_make_a_plain_teacher_the_adapted_one():
    """What a rollout worker's plain teacher loads (okd + switch) generates as the adapted teacher."""
    adapted = attach_online_module(teacher(), rank=4)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)  # a trained module: B moved away from zero
    merged = merged_layer_weights(adapted)
    plain = teacher()
    assert merged and set(merged) <= set(plain.state_dict())
    result = plain.load_state_dict(merged, strict=False)
    assert not result.unexpected_keys
    ids = torch.randint(3, 100, (2, 12))
    with torch.no_grad():
        assert not torch.allclose(plain(ids).logits, teacher()(ids).logits, atol=1e-4)  # the module matters
        torch.testing.assert_close(plain(ids).logits, adapted(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
