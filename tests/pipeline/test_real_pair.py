"""The distributed pipeline on the real pair: SmolLM2-135M-Instruct (imported GGUF) teaching a
student pruned from it, on the teacher's own chat-templated answers (tests/conftest.py). Every
method runs two steps through the driver on the session's Ray: kd, okd, seqkd, switch (torch
rollout, the exact rule; SWITCH on vLLM runs in tests/pipeline/test_driver.py) on 1 DeepSpeed rank; sgo on 2 ranks with the pruned
student in a vLLM rollout worker (float32); and kd from a remote teacher (TeacherScorer on vLLM,
top-k log-probabilities).
What is checked: the run trains (finite losses, the student's weights move, on-policy methods
train on rollouts) and its exported student loads in transformers with the teacher's chat
template and vocabulary. (The prompts' chat rendering is tests/models/test_real.py's; quality on
this pair is the README's measured run.)"""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from distill_ray.config import Config
from distill_ray.models.build import load_causal_lm
from distill_ray.pipeline.driver import run

pytestmark = pytest.mark.slow
HAS_VLLM = importlib.util.find_spec("vllm") is not None


def real_cfg(real_data, student, teacher, out, method: str, **over) -> Config:
    cfg = Config()
    cfg.model.teacher, cfg.model.student = str(teacher), str(student)
    d = real_data["dir"]
    cfg.data.train, cfg.data.validation, cfg.data.test = f"{d}/train.jsonl", None, None
    cfg.data.max_prompt_tokens, cfg.data.max_response_tokens = 128, 32
    cfg.method.name = method
    t = cfg.trainer
    t.num_workers, t.num_cpus_per_worker, t.batch_size, t.max_steps = 1, 1.0, 2, 2
    t.lr, t.warmup_steps, t.lr_schedule, t.output_dir = 1e-4, 0, "constant", str(out)
    cfg.rollout.max_new_tokens, cfg.rollout.num_cpus_per_worker = 16, 1.0
    cfg.method.switch.draft_tokens = 4
    cfg.logging.tensorboard, cfg.logging.progress = False, False
    for dotted, value in over.items():
        node = cfg
        *path, key = dotted.split("__")
        for part in path:
            node = getattr(node.method if part in ("switch", "okd") and node is cfg else node, part)
        setattr(node, key, value)
    return cfg


CASES = {
    "kd": ("kd", {}),
    "okd": ("okd", {}),
    "seqkd": ("seqkd", {}),
    "switch": ("switch", {"rollout__backend": "torch"}),
}
EXTENDED = {"seqkd", "kd_remote_vllm"}  # `make test-real`, not `make test` (CI's time budget)
if HAS_VLLM:
    # the pruned student as a vLLM rollout engine (so it loads in vLLM), and 2 DeepSpeed ranks
    CASES["sgo_vllm_2ranks"] = ("sgo", {"rollout__backend": "vllm", "method__lambda_on": 1.0,
                                        "trainer__num_workers": 2, "trainer__num_cpus_per_worker": 0.5})
    CASES["kd_remote_vllm"] = ("kd", {"trainer__teacher_mode": "remote", "rollout__backend": "vllm"})


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.real_extended) if c in EXTENDED else c for c in CASES])
def test_each_method_trains_on_the_real_pair(case, ray_local, real_data, real_teacher, pruned_student, real_tokenizer,
                                             tmp_path):
    method, over = CASES[case]
    out = tmp_path / case
    result = run(real_cfg(real_data, pruned_student, real_teacher, out, method, **over), quiet=True)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["loss"]) and m["loss"] > 0 for m in metrics)
    if method in ("sgo", "switch"):
        assert all(m.get("on_policy", 0) == 1.0 for m in metrics)
    if over.get("rollout__backend") == "vllm" and method == "sgo":
        assert result["placement"]["rollout"][0]["backend"] == "vllm"
    exported = load_causal_lm(result["student_dir"])
    before = load_causal_lm(pruned_student)
    moved = max(float((a - b).abs().max()) for a, b in zip(exported.parameters(), before.parameters()))
    assert moved > 0, "the student's weights did not change"
    from distill_ray.models.tokenizer import load_tokenizer

    tok = load_tokenizer(result["student_dir"])  # the export keeps the teacher's chat template
    assert tok.chat_template == real_tokenizer.chat_template and tok.eos_token == "<|im_end|>"
    assert exported.config.vocab_size == 49152 and exported.dtype == torch.float32
