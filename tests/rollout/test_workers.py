"""Rollout actors on a local Ray cluster, torch backend."""

from __future__ import annotations

import pytest
import torch

from distill_ray.batch import RolloutBatch
from distill_ray.rollout.engines import TorchEngine
from distill_ray.rollout.sampling import SamplingConfig
from distill_ray.rollout.switch import SwitchGenerator
from distill_ray.rollout.weights import state_dict_to_bytes
from distill_ray.rollout.workers import (
    EngineConfig,
    SwitchParams,
    create_rollout_worker,
    create_teacher_scorer,
)
from rollout_models import STUDENT_SHAPE, make_model

pytestmark = pytest.mark.slow

ENGINE = EngineConfig(backend="torch", eos_token_id=2, torch_threads=1)
SWITCH = SwitchParams(tau0=0.5, decay=0.05, draft_tokens=4)


@pytest.fixture(scope="module")
def actors(ray_local, model_pair):
    ray = ray_local
    workers = [
        create_rollout_worker(str(model_pair.student_dir), engine=ENGINE, teacher=str(model_pair.teacher_dir),
                              switch=SWITCH, num_cpus=1)
        for _ in range(2)
    ]
    scorer = create_teacher_scorer(str(model_pair.teacher_dir), engine=ENGINE, num_cpus=1)
    ray.get([w.ready.remote() for w in workers] + [scorer.ready.remote()])
    yield workers, scorer
    for actor in workers + [scorer]:
        ray.kill(actor)


def test_two_workers_give_what_one_local_engine_gives(ray_local, actors, model_pair, prompts64):
    """Prompts split across workers in plain code; position-keyed draws make the split invisible."""
    workers, _ = actors
    sampling = SamplingConfig(max_new_tokens=16, seed=3, samples_per_prompt=2)
    index = list(range(len(prompts64)))
    half = len(prompts64) // 2
    refs = [
        workers[0].generate.remote(prompts64[:half], index[:half], sampling),
        workers[1].generate.remote(prompts64[half:], index[half:], sampling),
    ]
    batch = RolloutBatch.concat(ray_local.get(refs))
    local = TorchEngine(model_pair.student, eos_token_id=2).generate(prompts64, sampling, index)
    assert batch.prompt_index.tolist() == local.prompt_index.tolist()
    assert batch.responses() == local.responses()
    torch.testing.assert_close(batch.logprobs, local.logprobs, atol=1e-5, rtol=0)


def test_switch_on_a_worker(ray_local, actors, model_pair, prompts64):
    workers, _ = actors
    sampling = SamplingConfig(max_new_tokens=16, seed=1)
    batch = ray_local.get(workers[0].generate_switch.remote(prompts64[:16], list(range(16)), sampling))
    local = SwitchGenerator(model_pair.teacher, model_pair.student, tau0=SWITCH.tau0, decay=SWITCH.decay,
                            eos_token_id=2).generate_sequential(prompts64[:16], sampling)
    assert batch.responses() == local.responses()
    assert torch.equal(batch.writer_mask, local.writer_mask)
    assert 0 < batch.metrics["switch/teacher_fraction"] < 1


def test_reload_tags_the_policy_version(ray_local, actors, prompts64):
    workers, _ = actors
    sampling = SamplingConfig(max_new_tokens=8, temperature=0.0)
    before = ray_local.get(workers[0].generate.remote(prompts64[:8], list(range(8)), sampling))
    fingerprint = ray_local.get(workers[0].weights_fingerprint.remote())
    new = make_model(STUDENT_SHAPE, seed=21, eos_like=124)
    blob = state_dict_to_bytes(new.state_dict())
    assert ray_local.get([w.load_weights.remote(blob, 4) for w in workers]) == [4, 4]
    after = ray_local.get(workers[0].generate.remote(prompts64[:8], list(range(8)), sampling))
    switched = ray_local.get(workers[0].generate_switch.remote(prompts64[:8], list(range(8)), sampling))
    assert before.policy_version == 0 and after.policy_version == 4 and switched.policy_version == 4
    assert "timing/weight_reload" in after.metrics
    assert ray_local.get(workers[0].weights_fingerprint.remote()) != fingerprint
    expected = TorchEngine(new, eos_token_id=2).generate(prompts64[:8], sampling)
    assert after.responses() == expected.responses() != before.responses()


def test_teacher_scorer_fills_the_batch(ray_local, actors, model_pair, prompts64):
    workers, scorer = actors
    batch = ray_local.get(workers[1].generate.remote(prompts64[:8], list(range(8)), SamplingConfig(max_new_tokens=8)))
    scored = ray_local.get(scorer.score_batch.remote(batch, 8))
    assert scored.teacher_topk_ids.shape == (*batch.response_ids.shape, 8)
    ids, values = TorchEngine(model_pair.teacher).score_topk(batch.sequences(), batch.prompt_lengths(), 8)
    R = ids.shape[1]
    assert torch.equal(scored.teacher_topk_ids[:, :R], ids)
    torch.testing.assert_close(scored.teacher_topk_logprobs[:, :R], values)
    assert "timing/teacher_score" in scored.metrics
