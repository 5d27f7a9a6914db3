"""Rollout worker failures: a worker whose process exits inside a generation call (the
`rollout.fault_exit_on_call` hook) during a full run, and workers killed with `ray.kill` while a
request is in flight. Each time the dead worker is replaced, the replacement gets the latest
weights, the lost request is generated again, and training goes on. Prompts are counted from the
run's own records (the per-step `rows` in metrics.jsonl): none lost, none trained twice."""

from __future__ import annotations

import math

import pytest
import torch
from test_driver import make_cfg, metrics_of

from distill_ray.data.prepare import prepare_split, run_context_length
from distill_ray.models.build import load_causal_lm
from distill_ray.models.tokenizer import load_tokenizer
from distill_ray.pipeline.driver import run
from distill_ray.pipeline.rollout_loop import RolloutPipeline
from distill_ray.pipeline.sources import PromptStream
from distill_ray.rollout.weights import state_dict_to_bytes

pytestmark = pytest.mark.slow

BATCH = 8


def stream_blocks(rows, seed: int, count: int) -> list[list[int]]:
    """The first `count` requests' row indices, in the order the prompt stream hands them out."""
    stream = PromptStream(rows, BATCH, seed)
    return [[r.index for r in stream.next_rows()] for _ in range(count)]


def block_of(rows: list[int], blocks: list[list[int]]) -> int:
    """Which request a trained batch answers: its rows are exactly one block, in order."""
    matches = [i for i, block in enumerate(blocks) if block == rows]
    assert len(matches) == 1, f"batch rows {rows} are not one request's prompts"
    return matches[0]


def test_a_worker_process_that_exits_mid_call_is_replaced_and_no_prompt_is_lost_or_repeated(ray_local, tiny_local, tmp_path):
    steps = 6
    cfg = make_cfg(tiny_local, tmp_path, "sgo", rollout__max_staleness=1, rollout__num_workers=2,
                   rollout__fault_exit_on_call=2)  # worker 0 dies inside its 2nd call (request 2)
    cfg.trainer.max_steps, cfg.trainer.save_every, cfg.data.test = steps, 0, None
    cfg.rollout.max_new_tokens = 16
    result = run(cfg, quiet=True)
    metrics = metrics_of(tmp_path)

    assert result["steps"] == steps and all(math.isfinite(x) for x in result["losses"])  # training went on
    assert result["rollout_restarts"] == 1 and metrics[-1]["rollout/restarts"] == 1.0
    trained = [m["rows"] for m in metrics]
    assert all(len(r) == BATCH for r in trained)
    flat = [i for r in trained for i in r]
    assert len(flat) == len(set(flat)), "a prompt was trained twice"

    # every trained batch is one request of the prompt stream, and every request before the
    # oldest one still in flight at the end was trained: none lost
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    rows, _ = prepare_split(cfg.data, tokenizer, cfg.data.train, shuffle=True, max_total_tokens=run_context_length(cfg))
    assert len(rows) >= (steps + 2) * BATCH  # the whole run stays inside epoch 0
    blocks = stream_blocks(rows, cfg.trainer.seed + 1, steps + 2)
    got = {block_of(r, blocks) for r in trained}
    final = torch.load(tmp_path / "checkpoints" / f"step_{steps:06d}" / "client_state.pt", weights_only=False)
    resume_at = final["positions"]["prompts"]
    assert resume_at["epoch"] == 0
    assert set(range(resume_at["offset"] // BATCH)) <= got
    assert 2 in got  # the request the worker died on was generated again and trained


def test_workers_killed_mid_run_are_replaced_with_the_latest_weights(ray_local, tiny_local, tmp_path):
    """Builds on tests/pipeline's killed-worker test (a worker dead before the first call): here
    both workers are killed with ray.kill mid-run, after a weight sync, while a request runs
    ahead (it may finish before the kill lands; the requests sent next meet dead workers)."""
    cfg = make_cfg(tiny_local, tmp_path, "sgo", rollout__max_staleness=1, rollout__num_workers=2)
    cfg.rollout.max_new_tokens = 16
    tokenizer = load_tokenizer(tiny_local["tokenizer"])
    rows, _ = prepare_split(cfg.data, tokenizer, cfg.data.train, shuffle=False, max_rows=64)
    pipe = RolloutPipeline(cfg, PromptStream(rows, BATCH, seed=0), tokenizer.pad_token_id, tokenizer.eos_token_id, switch=False)
    try:
        batches = [pipe.next_batch(0)[0]]
        pipe.sync_weights(state_dict_to_bytes(load_causal_lm(cfg.model.student).state_dict()), 1)
        assert pipe.in_flight == 1  # one request runs ahead while the trainer would work
        for worker in list(pipe.workers):
            ray_local.kill(worker)
        for _ in range(4):
            batch, extra = pipe.next_batch(1)
            batches.append(batch)
        resume_at = pipe.resume_position()
    finally:
        pipe.shutdown()
    assert extra["rollout/restarts"] == 2.0
    assert batches[1].policy_version in (0, 1)  # the request running ahead when the workers were killed
    assert [b.policy_version for b in batches[2:]] == [1, 1, 1]  # replacements loaded the synced weights
    trained = [b.prompt_index.tolist() for b in batches]
    flat = [i for r in trained for i in r]
    assert len(flat) == len(set(flat)) == 5 * BATCH
    blocks = stream_blocks(rows, 0, 7)
    got = {block_of(r, blocks) for r in trained}
    assert set(range(resume_at.offset // BATCH)) <= got and resume_at.epoch == 0
