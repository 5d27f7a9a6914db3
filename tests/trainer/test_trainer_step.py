"""The per-rank loss pieces (trainer/step.py) and the trainer's option checks, without Ray."""

from __future__ import annotations

import pytest
import torch

from distill_ray.batch import RolloutBatch
from distill_ray.config import Config, from_dict, to_dict
from distill_ray.errors import DistillError
from distill_ray.losses.divergences import DivergenceSpec, divergence
from distill_ray.models.build import ModelShape, build_causal_lm
from distill_ray.models.online import attach_online_module
from distill_ray.trainer.deepspeed_config import micro_batch_rows, student_deepspeed_config, teacher_deepspeed_config
from distill_ray.trainer.group import merge_rank_metrics
from distill_ray.trainer.options import RankOptions, teacher_mode
from distill_ray.rollout.weights import weights_digest
from distill_ray.trainer.step import (
    LossSpec,
    ModelOutput,
    ResponseTargets,
    micro_batch_loss,
    micro_batches,
    response_output,
    student_loss,
    trim_padding,
)

VOCAB = 48


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    student = build_causal_lm("llama", ModelShape(32, 1, 1, 64), VOCAB, seed=1)
    teacher = build_causal_lm("llama", ModelShape(32, 2, 1, 64), VOCAB, seed=2)
    return student.eval(), teacher.eval()


def make_batch(policy_version: int = -1, seed: int = 0) -> RolloutBatch:
    """Six rows with ragged prompts (left-padded) and responses (right-padded), one response empty."""
    g = torch.Generator().manual_seed(seed)
    prompt_lens, response_lens = [3, 5, 2, 4, 5, 1], [4, 2, 6, 0, 3, 5]

    def ids(n):
        return torch.randint(3, VOCAB, (n,), generator=g).tolist()

    prompts, responses = [ids(n) for n in prompt_lens], [ids(n) for n in response_lens]
    return RolloutBatch.from_lists(
        prompts, responses, [[0.0] * n for n in response_lens], list(range(6)), policy_version=policy_version
    )


def spec(method="kd", divergence="forward_kl", module_divergence="reverse_kl", **kw) -> LossSpec:
    """A LossSpec with this module's defaults (chunk size 5) and the divergences named by kind."""
    return LossSpec(method=method, divergence=DivergenceSpec(kind=divergence), chunk_size=5,
                    module_divergence=DivergenceSpec(kind=module_divergence), **kw)


def reference_response_logits(model, batch: RolloutBatch) -> torch.Tensor:
    """logits[:, P-1 : P-1+R] of a plain full forward: what response_output must give."""
    P, R = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    return model(**batch.model_inputs()).logits[:, P - 1 : P - 1 + R]


# ---------------------------------------------------------------------- targets and forward


def test_targets_mark_padding_and_dataset_rows():
    batch = make_batch()
    targets = ResponseTargets.from_batch(batch)
    assert targets.tokens == 20 and targets.from_dataset
    assert (targets.labels[~targets.mask] == -100).all()
    assert torch.equal(targets.labels[targets.mask], batch.response_ids[batch.response_mask])
    assert not ResponseTargets.from_batch(make_batch(policy_version=3)).from_dataset


def test_response_output_matches_a_full_forward(models):
    student, _ = models
    batch = make_batch()
    with torch.no_grad():
        got = response_output(student, batch).logits
        want = reference_response_logits(student, batch)
    mask = batch.response_mask
    torch.testing.assert_close(got[mask], want[mask], rtol=1e-5, atol=1e-5)


def test_trimmed_micro_batches_give_the_same_logits(models):
    """A shard trimmed to its own longest prompt/response scores every real token the same."""
    student, _ = models
    batch = make_batch()
    pieces = micro_batches(batch, 3)
    assert [len(p) for p in pieces] == [2, 2, 2]
    with torch.no_grad():
        full = reference_response_logits(student, batch)
        for i, piece in enumerate(pieces):
            assert piece.prompt_ids.shape[1] <= batch.prompt_ids.shape[1]
            assert piece.response_ids.shape[1] <= batch.response_ids.shape[1]
            logits = response_output(student, piece).logits
            rows = full[2 * i : 2 * i + 2, : logits.shape[1]]
            torch.testing.assert_close(logits[piece.response_mask], rows[piece.response_mask], rtol=1e-5, atol=1e-5)


def test_trim_padding_keeps_one_prompt_column_and_one_response_column():
    row = make_batch().select([3])  # 4 prompt tokens in 5 columns, an empty response in 6 columns
    trimmed = trim_padding(row)
    assert trimmed.prompt_ids.shape[1] == 4 and trimmed.response_ids.shape[1] == 1
    assert trimmed.num_response_tokens == 0


def test_micro_batches_refuse_fewer_rows_than_micro_batches():
    with pytest.raises(DistillError, match="grad_accum"):
        micro_batches(make_batch().select([0, 1]), 3)


# ---------------------------------------------------------------------- losses per method


def test_sft_is_masked_cross_entropy(models):
    student, _ = models
    batch = make_batch()
    logits = reference_response_logits(student, batch)
    loss, metrics = student_loss(spec("sft"), ResponseTargets.from_batch(batch), ModelOutput(logits=logits))
    mask = batch.response_mask
    want = torch.nn.functional.cross_entropy(logits[mask], batch.response_ids[mask])
    torch.testing.assert_close(loss, want)
    assert metrics == {"loss/ce": pytest.approx(float(want.detach()))}


def test_kd_adds_ce_on_dataset_rows_only(models):
    student, teacher = models
    batch = make_batch()
    with torch.no_grad():
        s, t = reference_response_logits(student, batch), reference_response_logits(teacher, batch)
    mask = batch.response_mask
    d = divergence(t, s, mask, kind="forward_kl")
    ce = torch.nn.functional.cross_entropy(s[mask], batch.response_ids[mask])
    loss, metrics = student_loss(spec(ce_weight=0.5), ResponseTargets.from_batch(batch), ModelOutput(logits=s), ModelOutput(logits=t))
    torch.testing.assert_close(loss, d + 0.5 * ce)
    assert set(metrics) == {"loss/divergence", "loss/ce"}
    generated = ResponseTargets.from_batch(make_batch(policy_version=2))
    loss, metrics = student_loss(spec(ce_weight=0.5), generated, ModelOutput(logits=s), ModelOutput(logits=t))
    torch.testing.assert_close(loss, d)
    assert set(metrics) == {"loss/divergence"}


def test_sparse_teacher_topk_with_the_whole_vocabulary_equals_dense(models):
    student, teacher = models
    batch = make_batch(policy_version=0)
    with torch.no_grad():
        s, t = reference_response_logits(student, batch), reference_response_logits(teacher, batch)
    logp = torch.log_softmax(t, -1)
    top = logp.topk(VOCAB, -1)
    targets = ResponseTargets.from_batch(batch)
    sparse, _ = student_loss(spec(divergence="jsd"), targets, ModelOutput(logits=s), topk=(top.indices, top.values))
    dense, _ = student_loss(spec(divergence="jsd"), targets, ModelOutput(logits=s), ModelOutput(logits=t))
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)
    with pytest.raises(DistillError, match="teacher"):
        student_loss(spec(), targets, ModelOutput(logits=s))


@pytest.mark.parametrize("kind", ["forward_kl", "jsd"])
def test_chunked_student_loss_equals_dense_in_value_and_gradient(models, kind):
    student, teacher = models
    batch = make_batch()
    targets = ResponseTargets.from_batch(batch)
    sp = spec(divergence=kind, ce_weight=0.3)
    with torch.no_grad():
        t_dense = response_output(teacher, batch)
        t_chunk = response_output(teacher, batch, chunked=True)

    def loss_and_grads(chunked: bool):
        student.zero_grad()
        out = response_output(student, batch, chunked=chunked)
        loss, _ = student_loss(sp, targets, out, t_chunk if chunked else t_dense)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in student.parameters()]

    dense_loss, dense_grads = loss_and_grads(False)
    chunk_loss, chunk_grads = loss_and_grads(True)
    torch.testing.assert_close(chunk_loss, dense_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(chunk_grads, dense_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_okd_losses_reach_their_own_side_only_and_chunked_matches_dense():
    torch.manual_seed(0)
    student = build_causal_lm("llama", ModelShape(32, 1, 1, 64), VOCAB, seed=1)
    teacher = attach_online_module(build_causal_lm("llama", ModelShape(32, 2, 1, 64), VOCAB, seed=2), rank=4)
    with torch.no_grad():  # LoRA's B starts at 0; move it so the module changes the teacher
        for name, p in teacher.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    batch = make_batch()
    targets = ResponseTargets.from_batch(batch)
    sp = spec("okd", ce_weight=0.2, module_divergence="reverse_kl", module_beta=0.7)
    results = {}
    for chunked in (False, True):
        student.zero_grad()
        teacher.zero_grad()
        terms = micro_batch_loss(
            sp, targets, response_output(student, batch, chunked=chunked),
            response_output(teacher, batch, chunked=chunked), update_module=True,
        )
        terms.student.backward()
        # the student loss left the module untouched
        assert all(p.grad is None for p in teacher.parameters() if p.requires_grad)
        before = [p.grad.clone() for p in student.parameters()]
        terms.module.backward()
        # ... and the module loss left the student untouched
        assert all(torch.equal(a, p.grad) for a, p in zip(before, student.parameters()))
        module_grads = [p.grad.clone() for p in teacher.parameters() if p.requires_grad]
        assert all(g is not None for g in module_grads)
        results[chunked] = (terms.student.detach(), terms.module.detach(), before, module_grads, terms.metrics)
    for a, b in zip(results[False][:2], results[True][:2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(results[False][2] + results[False][3], results[True][2] + results[True][3]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert "loss/module" in results[False][4]


def test_token_weighted_micro_batches_add_up_to_the_full_batch_loss(models):
    """What a rank does: sum over micro-batches of (their tokens / step tokens) * their mean loss."""
    student, teacher = models
    batch = make_batch()
    sp = spec(ce_weight=0.1)
    total_tokens = batch.num_response_tokens
    with torch.no_grad():
        full, _ = student_loss(sp, ResponseTargets.from_batch(batch), response_output(student, batch), response_output(teacher, batch))
        summed = 0.0
        for piece in micro_batches(batch, 3):
            targets = ResponseTargets.from_batch(piece)
            loss, _ = student_loss(sp, targets, response_output(student, piece), response_output(teacher, piece))
            summed += float(loss) * targets.tokens / total_tokens
    assert summed == pytest.approx(float(full), rel=1e-5)


# ---------------------------------------------------------------------- options and configs


def test_teacher_mode_and_chunked_loss_options():
    cfg = Config()
    assert teacher_mode(cfg) == "replicated"
    cfg.method.name = "sft"
    assert teacher_mode(cfg) == "none"  # its loss does not use a teacher: none is loaded
    cfg.method.name = "kd"
    cfg.trainer.teacher_mode = "remote"
    assert RankOptions.from_config(cfg) == RankOptions(teacher_mode="remote", chunked_loss=False)
    cfg.trainer.teacher_mode = "replicated"
    cfg.loss.chunked = True
    assert RankOptions.from_config(cfg).chunked_loss
    cfg.method.name = "sft"
    assert not RankOptions.from_config(cfg).chunked_loss  # nothing to chunk without a teacher


@pytest.mark.parametrize("changes, says", [
    ({"method.name": "okd", "trainer.teacher_mode": "zero3"}, "trainer.teacher_mode: okd trains an online module"),
    ({"trainer.teacher_mode": "elsewhere"}, "trainer.teacher_mode: expected one of"),
    ({"loss.chunked": True, "trainer.zero_stage": 3}, "loss.chunked: needs whole output layers"),
    ({"loss.chunked": True, "trainer.teacher_mode": "zero3"}, "loss.chunked: needs whole output layers"),
])
def test_the_trainer_options_rules_are_checked_at_config_load_not_by_the_resolvers(changes, says):
    """Each rule once, at load (config.validate; from_dict is what a rank and the driver use)."""
    values = to_dict(Config())
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        values[section][key] = value
    with pytest.raises(DistillError, match=says):
        from_dict(values)


def test_student_deepspeed_config_follows_the_trainer_config():
    cfg = Config().trainer
    cfg.batch_size, cfg.grad_accum, cfg.zero_stage, cfg.grad_clip = 16, 2, 3, 0.5
    ds = student_deepspeed_config(cfg, world_size=4, precision="bfloat16", on_gpu=True)
    assert micro_batch_rows(cfg, 4) == 2
    assert ds["train_batch_size"] == 16 and ds["gradient_accumulation_steps"] == 2
    assert ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["zero_optimization"]["stage"] == 3 and ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["optimizer"]["params"]["torch_adam"]
    cpu = student_deepspeed_config(cfg, world_size=2, precision="float32", on_gpu=False)
    assert not cpu["bf16"]["enabled"] and cpu["zero_optimization"]["overlap_comm"] is False
    teacher = teacher_deepspeed_config(world_size=2, precision="bfloat16", offload_to_cpu=True)
    assert teacher["zero_optimization"]["stage"] == 3
    assert teacher["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert "optimizer" not in teacher


def test_merge_rank_metrics_adds_shares_and_takes_the_slowest_rank():
    ranks = [
        {"loss": 0.25, "loss/divergence": 0.25, "tokens": 10.0, "timing/rank_step": 2.0, "lr": 0.1, "grad_norm": 3.0},
        {"loss": 0.5, "loss/divergence": 0.5, "tokens": 30.0, "timing/rank_step": 4.0, "lr": 0.1, "grad_norm": 3.0},
    ]
    merged = merge_rank_metrics(ranks)
    assert merged["loss"] == 0.75 and merged["loss/divergence"] == 0.75 and merged["tokens"] == 40.0
    assert merged["timing/rank_step"] == 4.0 and merged["tokens_per_s"] == 10.0
    assert merged["lr"] == 0.1 and merged["grad_norm"] == 3.0


def test_weights_digest_sees_values_not_objects(models):
    student, _ = models
    named = list(student.named_parameters())
    assert weights_digest(named) == weights_digest([(n, p.clone()) for n, p in reversed(named)])
    changed = [(n, p + (i == 0)) for i, (n, p) in enumerate(named)]
    assert weights_digest(changed) != weights_digest(named)
