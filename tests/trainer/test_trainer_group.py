"""TrainerGroup on the session's local Ray: 2 CPU ranks (gloo), DeepSpeed ZeRO-2 and ZeRO-3, tiny models.

Each module-scoped fixture builds a group once, runs a short scenario, records what it saw and
shuts the group down; the tests then check the records. Ranks use one CPU (one thread) each.
"""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch

from distill_ray.batch import RolloutBatch
from distill_ray.config import Config
from distill_ray.data.prepare import prepare_split
from distill_ray.errors import DistillError
from distill_ray.models.build import load_causal_lm
from distill_ray.models.tokenizer import load_tokenizer
from distill_ray.pipeline.sources import dataset_batch
from distill_ray.rollout.weights import bytes_to_state_dict
from distill_ray.trainer.group import TrainerGroup
from distill_ray.rollout.weights import weights_digest
from distill_ray.trainer.step import LossSpec, ResponseTargets, response_output, student_loss

pytestmark = pytest.mark.slow

STEPS = 3


def make_cfg(local: dict, *, method: str, zero_stage: int, **trainer) -> Config:
    cfg = Config()
    cfg.model.teacher, cfg.model.student, cfg.model.tokenizer = local["teacher"], local["student"], local["tokenizer"]
    cfg.method.name = method
    t = cfg.trainer
    t.num_workers, t.num_cpus_per_worker, t.zero_stage = 2, 1.0, zero_stage
    t.batch_size, t.grad_accum = 8, 2
    t.lr, t.warmup_steps, t.lr_schedule, t.max_steps = 5e-3, 0, "constant", 100
    cfg.method.okd.lr = 5e-3
    for key, value in trainer.items():
        setattr(t, key, value)
    return cfg


@pytest.fixture(scope="module")
def fixed_batch(tiny_local) -> RolloutBatch:
    """Eight dataset rows, the same batch every step (the loss on it must fall)."""
    cfg = Config()
    tokenizer = load_tokenizer(tiny_local["tokenizer"])
    rows, _ = prepare_split(cfg.data, tokenizer, f"{tiny_local['data']}/train.jsonl", shuffle=False, max_rows=8)
    return dataset_batch(rows, tokenizer.pad_token_id)


def with_teacher_topk(batch: RolloutBatch, teacher_dir: str, k: int = 16) -> RolloutBatch:
    """The batch as a TeacherScorer would send it: "generated" (version 0), teacher top-k attached."""
    teacher = load_causal_lm(teacher_dir).eval()
    with torch.no_grad():
        logp = torch.log_softmax(response_output(teacher, batch).logits, -1)  # [B, R, V]
    top = logp.topk(k, -1)
    pad = ~batch.response_mask.unsqueeze(-1)
    return dataclasses.replace(
        batch, policy_version=0,
        teacher_topk_ids=top.indices.masked_fill(pad, 0), teacher_topk_logprobs=top.values.masked_fill(pad, 0.0),
    )


def reference_first_step(cfg: Config, batch: RolloutBatch) -> tuple[float, float]:
    """Loss and gradient norm of the first step computed in this process on the whole batch."""
    student, teacher = load_causal_lm(cfg.model.student), load_causal_lm(cfg.model.teacher).eval()
    spec = LossSpec.from_config(cfg)
    with torch.no_grad():
        t_out = response_output(teacher, batch) if spec.uses_teacher else None
    loss, _ = student_loss(spec, ResponseTargets.from_batch(batch), response_output(student, batch), t_out)
    loss.backward()
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in student.parameters()))
    return float(loss.detach()), float(norm)


def fresh_student_from(blob: bytes, student_dir: str) -> torch.nn.Module:
    model = load_causal_lm(student_dir)
    model.load_state_dict(bytes_to_state_dict(blob), strict=True)
    return model.eval()


def logits_of(model, batch: RolloutBatch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch.model_inputs()).logits


def run_steps(group: TrainerGroup, batch: RolloutBatch, n: int) -> list[dict]:
    return [group.train_step(batch) for _ in range(n)]


def checkpoint_then_continue(group: TrainerGroup, batch: RolloutBatch, directory, rec: dict) -> None:
    """Save, then take 2 more steps: the uninterrupted reference a resumed group must reproduce."""
    group.save_checkpoint(str(directory), {"step": STEPS})
    rec["uninterrupted"] = run_steps(group, batch, 2)


def resume(cfg: Config, batch: RolloutBatch, directory, rec: dict) -> TrainerGroup:
    """A fresh group (new processes, new process group) loads the checkpoint and takes 2 steps."""
    group = TrainerGroup(cfg)
    try:
        rec["client_state"] = group.load_checkpoint(str(directory))
        rec["resumed_fingerprints"] = group.fingerprints()
        rec["resumed"] = run_steps(group, batch, 2)
    except BaseException:
        group.shutdown()
        raise
    return group


def assert_resumed_like_uninterrupted(rec: dict, keys=("loss",)) -> None:
    assert rec["resumed_fingerprints"][0]["student"] == rec["trained"][0]["student"]
    # the second step after resuming also depends on the restored Adam moments
    for got, want in zip(rec["resumed"], rec["uninterrupted"]):
        for key in keys:
            assert got[key] == pytest.approx(want[key], abs=1e-5), key


# ====================================================================== ZeRO-2, kd, checkpoint/resume


@pytest.fixture(scope="module")
def zero2_kd(ray_local, tiny_local, fixed_batch, tmp_path_factory):
    cfg = make_cfg(tiny_local, method="kd", zero_stage=2)
    out = tmp_path_factory.mktemp("zero2_kd")
    client = {"step": STEPS, "position": {"epoch": 0, "offset": 24}, "lambda_rng": random.Random(7).getstate()}
    rec: dict = {"cfg": cfg, "out": out, "client": client}
    group = TrainerGroup(cfg)
    try:
        rec["reports"], rec["initial"] = group.reports, group.fingerprints()
        rec["metrics"] = run_steps(group, fixed_batch, STEPS)
        rec["trained"] = group.fingerprints()
        rec["blob"] = group.student_state_safetensors()
        rec["export"] = group.export_student(str(out / "student"))
        group.save_checkpoint(str(out / "ckpt"), client)
        rec["uninterrupted"] = run_steps(group, fixed_batch, 2)
    finally:
        group.shutdown()
    group = resume(cfg, fixed_batch, out / "ckpt", rec)
    try:
        rec["sparse"] = run_steps(group, with_teacher_topk(fixed_batch, cfg.model.teacher), 2)
        rec["after_sparse"] = group.fingerprints()
    finally:
        group.shutdown()
    return rec


def test_zero2_kd_loss_falls_and_metrics_are_complete(zero2_kd):
    losses = [m["loss"] for m in zero2_kd["metrics"]]
    assert losses[-1] < losses[0] * 0.8, losses
    first = zero2_kd["metrics"][0]
    for key in ("loss", "loss/divergence", "grad_norm", "lr", "tokens", "tokens_per_s", "step", "timing/teacher_forward",
                "timing/student_forward_backward", "timing/optimizer", "timing/train_step"):
        assert key in first, key
    assert first["lr"] == pytest.approx(5e-3) and first["step"] == 1.0
    assert [r.teacher for r in zero2_kd["reports"]] == ["replicated", "replicated"]


def test_two_ranks_with_accumulation_equal_one_process_on_the_whole_batch(zero2_kd, fixed_batch):
    """Token-weighted shares over 2 ranks x 2 micro-batches give the single-process loss and gradient."""
    loss, grad_norm = reference_first_step(zero2_kd["cfg"], fixed_batch)
    first = zero2_kd["metrics"][0]
    assert first["loss"] == pytest.approx(loss, rel=1e-5)
    assert first["grad_norm"] == pytest.approx(grad_norm, rel=1e-4)
    assert first["tokens"] == fixed_batch.num_response_tokens


def test_zero2_ranks_hold_identical_student_weights(zero2_kd):
    initial, trained = zero2_kd["initial"], zero2_kd["trained"]
    assert trained[0]["student"] == trained[1]["student"] != initial[0]["student"]
    assert trained[0]["teacher_base"] == initial[0]["teacher_base"]  # the frozen teacher stayed frozen


def test_student_safetensors_round_trip_and_export_load_in_transformers(zero2_kd, fixed_batch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = zero2_kd["cfg"]
    fresh = fresh_student_from(zero2_kd["blob"], cfg.model.student)
    assert weights_digest(fresh.named_parameters()) == zero2_kd["trained"][0]["student"]
    exported = AutoModelForCausalLM.from_pretrained(zero2_kd["export"]).eval()
    assert AutoTokenizer.from_pretrained(zero2_kd["export"]).pad_token_id is not None
    want = logits_of(fresh, fixed_batch)
    assert torch.equal(logits_of(exported, fixed_batch), want)
    assert not torch.allclose(logits_of(load_causal_lm(cfg.model.student), fixed_batch), want)  # it did train


def test_checkpoint_resume_continues_with_the_same_losses(zero2_kd):
    ckpt = zero2_kd["out"] / "ckpt"
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == STEPS
    assert sorted(p.name for p in (ckpt / "rng").iterdir()) == ["rank_0.pt", "rank_1.pt"]
    assert sorted(p.name for p in zero2_kd["out"].iterdir()) == ["ckpt", "student"]  # no staging dirs left
    assert zero2_kd["client_state"] == zero2_kd["client"]
    assert_resumed_like_uninterrupted(zero2_kd)


def test_a_batch_with_teacher_topk_uses_it_instead_of_the_local_teacher(zero2_kd):
    """(The loss falling on top-k batches is checked by the remote-teacher group, from fresh weights.)"""
    assert all(m["timing/teacher_forward"] == 0.0 for m in zero2_kd["sparse"])
    assert all(0.0 <= m["loss"] < 1.0 for m in zero2_kd["sparse"])
    after = zero2_kd["after_sparse"]
    assert after[0]["student"] == after[1]["student"] != zero2_kd["resumed_fingerprints"][0]["student"]


# ====================================================================== ZeRO-3 student, ZeRO-3 teacher


@pytest.fixture(scope="module")
def zero3_kd(ray_local, tiny_local, fixed_batch, tmp_path_factory):
    cfg = make_cfg(tiny_local, method="kd", zero_stage=3, teacher_mode="zero3")
    out = tmp_path_factory.mktemp("zero3_kd")
    rec: dict = {"cfg": cfg}
    group = TrainerGroup(cfg)
    try:
        rec["reports"], rec["initial"] = group.reports, group.fingerprints()
        rec["metrics"] = run_steps(group, fixed_batch, STEPS)
        rec["trained"] = group.fingerprints()
        rec["blob"] = group.student_state_safetensors()
        rec["export"] = group.export_student(str(out / "student"))
        checkpoint_then_continue(group, fixed_batch, out / "ckpt", rec)
    finally:
        group.shutdown()
    resume(cfg, fixed_batch, out / "ckpt", rec).shutdown()
    return rec


def test_zero3_kd_trains_with_partitioned_student_and_teacher(zero3_kd, fixed_batch):
    losses = [m["loss"] for m in zero3_kd["metrics"]]
    assert losses[-1] < losses[0] * 0.8, losses
    loss, grad_norm = reference_first_step(zero3_kd["cfg"], fixed_batch)
    assert losses[0] == pytest.approx(loss, rel=1e-5)
    assert zero3_kd["metrics"][0]["grad_norm"] == pytest.approx(grad_norm, rel=1e-4)
    for report in zero3_kd["reports"]:
        assert report.teacher == "zero3"
        assert report.teacher_local_parameters < 0.75 * report.teacher_parameters  # each rank holds about half


def test_zero3_ranks_agree_and_gathered_weights_round_trip(zero3_kd, fixed_batch):
    from transformers import AutoModelForCausalLM

    trained = zero3_kd["trained"]
    assert trained[0]["student"] == trained[1]["student"] != zero3_kd["initial"][0]["student"]
    assert trained[0]["teacher_base"] == zero3_kd["initial"][0]["teacher_base"]
    fresh = fresh_student_from(zero3_kd["blob"], zero3_kd["cfg"].model.student)
    assert weights_digest(fresh.named_parameters()) == trained[0]["student"]
    exported = AutoModelForCausalLM.from_pretrained(zero3_kd["export"]).eval()
    assert torch.equal(logits_of(exported, fixed_batch), logits_of(fresh, fixed_batch))


def test_zero3_checkpoint_resume_continues_with_the_same_losses(zero3_kd):
    assert zero3_kd["client_state"] == {"step": STEPS}
    assert_resumed_like_uninterrupted(zero3_kd)


# ====================================================================== OKD


@pytest.fixture(scope="module")
def okd_run(ray_local, tiny_local, fixed_batch, tmp_path_factory):
    """OKD with the chunked loss (student and module), checkpointed and resumed."""
    cfg = make_cfg(tiny_local, method="okd", zero_stage=2)
    cfg.loss.chunked = True
    out = tmp_path_factory.mktemp("okd")
    rec: dict = {}
    group = TrainerGroup(cfg)
    try:
        rec["reports"], rec["initial"] = group.reports, group.fingerprints()
        rec["metrics"] = run_steps(group, fixed_batch, STEPS)
        rec["trained"] = group.fingerprints()
        checkpoint_then_continue(group, fixed_batch, out / "ckpt", rec)
    finally:
        group.shutdown()
    group = resume(cfg, fixed_batch, out / "ckpt", rec)
    try:
        rec["resumed_trained"] = group.fingerprints()
    finally:
        group.shutdown()
    return rec


def test_okd_trains_the_module_and_the_student_and_freezes_the_teacher(okd_run):
    initial, trained = okd_run["initial"], okd_run["trained"]
    assert trained[0]["teacher_base"] == trained[1]["teacher_base"] == initial[0]["teacher_base"]  # bit for bit
    assert trained[0]["online_module"] == trained[1]["online_module"] != initial[0]["online_module"]
    assert initial[0]["online_module"] == initial[1]["online_module"]  # rank 0's initial adapter everywhere
    assert trained[0]["student"] == trained[1]["student"] != initial[0]["student"]
    module_losses = [m["loss/module"] for m in okd_run["metrics"]]
    assert module_losses[-1] < module_losses[0], module_losses
    assert all(r.online_module_parameters > 0 for r in okd_run["reports"])


def test_okd_chunked_first_step_equals_dense_kd(okd_run, zero2_kd):
    """At step 0 LoRA's B is zero, so the OKD teacher is the kd teacher: the chunked OKD loss and
    gradient through the DeepSpeed engine must equal the dense kd group's."""
    assert all(r.chunked_loss for r in okd_run["reports"])
    okd, kd = okd_run["metrics"][0], zero2_kd["metrics"][0]
    assert okd["loss"] == pytest.approx(kd["loss"], rel=1e-5)
    assert okd["grad_norm"] == pytest.approx(kd["grad_norm"], rel=1e-4)


def test_okd_checkpoint_restores_module_and_its_optimizer(okd_run):
    assert_resumed_like_uninterrupted(okd_run, keys=("loss", "loss/module"))
    assert okd_run["resumed_fingerprints"][0]["online_module"] == okd_run["trained"][0]["online_module"]
    assert okd_run["resumed_trained"][0]["online_module"] == okd_run["resumed_trained"][1]["online_module"]


# ====================================================================== no local teacher: remote top-k, sft


@pytest.fixture(scope="module")
def remote_teacher_run(ray_local, tiny_local, fixed_batch):
    cfg = make_cfg(tiny_local, method="sgo", zero_stage=2, teacher_mode="remote")
    scored = with_teacher_topk(fixed_batch, cfg.model.teacher)
    rec: dict = {}
    group = TrainerGroup(cfg)
    try:
        rec["reports"] = group.reports
        rec["metrics"] = run_steps(group, scored, STEPS)
        with pytest.raises(DistillError, match="top-k"):
            group.train_step(fixed_batch)  # no teacher on the ranks and none in the batch
        with pytest.raises(DistillError, match="rows"):
            group.train_step(scored.select([0, 1, 2]))  # fewer rows than 2 ranks x 2 micro-batches
        rec["raised"] = True
    finally:
        group.shutdown()
    return rec


def test_remote_teacher_mode_loads_no_teacher_and_trains_on_topk(remote_teacher_run):
    assert all(r.teacher == "remote" and r.teacher_parameters == 0 for r in remote_teacher_run["reports"])
    losses = [m["loss"] for m in remote_teacher_run["metrics"]]
    assert losses[-1] < losses[0], losses
    assert remote_teacher_run["raised"]


@pytest.fixture(scope="module")
def sft_run(ray_local, tiny_local, fixed_batch):
    cfg = make_cfg(tiny_local, method="sft", zero_stage=2, grad_accum=1, lr=2e-2, warmup_steps=2,
                   lr_schedule="cosine", max_steps=4)
    rec: dict = {"cfg": cfg}
    group = TrainerGroup(cfg)
    try:
        rec["reports"], rec["initial"] = group.reports, group.fingerprints()
        rec["metrics"] = run_steps(group, fixed_batch, 4)
        rec["trained"] = group.fingerprints()
    finally:
        group.shutdown()
    return rec


def test_sft_trains_without_a_teacher(sft_run, fixed_batch):
    assert all(r.teacher == "none" for r in sft_run["reports"])
    losses = [m["loss"] for m in sft_run["metrics"]]
    assert losses[-1] < losses[0], losses
    assert sft_run["metrics"][0]["loss"] == pytest.approx(sft_run["metrics"][0]["loss/ce"])
    assert sft_run["metrics"][0]["loss"] == pytest.approx(reference_first_step(sft_run["cfg"], fixed_batch)[0], rel=1e-5)
    trained = sft_run["trained"]
    assert trained[0]["student"] == trained[1]["student"] != sft_run["initial"][0]["student"]


def test_learning_rate_follows_the_schedule_inside_deepspeed(sft_run):
    """The rate DeepSpeed's optimizer holds at each step (read back from the engine) is lr_at's."""
    from distill_ray.trainer.optim import lr_at

    want = [lr_at(i, 2e-2, 2, 4, "cosine") for i in range(4)]
    assert [m["lr"] for m in sft_run["metrics"]] == pytest.approx(want)
    assert want[0] < want[1] and want[3] < want[2]  # warm-up, then decay


def test_deepspeed_shm_op_is_never_built_so_a_stale_build_lock_cannot_hang_a_rank(tmp_path):
    """DeepSpeed's init_distributed JIT-builds an op nothing here uses; a killed build leaves a
    lock file that made every later rank wait forever. With a stale lock in place, the op's
    build returns at once (in a subprocess, so a regression fails on the timeout, not by hanging)."""
    import os
    import subprocess
    import sys

    (tmp_path / "deepspeed_shm_comm").mkdir()
    (tmp_path / "deepspeed_shm_comm" / "lock").touch()
    code = ("from distill_ray.trainer.rank import never_build_deepspeed_shm_op\n"
            "never_build_deepspeed_shm_op()\n"
            "from deepspeed.comm.torch import build_shm_op\n"
            "print('op:', build_shm_op())\n")
    res = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)},
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "op: None" in res.stdout
    assert sorted(p.name for p in (tmp_path / "deepspeed_shm_comm").iterdir()) == ["lock"]  # nothing was built
