"""teacher_closeness (distill-ray eval --teacher, eval.teacher_kl): KL(teacher || student) per
response token and both perplexities, against a float64 computation written out here."""

from __future__ import annotations

import math

import pytest
import torch

from distill_ray.data.encoding import encode_examples
from distill_ray.data.loading import Example
from distill_ray.eval.evaluate import teacher_closeness
from distill_ray.models.build import ModelShape, build_causal_lm
from distill_ray.models.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def setup():
    tok = train_tokenizer([f"count to {i} : {' '.join(map(str, range(i)))}" for i in range(40)], vocab_size=200)
    kw = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    teacher = build_causal_lm("llama", ModelShape(32, 2, 2, 64, max_position_embeddings=64), len(tok), seed=1, **kw).eval()
    student = build_causal_lm("llama", ModelShape(32, 1, 2, 64, max_position_embeddings=64), len(tok), seed=2, **kw).eval()
    rows, _ = encode_examples([Example(f"count to {i}", " ".join(map(str, range(i)))) for i in (2, 5, 9)], tok,
                              "{prompt} :", 64, 64)
    return tok, teacher, student, rows


def test_kl_and_perplexities_match_a_float64_reference(setup):
    tok, teacher, student, rows = setup
    got = teacher_closeness(student, teacher, rows, pad_token_id=tok.pad_token_id, batch_size=2)  # padding in a batch
    kl = nll_s = nll_t = 0.0
    n = 0
    with torch.no_grad():
        for r in rows:  # one row at a time: no padding at all
            ids = torch.tensor([r.prompt_ids + r.response_ids])
            lt = torch.log_softmax(teacher(input_ids=ids).logits[0].double(), -1)
            ls = torch.log_softmax(student(input_ids=ids).logits[0].double(), -1)
            for t in range(len(r.prompt_ids) - 1, ids.shape[1] - 1):  # positions predicting response tokens
                kl += float((lt[t].exp() * (lt[t] - ls[t])).sum())
                nll_s -= float(ls[t, ids[0, t + 1]])
                nll_t -= float(lt[t, ids[0, t + 1]])
                n += 1
    assert got["tokens"] == n == sum(len(r.response_ids) for r in rows)
    assert got["kl_teacher_student_per_token"] == pytest.approx(kl / n, rel=1e-4)
    assert got["student_perplexity"] == pytest.approx(math.exp(nll_s / n), rel=1e-4)
    assert got["teacher_perplexity"] == pytest.approx(math.exp(nll_t / n), rel=1e-4)


def test_a_model_is_at_kl_zero_from_itself(setup):
    tok, teacher, _, rows = setup
    got = teacher_closeness(teacher, teacher, rows, pad_token_id=tok.pad_token_id)
    assert abs(got["kl_teacher_student_per_token"]) < 1e-6
    assert got["student_perplexity"] == pytest.approx(got["teacher_perplexity"])
