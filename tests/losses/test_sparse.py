"""Sparse (top-k + tail bucket) divergences against the float64 reference and the dense form."""

from __future__ import annotations

import pytest
import torch

from distill_ray.errors import DistillError
from distill_ray.losses.divergences import DIVERGENCES, divergence, per_token_divergence_from_logprobs
from distill_ray.losses.sparse import sparse_divergence, sparse_logprobs, teacher_tail_logprob

PARAMS = [  # (kind, beta, alpha)
    *[(kind, 0.5, 0.1) for kind in DIVERGENCES],
    ("jsd", 0.0, 0.1),
    ("jsd", 0.3, 0.1),
    ("skew_reverse_kl", 0.5, 0.0),
]


def random_logits(*shape, dtype=torch.float64, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def teacher_topk(teacher_logits, k, temperature=1.0):
    """What a scorer sends: the top-k of log_softmax(logits / T)."""
    values, ids = torch.log_softmax(teacher_logits / temperature, -1).topk(k, -1)
    return ids, values


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("kind,beta,alpha", PARAMS)
def test_matches_float64_bucket_reference(reference, kind, beta, alpha, temperature):
    t = random_logits(2, 4, 40, seed=1)
    s = random_logits(2, 4, 40, seed=2).requires_grad_()
    ids, logp = teacher_topk(t, 6, temperature)
    mask = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 1]])
    ours = sparse_divergence(ids, logp, s, mask, kind=kind, temperature=temperature, beta=beta, alpha=alpha)
    # reference: k teacher buckets plus "everything else", straight from the probabilities
    p_top = logp.exp()
    q = torch.softmax(s / temperature, -1)
    q_top = q.gather(-1, ids)
    p_buckets = torch.cat([p_top, 1 - p_top.sum(-1, keepdim=True)], -1)
    q_buckets = torch.cat([q_top, 1 - q_top.sum(-1, keepdim=True)], -1)
    ref = reference.reduce(reference.from_probs(p_buckets, q_buckets, kind, beta, alpha), mask)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    (g_ours,) = torch.autograd.grad(ours, [s])
    (g_ref,) = torch.autograd.grad(ref, [s])
    torch.testing.assert_close(g_ours, g_ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("kind", DIVERGENCES)
def test_k_equal_to_vocabulary_is_the_dense_form(kind, temperature, dtype):
    t = random_logits(2, 5, 30, dtype=dtype, seed=3)
    s = random_logits(2, 5, 30, dtype=dtype, seed=4).requires_grad_()
    ids, logp = teacher_topk(t, 30, temperature)
    ids = ids.flip(-1)  # order does not matter
    logp = logp.flip(-1)
    sparse = sparse_divergence(ids, logp, s, kind=kind, temperature=temperature)
    dense = divergence(t, s, kind=kind, temperature=temperature)
    (g_sparse,) = torch.autograd.grad(sparse, [s])
    (g_dense,) = torch.autograd.grad(dense, [s])
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(sparse, dense, atol=tol, rtol=0)
    assert bool(torch.isfinite(g_sparse).all())
    torch.testing.assert_close(g_sparse, g_dense, atol=tol, rtol=0)


def test_empty_tail_is_exactly_zero_for_both_sides():
    t, s = random_logits(1, 2, 8, seed=5), random_logits(1, 2, 8, seed=6)
    ids, logp = teacher_topk(t, 8)
    lp, lq = sparse_logprobs(ids, logp, s)
    assert lp.shape == lq.shape == (1, 2, 9)
    assert bool((lp[..., -1] == float("-inf")).all()) and bool((lq[..., -1] == float("-inf")).all())


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_confident_teacher_with_k_below_vocabulary_stays_finite(kind):
    """When the top-k sum rounds to 1 (k < V), the teacher tail is floored, never log(0)."""
    t = random_logits(2, 3, 20, dtype=torch.float32, seed=7)
    t[..., 0] += 60.0  # one token takes all the mass the float32 sum can resolve
    s = random_logits(2, 3, 20, dtype=torch.float32, seed=8).requires_grad_()
    ids, logp = teacher_topk(t, 4)
    assert float(logp.exp().sum(-1).min()) >= 1.0 - 1e-7
    tail = teacher_tail_logprob(logp)
    assert bool(torch.isfinite(tail).all())
    loss = sparse_divergence(ids, logp, s, kind=kind)
    (grad,) = torch.autograd.grad(loss, [s])
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(grad).all())


def test_tail_is_accurate_when_small():
    logp = torch.log(torch.tensor([0.5, 0.3, 0.2 - 1e-9], dtype=torch.float64))
    expected = torch.log(torch.tensor([1e-9], dtype=torch.float64))
    torch.testing.assert_close(teacher_tail_logprob(logp), expected, rtol=1e-6, atol=0)


def test_sparse_is_a_lower_bound_of_dense_kl():
    """Merging tokens into buckets can only lower a KL (data processing)."""
    t, s = random_logits(3, 4, 50, seed=9), random_logits(3, 4, 50, seed=10)
    dense = per_token_divergence_from_logprobs(torch.log_softmax(t, -1), torch.log_softmax(s, -1), kind="forward_kl")
    previous = torch.zeros_like(dense)
    for k in (1, 5, 20, 49, 50):
        ids, logp = teacher_topk(t, k)
        lp, lq = sparse_logprobs(ids, logp, s)
        value = per_token_divergence_from_logprobs(lp, lq, kind="forward_kl")
        assert bool((value <= dense + 1e-12).all()) and bool((value >= previous - 1e-12).all())
        previous = value
    torch.testing.assert_close(previous, dense, atol=1e-12, rtol=0)


def test_all_masked_batch_and_padded_student_vocabulary():
    t, s = random_logits(2, 3, 16, seed=11), random_logits(2, 3, 20, seed=12).requires_grad_()
    ids, logp = teacher_topk(t, 16)
    loss = sparse_divergence(ids, logp, s, torch.zeros(2, 3), vocab_size=16)
    assert loss.item() == 0.0
    full = sparse_divergence(ids, logp, s, vocab_size=16)
    torch.testing.assert_close(full, divergence(t, s[..., :16]), atol=1e-12, rtol=0)


def test_bad_inputs_raise():
    s = torch.zeros(1, 2, 10)
    ids = torch.tensor([[[0, 12], [1, 2]]])
    with pytest.raises(DistillError, match="< the vocabulary size 10"):
        sparse_divergence(ids, torch.zeros(1, 2, 2), s)
    with pytest.raises(DistillError, match="do not line up"):
        sparse_divergence(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 2), s)
    with pytest.raises(DistillError, match="vocab_size 11"):
        sparse_divergence(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2), s, vocab_size=11)
    with pytest.raises(DistillError, match="unknown kind"):
        sparse_divergence(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2), s, kind="chi2")
