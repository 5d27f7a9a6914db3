"""The distributed run (`pipeline.driver.run`) end to end on the session's local Ray cluster:
every method with 2 DeepSpeed trainer ranks (gloo, CPU) and rollout workers, ZeRO-2 and ZeRO-3,
the vLLM rollout backend, bounded staleness, checkpoint/resume, and the exported student.

Each run is made once per module (a fixture) and the tests check its records. Tiny models,
a few steps each: the point is that every path runs and does what it claims, not quality.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from distill_ray.config import Config
from distill_ray.data.prepare import prepare_split
from distill_ray.models.build import load_causal_lm
from distill_ray.models.tokenizer import load_tokenizer
from distill_ray.pipeline.driver import run
from distill_ray.pipeline.sources import dataset_batch
from distill_ray.trainer.step import LossSpec, ResponseTargets, response_output, student_loss

pytestmark = pytest.mark.slow

STEPS = 4


def make_cfg(local: dict, out: Path, method: str, **sections) -> Config:
    cfg = Config()
    cfg.model.teacher, cfg.model.student, cfg.model.tokenizer = local["teacher"], local["student"], local["tokenizer"]
    cfg.data.train = f"{local['data']}/train.jsonl"
    cfg.data.validation = None
    cfg.data.test = f"{local['data']}/test.jsonl"
    cfg.method.name = method
    t = cfg.trainer
    t.num_workers, t.num_cpus_per_worker, t.zero_stage = 2, 1.0, 2
    t.batch_size, t.max_steps, t.lr, t.warmup_steps, t.lr_schedule = 8, STEPS, 5e-3, 0, "constant"
    t.output_dir = str(out)
    cfg.method.okd.lr = 5e-3
    cfg.rollout.max_new_tokens, cfg.rollout.num_cpus_per_worker = 24, 1.0
    cfg.eval.max_examples, cfg.eval.max_new_tokens, cfg.eval.batch_size = 8, 16, 8
    cfg.logging.tensorboard, cfg.logging.progress = False, False
    for dotted, value in sections.items():
        section, key = dotted.split("__")
        node = cfg.method if section in ("switch", "okd") else cfg
        setattr(getattr(node, section), key, value)
    return cfg


def fixed_batch_loss(cfg: Config, student_dir: str, rows) -> float:
    """The run's own student objective (CE for sft/seqkd, D(teacher, student) otherwise) on fixed
    dataset rows, for the model in `student_dir`."""
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    batch = dataset_batch(rows, tokenizer.pad_token_id)
    spec = LossSpec.from_config(cfg)
    with torch.no_grad():
        teacher = response_output(load_causal_lm(cfg.model.teacher).eval(), batch) if spec.uses_teacher else None
        student = response_output(load_causal_lm(student_dir).eval(), batch)
        topk = None
        if cfg.trainer.teacher_mode == "remote":  # the run optimises the sparse top-k objective: measure that one
            logprobs = torch.log_softmax(teacher.logits.float() / cfg.loss.temperature, dim=-1)
            values, ids = logprobs.topk(cfg.loss.topk, dim=-1)
            topk = (ids, values)
        loss, _ = student_loss(spec, ResponseTargets.from_batch(batch), student, teacher, topk=topk)
    return float(loss)


def metrics_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


SWITCH_MIX = {"switch__tau0": 0.0049, "switch__decay": 0.0}
RUNS = {
    # name: (method, overrides)
    "sft": ("sft", {}),
    "kd_zero3": ("kd", {"trainer__zero_stage": 3, "trainer__teacher_mode": "zero3"}),
    "seqkd": ("seqkd", {}),
    "sgo_sync": ("sgo", {"rollout__max_staleness": 0}),  # fully on-policy
    # the tiny test models' JSD is about 0.005 nats everywhere: a threshold there mixes writers
    "switch_async": ("switch", {"rollout__max_staleness": 2, **SWITCH_MIX}),
    # half SWITCH sequences, half dataset batches (seed 0's draws: on, off, off, on)
    "switch_mixed": ("switch", {"method__lambda_on": 0.5, **SWITCH_MIX}),
    "okd": ("okd", {}),
    "okd_sgo": ("okd", {"method__combine_with": "sgo"}),
    "okd_switch": ("okd", {"method__combine_with": "switch", **SWITCH_MIX}),
    "kd_remote_teacher": ("kd", {"trainer__teacher_mode": "remote"}),  # kd against TeacherScorer top-k
}


@pytest.fixture(scope="module")
def fixed_rows(tiny_local):
    tokenizer = load_tokenizer(tiny_local["tokenizer"])
    rows, _ = prepare_split(Config().data, tokenizer, f"{tiny_local['data']}/validation.jsonl", shuffle=False, max_rows=16)
    return rows


@pytest.fixture(scope="module")
def runs(ray_local, tiny_local, tmp_path_factory, fixed_rows):
    """Every run of RUNS, with its result, metrics and fixed-batch loss before and after."""
    records = {}
    for name, (method, overrides) in RUNS.items():
        out = tmp_path_factory.mktemp(name)
        cfg = make_cfg(tiny_local, out, method, **overrides)
        result = run(cfg, quiet=True)
        records[name] = {
            "cfg": cfg, "out": out, "result": result, "metrics": metrics_of(out),
            "before": fixed_batch_loss(cfg, cfg.model.student, fixed_rows),
            "after": fixed_batch_loss(cfg, result["student_dir"], fixed_rows),
        }
    return records


@pytest.mark.parametrize("name", list(RUNS))
def test_every_method_trains_through_the_pipeline(runs, name):
    rec = runs[name]
    result, metrics = rec["result"], rec["metrics"]
    assert result["steps"] == STEPS and [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    assert all(math.isfinite(x) for x in result["losses"])
    # the run's own objective on fixed held-out rows fell
    assert rec["after"] < rec["before"], (rec["before"], rec["after"])
    # two trainer ranks, each with the stage and teacher placement asked for
    placement = result["placement"]["trainer"]
    assert len(placement) == 2 and {p["zero_stage"] for p in placement} == {rec["cfg"].trainer.zero_stage}
    for key in ("timing/train_step", "timing/get_batch", "timing/step_total", "tokens_per_s"):
        assert all(key in m for m in metrics), key
    # the exported student is an ordinary HF directory; the final checkpoint is complete
    assert load_causal_lm(result["student_dir"]) is not None
    assert (rec["out"] / "checkpoints" / f"step_{STEPS:06d}" / "trainer_state.json").is_file()
    assert 0.0 <= result["test"]["overall"]["rouge_l"] <= 1.0


def test_on_policy_methods_use_rollout_workers_and_offline_ones_do_not(runs):
    for name in ("sgo_sync", "switch_async", "okd_sgo", "okd_switch"):
        assert runs[name]["result"]["placement"]["rollout"], name
        assert all(m["policy_version"] >= 0 and "timing/generate" in m for m in runs[name]["metrics"]), name
    for name in ("sft", "kd_zero3", "seqkd", "okd"):
        assert runs[name]["result"]["placement"]["rollout"] == [], name
        assert all(m["policy_version"] == -1 for m in runs[name]["metrics"]), name


def test_switch_runs_log_the_teacher_share_by_response_position(runs):
    for name in ("switch_async", "okd_switch"):
        for m in runs[name]["metrics"]:
            buckets = sorted(k.removeprefix("switch/tokens/") for k in m if k.startswith("switch/tokens/"))
            assert buckets and "0-7" in buckets, (name, m)
            # the buckets partition the response tokens, and their shares average to the overall one
            assert sum(m[f"switch/tokens/{b}"] for b in buckets) == m["tokens/response"], (name, m)
            weighted = sum(m[f"switch/teacher_fraction/{b}"] * m[f"switch/tokens/{b}"] for b in buckets)
            assert weighted / m["tokens/response"] == pytest.approx(m["switch/teacher_fraction"], abs=1e-9), (name, m)
    assert not any(k.startswith("switch/") for m in runs["sgo_sync"]["metrics"] for k in m)


def test_switch_mixes_dataset_batches_in_at_lambda_on(runs):
    metrics = runs["switch_mixed"]["metrics"]
    assert [m["on_policy"] for m in metrics] == [1.0, 0.0, 0.0, 1.0]
    for m in metrics:
        on = m["on_policy"] == 1.0
        # SWITCH sequences carry a policy version and who wrote each token; dataset rows neither
        assert (m["policy_version"] >= 0) == on and ("switch/teacher_fraction" in m) == on, m
    assert all(m["on_policy"] == 1.0 for m in runs["switch_async"]["metrics"])  # lambda_on 1.0, the default


def test_switch_batches_mix_teacher_and_student_tokens(runs):
    for name in ("switch_async", "okd_switch"):
        fractions = [m["switch/teacher_fraction"] for m in runs[name]["metrics"]]
        assert all(0.0 <= f <= 1.0 for f in fractions), (name, fractions)
        assert any(0.0 < f < 1.0 for f in fractions), (name, fractions)  # both models wrote tokens


def test_staleness_zero_trains_only_on_current_weights(runs):
    metrics = runs["sgo_sync"]["metrics"]
    assert all(m["policy_version"] == m["trainer_version"] for m in metrics)


def test_staleness_bound_holds_and_generation_runs_ahead(runs):
    metrics = runs["switch_async"]["metrics"]
    lags = [m["trainer_version"] - m["policy_version"] for m in metrics]
    assert all(0 <= lag <= 2 for lag in lags), lags
    assert max(lags) >= 1, lags  # batches were generated ahead, while the trainer worked


def test_zero3_ranks_hold_a_partition_of_the_teacher(runs):
    placement = runs["kd_zero3"]["result"]["placement"]["trainer"]
    for rank in placement:
        assert rank["teacher"] == "zero3" and rank["teacher_local_parameters"] < rank["teacher_parameters"]


def test_remote_teacher_mode_trains_on_scorer_topk_without_a_local_teacher(runs):
    rec = runs["kd_remote_teacher"]
    assert all(p["teacher"] == "remote" and p["teacher_parameters"] == 0 for p in rec["result"]["placement"]["trainer"])
    assert all("timing/teacher_score" in m for m in rec["metrics"])


def test_okd_module_reaches_the_switch_teacher(runs):
    """okd + switch: the trained module, merged into the teacher's layers, is what the rollout
    workers' teacher generates with (the module's adapter differs from zero after training)."""
    from safetensors.torch import load_file

    rec = runs["okd_switch"]
    adapter = load_file(str(rec["out"] / "checkpoints" / f"step_{STEPS:06d}" / "online_module" / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in adapter.items())


@pytest.fixture(scope="module")
def resumed(runs, ray_local, tmp_path_factory):
    """A second sft run, with checkpoints every 2 steps, to be interrupted and resumed."""
    rec = runs["sft"]
    out = tmp_path_factory.mktemp("sft_resumed")
    cfg = make_cfg({"teacher": rec["cfg"].model.teacher, "student": rec["cfg"].model.student,
                    "tokenizer": rec["cfg"].model.tokenizer, "data": str(Path(rec["cfg"].data.train).parent)}, out, "sft")
    cfg.trainer.save_every = 2
    return cfg, out


def test_resume_continues_where_the_run_stopped(runs, resumed, ray_local):
    cfg, out = resumed
    # an interrupted run: 2 steps with a checkpoint every 2 ...
    cfg.trainer.max_steps = 2
    first = run(cfg, quiet=True)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000002"]
    # ... started again with --resume and the full step count
    cfg.trainer.max_steps = STEPS
    second = run(cfg, resume=True, quiet=True)
    assert second["steps"] == STEPS - 2
    steps = [m["step"] for m in metrics_of(out)]
    assert steps == list(range(1, STEPS + 1))
    # the same losses as the uninterrupted sft run (same data order, same optimizer state)
    expected = runs["sft"]["result"]["losses"]
    assert first["losses"] + second["losses"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_switch_on_vllm_rollout_workers_and_the_export_loads_in_vllm(ray_local, tiny_local, tmp_path_factory, fixed_rows):
    """SWITCH with vLLM engines end to end: the student drafts in a vLLM rollout worker, a vLLM
    teacher scorer checks the drafts' top-k (rollout/switch_topk.py), weights reload in place.
    (sgo on vLLM runs in tests/pipeline/test_real_pair.py, on the real pair.)"""
    from distill_ray.rollout.engines import TorchEngine
    from distill_ray.rollout.sampling import SamplingConfig
    from distill_ray.rollout.workers import EngineConfig, create_rollout_worker

    out = tmp_path_factory.mktemp("switch_vllm")
    # the tiny models are near-uniform over their 700 tokens: a top-64 JSD would see almost none of
    # their ~0.005 nats, so the rule takes the whole vocabulary (k = V: the exact JSD)
    cfg = make_cfg(tiny_local, out, "switch", rollout__backend="vllm", rollout__max_staleness=1, switch__topk=700,
                   **SWITCH_MIX)
    cfg.trainer.num_workers = 1  # 1 rank + the worker + the teacher scorer: one CPU each
    cfg.rollout.max_new_tokens = 12  # every draft round is a vLLM call on each side: keep the rounds few
    result = run(cfg, quiet=True)
    metrics = metrics_of(out)
    assert result["steps"] == STEPS and all(math.isfinite(x) for x in result["losses"])
    assert result["placement"]["rollout"][0]["backend"] == "vllm"
    assert len(result["placement"]["teacher"]) == 1  # the vLLM teacher scorer SWITCH checks with
    assert [m["policy_version"] for m in metrics][-1] >= 2  # reloaded in place as training went on
    assert "timing/weight_reload" in "".join(json.dumps(m) for m in metrics)
    fractions = [m["switch/teacher_fraction"] for m in metrics]
    assert all(0.0 <= f <= 1.0 for f in fractions) and 0.0 < sum(fractions) / len(fractions) < 1.0, fractions

    # the exported student loads in vLLM and gives the same log-probs as in transformers
    tokenizer = load_tokenizer(tiny_local["tokenizer"])
    engine = EngineConfig(backend="vllm", eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                          vllm_kv_cache_gib=0.25, vllm_max_model_len=512)
    worker = create_rollout_worker(result["student_dir"], engine=engine, num_cpus=1)
    try:
        prompts = [r.prompt_ids for r in fixed_rows[:8]]
        batch = ray_local.get(worker.generate.remote(prompts, list(range(8)), SamplingConfig(temperature=0.0, max_new_tokens=8)))
    finally:
        ray_local.kill(worker)
    full = TorchEngine(result["student_dir"]).score_logprobs(batch.sequences(), batch.prompt_lengths())
    m = batch.response_mask
    R = full.shape[1]
    want = full.gather(2, batch.response_ids[:, :R, None])[..., 0]
    torch.testing.assert_close(batch.logprobs[m], want[m[:, :R]], atol=1e-3, rtol=0)


def test_a_teacher_with_another_tokenizer_is_refused_before_anything_starts(tiny_local, tmp_path):
    from distill_ray.errors import DistillError
    from distill_ray.models.tokenizer import train_tokenizer

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_local["teacher"], teacher)
    train_tokenizer(["a different corpus entirely", "with other words"] * 50, vocab_size=300).save_pretrained(teacher)
    cfg = make_cfg({**tiny_local, "teacher": str(teacher)}, tmp_path / "out", "kd")
    with pytest.raises(DistillError, match="tokenizers differ"):
        run(cfg, quiet=True)


def test_a_killed_rollout_worker_is_replaced_and_its_prompts_generated_again(ray_local, tiny_local, tmp_path, fixed_rows):
    from distill_ray.pipeline.rollout_loop import RolloutPipeline
    from distill_ray.pipeline.sources import PromptStream

    cfg = make_cfg(tiny_local, tmp_path, "sgo", rollout__max_staleness=1)
    tokenizer = load_tokenizer(tiny_local["tokenizer"])
    pipe = RolloutPipeline(cfg, PromptStream(fixed_rows, 8, seed=0), tokenizer.pad_token_id, tokenizer.eos_token_id, switch=False)
    try:
        ray_local.kill(pipe.workers[0])  # both requests of the two next_batch calls go to a dead worker
        first, _ = pipe.next_batch(0)
        second, extra = pipe.next_batch(0)
    finally:
        pipe.shutdown()
    assert extra["rollout/restarts"] == 1.0
    # the 16 rows, each generated exactly once: none lost, none twice
    got = first.prompt_index.tolist() + second.prompt_index.tolist()
    assert sorted(got) == sorted(r.index for r in fixed_rows)
