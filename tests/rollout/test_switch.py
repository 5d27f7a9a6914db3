"""SWITCH generation: drafted == sequential, token for token, and the outputs mean what they say."""

from __future__ import annotations

import pytest
import torch

from distill_ray.errors import DistillError
from distill_ray.rollout.draft_policy import DraftPolicy, RunStats
from distill_ray.rollout.engines import TorchEngine
from distill_ray.rollout.sampling import SamplingConfig
from distill_ray.rollout.switch import SwitchGenerator
from distill_ray.rollout.switch_rule import jsd_from_logprobs, switch_threshold, teacher_fraction
from rollout_models import STUDENT_SHAPE, make_model

MAX_NEW = 32
# (tau0, decay): a constant threshold, two decaying ones, all-teacher (tau < 0) and
# all-student (tau0 above ln 2, with no decay)
SETTINGS = [(0.25, 0.0), (0.5, 0.05), (0.9, 0.1), (-1.0, 0.0), (1.0, 0.0)]


def same_rows(a, b) -> bool:
    return (
        torch.equal(a.response_ids, b.response_ids)
        and torch.equal(a.response_mask, b.response_mask)
        and torch.equal(a.writer_mask, b.writer_mask)
    )


@pytest.fixture(scope="module")
def sequential_runs(model_pair, prompts64):
    """The sequential reference for every setting, computed once."""
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=MAX_NEW, seed=7)
    runs = {}
    for tau0, decay in SETTINGS:
        gen = SwitchGenerator(model_pair.teacher, model_pair.student, tau0=tau0, decay=decay,
                              eos_token_id=model_pair.eos_token_id)
        runs[(tau0, decay)] = gen.generate_sequential(prompts64, sampling)
    return sampling, runs


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed", "adaptive"])
@pytest.mark.parametrize("k", [1, 4, 8])
@pytest.mark.parametrize("tau0,decay", SETTINGS)
def test_drafted_equals_sequential(model_pair, prompts64, sequential_runs, tau0, decay, k, adaptive):
    sampling, runs = sequential_runs
    reference = runs[(tau0, decay)]
    gen = SwitchGenerator(model_pair.teacher, model_pair.student, tau0=tau0, decay=decay,
                          eos_token_id=model_pair.eos_token_id, draft_tokens=k, adaptive=adaptive)
    drafted = gen.generate_drafted(prompts64, sampling)
    assert same_rows(drafted, reference)
    torch.testing.assert_close(drafted.logprobs, reference.logprobs, atol=1e-5, rtol=0)
    assert drafted.metrics["switch/teacher_fraction"] == reference.metrics["switch/teacher_fraction"]
    if k > 1:
        # drafting must actually save rounds (several tokens per check)
        assert drafted.metrics["switch/rounds"] < reference.metrics["switch/rounds"]


def test_adaptive_draft_length_drafts_less_where_writers_alternate(model_pair, prompts64, sequential_runs, monkeypatch):
    sampling, runs = sequential_runs
    drafted = {}
    for adaptive in (False, True):
        gen = SwitchGenerator(model_pair.teacher, model_pair.student, tau0=0.5, decay=0.05,
                              eos_token_id=model_pair.eos_token_id, draft_tokens=8, adaptive=adaptive)
        # the policy keeps its prior costs (proportional to parameters) instead of timing each round,
        # so its choices, and this count, do not depend on how busy the machine is
        monkeypatch.setattr(gen.policy, "record_round", lambda *args: None)
        drafted[adaptive] = gen.generate_drafted(prompts64, sampling)
        assert same_rows(drafted[adaptive], runs[(0.5, 0.05)])
    # fewer drafted tokens thrown away: the adaptive length follows the runs of each writer
    assert drafted[True].metrics["switch/draft_tokens"] < drafted[False].metrics["switch/draft_tokens"]


def test_run_stats_learn_how_runs_go_on():
    """20 responses: a student run of 10, then the teacher to the end (cut, not ended)."""
    stats = RunStats(prior_weight=0.1)
    writers = torch.tensor([[False] * 10 + [True] * 30] * 20)
    stats.update(RunStats.runs(writers, torch.full((20,), 40)))
    g = stats.continuation()
    assert (g[0, 1, 1:10] > 0.99).all()  # the student's first run goes on up to 10 tokens ...
    assert g[0, 1, 10] < 0.01  # ... and stops there
    assert (g[1, 0, 1:30] > 0.99).all()  # a cut run only says that it went on
    assert g[1, 1, 5] == pytest.approx(0.75)  # no teacher first runs seen: the prior
    assert RunStats.runs(torch.tensor([[True, True, False, True, True]]), torch.tensor([4])) == [
        (1, 1, 2, True), (0, 0, 1, True), (1, 0, 1, False)]


def test_policy_expected_tokens_and_choice():
    policy = DraftPolicy(student_params=100, teacher_params=1000)
    writers = torch.tensor([[False] * 10 + [True] * 30] * 20)
    policy.stats.update(RunStats.runs(writers, torch.full((20,), 40)))
    one = lambda *v: torch.tensor(list(v))  # noqa: E731
    # the student has written 3 tokens of a run that stops at 10: tokens 0..6 are its own, token 7
    # the teacher's (from the check), nothing more
    tokens = policy.expected_tokens(0, one(0), one(3), one(True), 10)
    assert tokens[:8].tolist() == pytest.approx([1, 2, 3, 4, 5, 6, 7, 8], abs=0.05)  # the prior leaves a trace
    assert tokens[9] == pytest.approx(8.0, abs=0.05)
    # the teacher drafting there gets only the first token (the student's run is not over)
    assert policy.expected_tokens(1, one(0), one(3), one(True), 4).tolist() == pytest.approx([1, 1, 1, 1], abs=0.01)
    # where the student's run ends (10 tokens), a teacher draft is kept
    assert policy.expected_tokens(1, one(0), one(10), one(True), 4)[3] == pytest.approx(4.0, abs=0.05)
    # measured costs: student steps cheap, the teacher's check dear -> the student drafts to its run's end
    policy.record_round(0, 4, draft_s=4e-3, check_s=3e-3, total_s=8e-3)
    policy.record_round(1, 4, draft_s=12e-3, check_s=1e-3, total_s=14e-3)
    assert policy.choose(one(False), one(3), one(True), (16, 16)) == (False, 8)
    assert policy.choose(one(False), one(10), one(True), (16, 16))[0] is True  # the teacher's turn
    assert policy.choose(one(True), one(5), one(False), (16, 16)) == (True, 16)  # teacher runs go on
    assert policy.choose(one(True), one(5), one(False), (16, 6)) == (True, 6)  # never above the maximum


def test_planned_drafts_follow_the_runs(model_pair, prompts64, sequential_runs):
    """A plan (the writers, known in advance) changes only the schedule: the same tokens, one
    round per run at most (a short next run can ride on the check)."""
    sampling, runs = sequential_runs
    reference = runs[(0.5, 0.05)]
    gen = SwitchGenerator(model_pair.teacher, model_pair.student, tau0=0.5, decay=0.05,
                          eos_token_id=model_pair.eos_token_id)
    for i in (0, 3, 9):
        r = int(reference.response_mask[i].sum())
        plan = reference.writer_mask[i, :r].tolist()
        one = gen.generate_drafted([prompts64[i]], sampling, prompt_index=[i], plan=[plan])
        assert one.response_ids[0].tolist() == reference.response_ids[i, :r].tolist()
        assert one.writer_mask[0].tolist() == plan
        run_count = 1 + sum(a != b for a, b in zip(plan, plan[1:]))
        assert one.metrics["switch/rounds"] <= run_count  # position 0 comes with the prompt's pass
    with pytest.raises(DistillError, match="a plan is for one row"):
        gen.generate_drafted(prompts64[:2], sampling, plan=[[True], [False]])


def test_the_settings_cover_mixed_writers_and_eos(sequential_runs):
    _, runs = sequential_runs
    fractions = {key: run.metrics["switch/teacher_fraction"] for key, run in runs.items()}
    assert fractions[(-1.0, 0.0)] == 1.0 and fractions[(1.0, 0.0)] == 0.0
    for key in SETTINGS[:3]:
        assert 0.2 < fractions[key] < 0.8, (key, fractions[key])
    ref = runs[(0.5, 0.05)]
    lengths = ref.response_mask.sum(1)
    ended = (ref.response_ids == 2).any(1)
    assert ended.float().mean() > 0.1 and (lengths == MAX_NEW).any()  # some hit EOS, some the limit
    # EOS is the last token of the rows that have one
    assert torch.equal(ref.response_ids[ended, lengths[ended] - 1], torch.full((int(ended.sum()),), 2))


@pytest.mark.parametrize("mode", ["sequential", "drafted"])
def test_writers_follow_the_rule_and_logprobs_are_the_students(model_pair, prompts64, sequential_runs, mode):
    """Recompute both distributions by teacher forcing: the writer mask is exactly the rule."""
    sampling, runs = sequential_runs
    tau0, decay = 0.5, 0.05
    batch = runs[(tau0, decay)]
    if mode == "drafted":
        gen = SwitchGenerator(model_pair.teacher, model_pair.student, tau0=tau0, decay=decay,
                              eos_token_id=model_pair.eos_token_id, draft_tokens=4)
        batch = gen.generate_drafted(prompts64, sampling)
    seqs, plens = batch.sequences(), batch.prompt_lengths()
    t_logp = TorchEngine(model_pair.teacher).score_logprobs(seqs, plens)
    s_logp = TorchEngine(model_pair.student).score_logprobs(seqs, plens)
    R = batch.response_ids.shape[1]
    d = jsd_from_logprobs(t_logp, s_logp).double()
    rule = d > switch_threshold(torch.arange(R), tau0, decay)
    mask = batch.response_mask
    margin = (d - switch_threshold(torch.arange(R), tau0, decay)).abs() > 1e-5  # float noise between paths
    assert torch.equal(rule[mask & margin], batch.writer_mask[mask & margin])
    student_lp = s_logp.gather(2, batch.response_ids[..., None])[..., 0]
    torch.testing.assert_close(batch.logprobs[mask], student_lp[mask], atol=1e-4, rtol=0)
    frac = teacher_fraction(batch.writer_mask, batch.response_mask)
    assert frac["overall"] == pytest.approx(batch.metrics["switch/teacher_fraction"])
    assert len(frac["by_position"]) == R


def test_all_student_switch_is_plain_student_sampling(model_pair, prompts64, sequential_runs):
    """With tau0 > ln 2 the student writes everything: the same tokens as the plain student engine."""
    sampling, runs = sequential_runs
    plain = TorchEngine(model_pair.student, eos_token_id=model_pair.eos_token_id).generate(prompts64, sampling)
    assert same_rows(plain, runs[(1.0, 0.0)])


def test_batch_of_one_equals_batch_of_many(model_pair, prompts64, sequential_runs):
    """Rows do not depend on their batch (position-keyed draws; with one row every rollback is a crop)."""
    sampling, runs = sequential_runs
    gen = SwitchGenerator(model_pair.teacher, model_pair.student, tau0=0.5, decay=0.05,
                          eos_token_id=model_pair.eos_token_id, draft_tokens=8)
    reference = runs[(0.5, 0.05)]
    for i in (0, 5, 17):
        one = gen.generate_drafted([prompts64[i]], sampling, prompt_index=[i])
        r = int(one.response_mask.sum())
        assert one.response_ids[0, :r].tolist() == reference.response_ids[i, :r].tolist()
        assert one.writer_mask[0, :r].tolist() == reference.writer_mask[i, :r].tolist()
        assert r == int(reference.response_mask[i].sum())


def test_samples_per_prompt_and_fixed_handover(model_pair, prompts64):
    sampling = SamplingConfig(max_new_tokens=12, samples_per_prompt=3, seed=1, top_p=0.9)
    prompts = prompts64[:8]
    gen = SwitchGenerator(model_pair.teacher, model_pair.student, tau0=0.5, decay=0.05,
                          eos_token_id=model_pair.eos_token_id, draft_tokens=4, handover=6)
    seq = gen.generate_sequential(prompts, sampling, prompt_index=list(range(100, 108)))
    dr = gen.generate_drafted(prompts, sampling, prompt_index=list(range(100, 108)))
    assert same_rows(seq, dr)
    assert len(dr) == 24 and dr.prompt_index.tolist() == [100 + i // 3 for i in range(24)]
    # samples of one prompt differ
    assert not torch.equal(dr.response_ids[0], dr.response_ids[1])


def test_vocab_mismatch_is_refused(model_pair):
    from distill_ray.errors import DistillError
    other = make_model(STUDENT_SHAPE, seed=3)
    other.config.vocab_size = 99
    with pytest.raises(DistillError, match="vocab"):
        SwitchGenerator(model_pair.teacher, other, tau0=0.1, decay=0.1, eos_token_id=2)


@pytest.mark.parametrize("tau0,decay", [(0.5, 0.05), (0.25, 0.0), (-1.0, 0.0)])
def test_topk_switch_with_the_whole_vocabulary_is_exact(model_pair, prompts64, sequential_runs, tau0, decay):
    """The top-k SWITCH logic (the vLLM path), run on torch engines with k = V, equals exact SWITCH."""
    from distill_ray.rollout.switch_topk import TopkSwitchGenerator

    sampling, runs = sequential_runs
    gen = TopkSwitchGenerator(
        TorchEngine(model_pair.student, eos_token_id=2), TorchEngine(model_pair.teacher),
        vocab_size=128, tau0=tau0, decay=decay, eos_token_id=2, draft_tokens=4, topk=128,
    )
    prompts = prompts64[:24]
    batch = gen.generate(prompts, sampling)
    reference = runs[(tau0, decay)].select(list(range(24)))
    assert batch.responses() == reference.responses()
    assert batch.writer_mask[batch.response_mask].tolist() == reference.writer_mask[reference.response_mask].tolist()
    m = batch.response_mask
    torch.testing.assert_close(batch.logprobs[m], reference.logprobs[reference.response_mask], atol=1e-5, rtol=0)


def test_topk_switch_undercounts_teacher_tokens_with_a_small_k(model_pair, prompts64):
    """The top-k JSD is a lower bound, so a small k hands fewer tokens to the teacher."""
    from distill_ray.rollout.switch_topk import TopkSwitchGenerator

    sampling = SamplingConfig(max_new_tokens=16, seed=2)
    fractions = {}
    for k in (16, 128):
        gen = TopkSwitchGenerator(
            TorchEngine(model_pair.student, eos_token_id=2), TorchEngine(model_pair.teacher),
            vocab_size=128, tau0=0.25, decay=0.0, eos_token_id=2, topk=k,
        )
        fractions[k] = gen.generate(prompts64[:24], sampling).metrics["switch/teacher_fraction"]
    assert fractions[16] < fractions[128]


@pytest.mark.parametrize("k_student,k_teacher", [(8, 2), (3, 8)])
def test_separate_teacher_draft_length_keeps_exactness(model_pair, prompts64, sequential_runs, k_student, k_teacher):
    sampling, runs = sequential_runs
    gen = SwitchGenerator(model_pair.teacher, model_pair.student, tau0=0.9, decay=0.1,
                          eos_token_id=model_pair.eos_token_id, draft_tokens=k_student, teacher_draft_tokens=k_teacher)
    assert same_rows(gen.generate_drafted(prompts64, sampling), runs[(0.9, 0.1)])
