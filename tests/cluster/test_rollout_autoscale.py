"""`rollout.autoscale`: the queue-depth policy, and a real RolloutPipeline that grows when the
trainer waits on an empty queue and shrinks when batches wait for the trainer."""

from __future__ import annotations

import time

import pytest

from distill_ray.config import Config, RolloutAutoscaleConfig
from distill_ray.pipeline.rollout_loop import QueueDepthAutoscaler


def test_policy_adds_a_worker_after_patience_steps_of_waiting_and_stays_within_bounds():
    policy = QueueDepthAutoscaler(RolloutAutoscaleConfig(enabled=True, min_workers=1, max_workers=4, patience=2), busy_cap=3)
    assert policy.decide(1, depth=0, waited_s=1.0) == 0  # one step is not a trend
    assert policy.decide(1, depth=0, waited_s=1.0) == 1
    assert policy.decide(2, depth=0, waited_s=1.0) == 0  # the count starts again after a change
    assert policy.decide(2, depth=0, waited_s=1.0) == 1
    assert [policy.decide(3, depth=0, waited_s=1.0) for _ in range(4)] == [0, 0, 0, 0]  # capped at busy_cap=3


def test_policy_removes_a_worker_when_batches_wait_and_ignores_mixed_signals():
    policy = QueueDepthAutoscaler(RolloutAutoscaleConfig(enabled=True, min_workers=1, max_workers=4, patience=2), busy_cap=4)
    assert [policy.decide(3, depth=d, waited_s=w) for d, w in [(1, 0.0), (0, 1.0), (1, 0.0), (0, 0.0)]] == [0, 0, 0, 0]
    assert [policy.decide(3, depth=2, waited_s=0.0) for _ in range(2)] == [0, -1]
    assert [policy.decide(1, depth=2, waited_s=0.0) for _ in range(2)] == [0, 0]  # never below min_workers


@pytest.mark.slow
def test_pipeline_grows_while_the_trainer_waits_and_shrinks_while_batches_wait(ray_local, tiny_local):
    from distill_ray.data.prepare import prepare_split
    from distill_ray.models.tokenizer import load_tokenizer
    from distill_ray.pipeline.rollout_loop import RolloutPipeline
    from distill_ray.pipeline.sources import PromptStream
    from distill_ray.rollout.weights import state_dict_to_bytes
    from distill_ray.models.build import load_causal_lm

    cfg = Config()
    cfg.model.teacher, cfg.model.student = tiny_local["teacher"], tiny_local["student"]
    cfg.rollout.num_workers, cfg.rollout.max_new_tokens, cfg.rollout.max_staleness = 1, 16, 1  # 2 requests in flight
    cfg.rollout.autoscale = RolloutAutoscaleConfig(enabled=True, min_workers=1, max_workers=4, patience=2, wait_threshold_s=0.0)
    tokenizer = load_tokenizer(tiny_local["tokenizer"])
    rows, _ = prepare_split(cfg.data, tokenizer, f"{tiny_local['data']}/train.jsonl", shuffle=False, max_rows=64)
    pipe = RolloutPipeline(cfg, PromptStream(rows, 8, seed=0), tokenizer.pad_token_id, tokenizer.eos_token_id, switch=False)
    seen = []
    try:
        pipe.sync_weights(state_dict_to_bytes(load_causal_lm(cfg.model.student).state_dict()), 3)
        # a trainer faster than generation: take batches back to back until a worker is added
        for _ in range(12):
            _, m = pipe.next_batch(3)
            seen.append(m)
            if pipe.active_workers == 2:
                break
        assert pipe.active_workers == 2, seen
        # the new worker loaded the latest weights before generating
        assert ray_local.get(pipe.workers[1].ready.remote(), timeout=120)["policy_version"] == 3
        # a trainer slower than generation: a batch is always waiting when it asks
        for _ in range(12):
            deadline = time.time() + 120
            while pipe.queue.qsize() < 1 and time.time() < deadline:
                time.sleep(0.05)
            _, m = pipe.next_batch(3)
            seen.append(m)
            if pipe.active_workers == 1:
                break
        assert pipe.active_workers == 1, seen
    finally:
        pipe.shutdown()
    # the count reported each step is what the policy decided from that step's own signals
    replay = QueueDepthAutoscaler(cfg.rollout.autoscale, busy_cap=2)
    workers = 1
    for m in seen:
        workers += replay.decide(workers, int(m["queue/depth"]), m["timing/rollout_wait"])
        assert m["rollout/workers"] == workers, seen
    assert max(m["rollout/workers"] for m in seen) == 2 and seen[-1]["rollout/workers"] == 1
