"""The torch engine: sampling, log-probs, top-k scoring and in-place weight reload."""

from __future__ import annotations

import pytest
import torch

from distill_ray.errors import DistillError
from distill_ray.rollout.engines import TorchEngine
from distill_ray.rollout.sampling import SamplingConfig
from distill_ray.rollout.weights import state_dict_to_bytes
from rollout_models import STUDENT_SHAPE, make_model


@pytest.fixture(scope="module")
def engine(model_pair):
    return TorchEngine(model_pair.student_dir, eos_token_id=model_pair.eos_token_id)


def test_generate_is_deterministic_batch_invariant_and_stops(engine, prompts64):
    sampling = SamplingConfig(max_new_tokens=24, seed=4)
    a = engine.generate(prompts64, sampling)
    b = engine.generate(prompts64, sampling)
    assert torch.equal(a.response_ids, b.response_ids)
    for i in (0, 9, 33):
        one = engine.generate([prompts64[i]], sampling, prompt_index=[i])
        r = int(one.response_mask.sum())
        assert one.response_ids[0, :r].tolist() == a.response_ids[i, :r].tolist()
    lengths = a.response_mask.sum(1)
    assert lengths.max() == 24 and lengths.min() < 24
    for row, n in zip(a.response_ids, lengths):
        assert 2 not in row[: n - 1].tolist()  # EOS only ever last
    assert not a.writer_mask.any()
    assert a.metrics["tokens/response"] == float(lengths.sum())
    c = engine.generate(prompts64, SamplingConfig(max_new_tokens=24, seed=5))
    assert not torch.equal(a.response_ids, c.response_ids)  # another seed, other samples


def test_logprobs_are_the_raw_student_logprobs(engine, prompts64):
    batch = engine.generate(prompts64[:20], SamplingConfig(max_new_tokens=16, temperature=0.7, top_p=0.9, seed=1))
    full = engine.score_logprobs(batch.sequences(), batch.prompt_lengths())
    lp = full.gather(2, batch.response_ids[..., None])[..., 0]
    m = batch.response_mask
    torch.testing.assert_close(batch.logprobs[m], lp[m], atol=1e-4, rtol=0)


def test_greedy_takes_the_argmax(engine, prompts64):
    batch = engine.generate(prompts64[:8], SamplingConfig(max_new_tokens=8, temperature=0.0))
    full = engine.score_logprobs(batch.sequences(), batch.prompt_lengths())
    m = batch.response_mask
    assert torch.equal(full.argmax(-1)[m], batch.response_ids[m])


def test_score_topk_is_the_top_of_the_full_distribution(engine):
    seqs = [[1, 5, 6, 7, 8, 9], [1, 4, 2], [1, 3, 3, 3, 3, 3, 3, 3]]
    plens = [2, 1, 5]
    ids, values = engine.score_topk(seqs, plens, k=5)
    full = engine.score_logprobs(seqs, plens)
    assert ids.shape == (3, 4, 5) and values.shape == (3, 4, 5)
    for n, (s, p) in enumerate(zip(seqs, plens)):
        for t in range(len(s) - p):
            top = full[n, t].topk(5)
            assert ids[n, t].tolist() == top.indices.tolist()
            torch.testing.assert_close(values[n, t], top.values)
    assert (ids[1, 2:] == 0).all() and (values[1, 2:] == 0).all()  # padding
    with pytest.raises(DistillError, match="prompt length"):
        engine.score_topk([[1, 2]], [3], k=2)


def test_load_weights_replaces_the_model_in_place(model_pair, prompts64):
    engine = TorchEngine(make_model(STUDENT_SHAPE, seed=1, eos_like=124), eos_token_id=2)
    sampling = SamplingConfig(max_new_tokens=12, temperature=0.0)
    before = engine.generate(prompts64[:8], sampling)
    model_before = engine.model
    new = make_model(STUDENT_SHAPE, seed=11, eos_like=124)
    engine.load_weights(state_dict_to_bytes(new.state_dict()), version=7)
    after = engine.generate(prompts64[:8], sampling)
    assert engine.model is model_before and engine.policy_version == 7 and after.policy_version == 7
    assert not torch.equal(before.response_ids, after.response_ids)
    expected = TorchEngine(new, eos_token_id=2).generate(prompts64[:8], sampling)
    assert torch.equal(after.response_ids, expected.response_ids)
    with pytest.raises(DistillError, match="does not fit"):
        engine.load_state_dict({"nope": torch.zeros(1)}, version=8)
