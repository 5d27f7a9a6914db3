"""The top-k + tail-bucket JSD (the vLLM SWITCH divergence) against the exact JSD."""

from __future__ import annotations

import math

import torch

from distill_ray.rollout.engines import TorchEngine
from distill_ray.rollout.sampling import SamplingConfig
from distill_ray.rollout.switch_rule import jsd_from_logprobs
from distill_ray.rollout.topk_jsd import logprobs_at, topk_jsd


def random_logp(*shape, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).log_softmax(-1)


def test_full_support_is_exact():
    lp, lq = random_logp(20, 50, seed=1), random_logp(20, 50, seed=2)
    values, ids = lp.topk(50, dim=-1)
    approx = topk_jsd(values, lq.gather(-1, ids))
    torch.testing.assert_close(approx, jsd_from_logprobs(lp, lq).double(), atol=1e-9, rtol=0)


def test_is_a_lower_bound_that_tightens_with_k():
    lp, lq = random_logp(200, 100, seed=3), random_logp(200, 100, seed=4)
    exact = jsd_from_logprobs(lp, lq).double()
    previous = torch.zeros_like(exact)
    for k in (1, 4, 16, 64):
        values, ids = lp.topk(k, dim=-1)
        approx = topk_jsd(values, lq.gather(-1, ids))
        assert (approx <= exact + 1e-12).all()
        assert (approx >= previous - 1e-12).all() or k == 1
        previous = approx
    assert (approx >= 0).all() and (approx <= math.log(2)).all()


def test_logprobs_at_uses_known_values_and_spreads_the_rest():
    known_ids = torch.tensor([[3, 1]])
    known_logp = torch.tensor([[math.log(0.5), math.log(0.3)]])
    got = logprobs_at(torch.tensor([[1, 3, 0, 2]]), known_ids, known_logp, vocab_size=4)
    # 0.2 of mass left over the two unknown tokens
    torch.testing.assert_close(got.exp(), torch.tensor([[0.3, 0.5, 0.1, 0.1]], dtype=torch.float64))


def test_error_on_the_test_models(model_pair, prompts64):
    """The approximation error on real rollouts, with the student exact (torch) or itself top-K (vLLM-like)."""
    batch = TorchEngine(model_pair.student, eos_token_id=2).generate(prompts64, SamplingConfig(max_new_tokens=16))
    seqs, plens = batch.sequences(), batch.prompt_lengths()
    lt = TorchEngine(model_pair.teacher).score_logprobs(seqs, plens)[batch.response_mask].double()
    ls = TorchEngine(model_pair.student).score_logprobs(seqs, plens)[batch.response_mask].double()
    exact = jsd_from_logprobs(lt, ls).double()
    errors = {}
    for k in (8, 32, 64):
        values, ids = lt.topk(k, dim=-1)
        student_exact = topk_jsd(values, ls.gather(-1, ids))
        s_vals, s_ids = ls.topk(k, dim=-1)
        student_topk = topk_jsd(values, logprobs_at(ids, s_ids, s_vals, ls.shape[-1]))
        errors[k] = ((exact - student_exact).abs().mean().item(), (exact - student_topk).abs().mean().item())
        assert (student_exact <= exact + 1e-9).all()
    # these random models are flat (top-32 holds ~75% of the mass; exact JSD ~0.25), the hard case:
    # the error shrinks with k and is small once the top-k holds most of the mass
    assert errors[8][0] > errors[32][0] > errors[64][0]
    assert errors[64][0] < 0.04 and errors[64][1] < 0.05
