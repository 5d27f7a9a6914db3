"""A training run whose teacher is the scoring service (`model.teacher_endpoint`), beside the same
run with local TeacherScorer actors: both finish with finite losses, and the teacher top-k each
step trained on (its `teacher/topk_mass`) and the losses agree, so the endpoint gave the run the
local teacher's log-probabilities."""

from __future__ import annotations

import json
import math

import pytest

from distill_ray.config import Config
from distill_ray.pipeline.driver import run

pytestmark = pytest.mark.slow

STEPS = 2


def kd_config(local: dict, out, endpoint: str | None) -> Config:
    cfg = Config()
    cfg.model.teacher, cfg.model.student, cfg.model.tokenizer = local["teacher"], local["student"], local["tokenizer"]
    cfg.model.teacher_endpoint = endpoint
    cfg.data.train, cfg.data.validation, cfg.data.test = f"{local['data']}/train.jsonl", None, None
    cfg.method.name = "kd"
    cfg.loss.topk = 16
    t = cfg.trainer
    t.num_workers, t.num_cpus_per_worker, t.teacher_mode = 1, 1.0, "remote"
    t.batch_size, t.max_steps, t.lr, t.warmup_steps, t.lr_schedule = 8, STEPS, 5e-3, 0, "constant"
    t.output_dir = str(out)
    cfg.rollout.num_cpus_per_worker = 0.5  # the local TeacherScorer of the reference run
    cfg.logging.tensorboard, cfg.logging.progress = False, False
    return cfg


def step_records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_kd_with_the_teacher_endpoint_matches_local_scorers(services, tmp_path):
    via_endpoint = run(kd_config(services["local"], tmp_path / "endpoint", services["teacher"]), quiet=True)
    via_actors = run(kd_config(services["local"], tmp_path / "actors", None), quiet=True)
    assert via_endpoint["steps"] == STEPS and all(math.isfinite(x) for x in via_endpoint["losses"])
    assert via_endpoint["placement"]["trainer"][0]["teacher"] == "remote"
    endpoint_steps, actor_steps = step_records(tmp_path / "endpoint"), step_records(tmp_path / "actors")
    for e, a in zip(endpoint_steps, actor_steps, strict=True):
        assert "timing/teacher_score" in e and 0 < e["teacher/topk_mass"] <= 1 + 1e-6
        assert e["teacher/topk_mass"] == pytest.approx(a["teacher/topk_mass"], abs=1e-4)
        assert e["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5)
