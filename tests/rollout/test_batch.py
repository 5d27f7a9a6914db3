"""RolloutBatch: layout, alignment with a teacher-forced forward pass, split/concat."""

from __future__ import annotations

import pickle

import pytest
import torch

from distill_ray.batch import RolloutBatch
from distill_ray.errors import DistillError
from distill_ray.rollout.engines import TorchEngine
from distill_ray.rollout.sampling import SamplingConfig


def small_batch(version=3, offset=0) -> RolloutBatch:
    return RolloutBatch.from_lists(
        prompts=[[1, 5, 6], [1]],
        responses=[[7, 8], [9, 10, 2]],
        logprobs=[[-0.5, -0.25], [-1.0, -2.0, -3.0]],
        prompt_index=[offset, offset + 1],
        writers=[[False, True], [True, False, False]],
        policy_version=version,
        metrics={"timing/generate": 1.0 + offset, "tokens/response": 5.0, "switch/teacher_fraction": 0.4},
    )


def test_from_lists_pads_prompts_left_and_responses_right():
    b = small_batch()
    assert b.prompt_ids.tolist() == [[1, 5, 6], [0, 0, 1]]
    assert b.prompt_mask.tolist() == [[True] * 3, [False, False, True]]
    assert b.response_ids.tolist() == [[7, 8, 0], [9, 10, 2]]
    assert b.response_mask.sum(1).tolist() == [2, 3]
    assert b.writer_mask.tolist() == [[False, True, False], [True, False, False]]
    assert b.sequences() == [[1, 5, 6, 7, 8], [1, 9, 10, 2]]
    assert b.prompt_lengths() == [3, 1] and b.num_response_tokens == 5 and len(b) == 2


def test_shapes_are_checked():
    b = small_batch()
    with pytest.raises(DistillError, match="logprobs"):
        RolloutBatch(b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask, b.logprobs[:, :1],
                     b.writer_mask, b.prompt_index)


def test_model_inputs_line_up_with_the_response(model_pair, prompts64):
    """logits[:, P-1+t] of the concatenated batch predict response token t (the batch's logprobs)."""
    engine = TorchEngine(model_pair.student, eos_token_id=model_pair.eos_token_id)
    batch = engine.generate(prompts64[:16], SamplingConfig(max_new_tokens=10, seed=2))
    inputs = batch.model_inputs()
    P, R = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    with torch.no_grad():
        logp = model_pair.student(**inputs).logits.log_softmax(-1)[:, P - 1 : P - 1 + R]
    lp = logp.gather(2, batch.response_ids[..., None])[..., 0]
    torch.testing.assert_close(lp[batch.response_mask], batch.logprobs[batch.response_mask], atol=1e-4, rtol=0)


def test_split_and_concat_round_trip():
    a, b = small_batch(version=3), small_batch(version=5, offset=2)
    both = RolloutBatch.concat([a, b])
    assert len(both) == 4 and both.policy_version == 3  # the oldest version: what staleness checks see
    assert both.prompt_index.tolist() == [0, 1, 2, 3]
    assert both.metrics["timing/generate"] == 3.0  # max: made in parallel
    assert both.metrics["tokens/response"] == 10.0  # sum
    assert both.metrics["switch/teacher_fraction"] == pytest.approx(0.4)  # row-weighted mean
    parts = both.split(3)
    assert [len(p) for p in parts] == [1, 1, 2]
    again = RolloutBatch.concat(parts)
    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "logprobs", "writer_mask", "prompt_index"):
        assert torch.equal(getattr(again, name), getattr(both, name)), name
    assert again.metrics == both.metrics  # split keeps metrics on the first piece only


def test_concat_re_pads_different_widths_and_keeps_teacher_topk():
    a = small_batch()
    b = RolloutBatch.from_lists([[1, 2, 3, 4, 5]], [[6]], [[-0.1]], [9])
    for batch in (a, b):
        B, R = batch.response_ids.shape
        batch.teacher_topk_ids = torch.ones(B, R, 4, dtype=torch.long)
        batch.teacher_topk_logprobs = torch.full((B, R, 4), -1.0)
    c = RolloutBatch.concat([a, b])
    assert c.prompt_ids.shape == (3, 5) and c.response_ids.shape == (3, 3)
    assert c.prompt_ids[0].tolist() == [0, 0, 1, 5, 6]
    assert c.teacher_topk_ids.shape == (3, 3, 4)
    assert c.sequences()[2] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(DistillError, match="top-k"):
        RolloutBatch.concat([a, small_batch()])


def test_to_and_pickle():
    b = small_batch()
    moved = b.to("cpu")
    assert torch.equal(moved.response_ids, b.response_ids) and moved.policy_version == b.policy_version
    again = pickle.loads(pickle.dumps(b))  # what Ray does to cross actor boundaries
    assert torch.equal(again.logprobs, b.logprobs) and again.metrics == b.metrics
