"""SWITCH from top-k log-probabilities: a vLLM student drafts, a (remote) teacher checks.

This is the SWITCH generator for engines that expose top-k log-probabilities rather than
logits (vLLM). Each round the student drafts up to k tokens after every active row's prefix
(`draft_topk`, with its own top-K at each step), the teacher scores those positions in one
pass (`score_topk`, vLLM prompt_logprobs), and the rule is applied left to right: the first
position where the teacher should write gets a teacher token and the rest of the draft is
dropped. The teacher never generates, so it can be any `TeacherScorer` (the design's "handle
to teacher scorers"). Writers come in runs, so after a teacher token the student drafts a
single token (a longer draft would most likely be thrown away), and after a student token a
full block.

Approximations, compared with the exact torch `SwitchGenerator`:
1. d_t is `topk_jsd`: JSD over the teacher's top-K plus one tail bucket (a lower bound of the
   exact JSD); the student's probabilities at the teacher's ids come from the student's own
   top-K, the rest of its mass spread evenly (`topk_jsd.logprobs_at`).
2. A teacher token is drawn from the teacher's top-K only (renormalised; temperature and top-p
   applied on top), with the position-keyed teacher draw.
3. The student's draws come from vLLM's seeded sampler, not the torch backend's keyed draws,
   so tokens are not comparable with the torch backend's (the distribution is the same).
With K equal to the vocabulary and torch engines on both sides, 1 and 2 vanish and 3 does not
apply: the output equals `SwitchGenerator`'s token for token (tested), which checks the logic.
"""

from __future__ import annotations

import time
from typing import Protocol

import torch

from distill_ray.batch import RolloutBatch
from distill_ray.rollout.decode import expand_prompts
from distill_ray.rollout.engines import Draft
from distill_ray.rollout.sampling import TEACHER_STREAM, SamplingConfig, keyed_uniform, sample_tokens
from distill_ray.rollout.switch_rule import switch_threshold
from distill_ray.rollout.topk_jsd import logprobs_at, topk_jsd


class DraftingEngine(Protocol):
    policy_version: int

    def draft_topk(self, prefixes: list[list[int]], keys: list[int], positions: list[int], max_tokens: list[int],
                   sampling: SamplingConfig, k: int) -> list[Draft]: ...

    def token_logprobs(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[list[float]]: ...


class TopkScorer(Protocol):
    def score_topk(self, sequences: list[list[int]], prompt_lens: list[int], k: int) -> tuple[torch.Tensor, torch.Tensor]: ...


class RemoteTeacher:
    """A `TeacherScorer` actor handle seen as a local scorer (blocks on each call)."""

    def __init__(self, handle):
        self.handle = handle

    def score_topk(self, sequences: list[list[int]], prompt_lens: list[int], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        import ray

        return ray.get(self.handle.score_topk.remote(sequences, prompt_lens, k))


class TopkSwitchGenerator:
    """SWITCH sequences from a drafting student engine and a top-k teacher scorer."""

    def __init__(
        self,
        student: DraftingEngine,
        teacher: TopkScorer,
        *,
        vocab_size: int,
        tau0: float,
        decay: float,
        eos_token_id: int | None,
        pad_token_id: int = 0,
        draft_tokens: int = 4,
        topk: int = 64,
    ):
        self.student, self.teacher = student, teacher
        self.vocab_size = vocab_size
        self.tau0, self.decay = tau0, decay
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self.draft_tokens, self.topk = draft_tokens, topk

    def _teacher_token(self, ids: torch.Tensor, logp: torch.Tensor, sampling: SamplingConfig, key: int, position: int) -> int:
        """A teacher draw from its top-k (ids [k], logp [k]), keyed like the torch backend's teacher draws."""
        dense = torch.full((1, self.vocab_size), float("-inf"), dtype=torch.float64)
        dense[0, ids] = logp.double()
        u = keyed_uniform(sampling.seed, torch.tensor([key]), torch.tensor([position]), TEACHER_STREAM)
        return int(sample_tokens(dense, u, sampling.temperature, sampling.top_p)[0])

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig, prompt_index: list[int] | None = None) -> RolloutBatch:
        start = time.perf_counter()
        rows, index, keys = expand_prompts(prompts, prompt_index, sampling.samples_per_prompt)
        B = len(rows)
        responses: list[list[int]] = [[] for _ in range(B)]
        writers: list[list[bool]] = [[] for _ in range(B)]
        logprobs: list[list[float | None]] = [[] for _ in range(B)]
        active = list(range(B))
        rounds = 0
        while active:
            positions = [len(responses[b]) for b in active]
            room = [sampling.max_new_tokens - p for p in positions]
            lengths = [1 if writers[b] and writers[b][-1] else min(self.draft_tokens, r) for b, r in zip(active, room)]
            prefixes = [rows[b] + responses[b] for b in active]
            drafts = self.student.draft_topk(
                prefixes, [int(keys[b]) for b in active], positions, lengths, sampling, self.topk
            )
            t_ids, t_logp = self.teacher.score_topk(
                [p + d.tokens for p, d in zip(prefixes, drafts)], [len(p) for p in prefixes], self.topk
            )
            still = []
            for r, b in enumerate(active):
                draft, n = drafts[r], len(drafts[r].tokens)
                s_logp = logprobs_at(t_ids[r, :n], draft.topk_ids, draft.topk_logprobs, self.vocab_size)
                d = topk_jsd(t_logp[r, :n], s_logp)  # [n]
                teacher = d > switch_threshold(torch.arange(positions[r], positions[r] + n), self.tau0, self.decay)
                first = int(teacher.long().argmax()) if bool(teacher.any()) else n
                responses[b] += draft.tokens[:first]
                writers[b] += [False] * first
                logprobs[b] += draft.logprobs[:first]
                if first < n:
                    token = self._teacher_token(t_ids[r, first], t_logp[r, first], sampling, int(keys[b]), positions[r] + first)
                    responses[b].append(token)
                    writers[b].append(True)
                    logprobs[b].append(None)  # the student's log-prob of a teacher token: scored below
                done = len(responses[b]) >= sampling.max_new_tokens or (
                    self.eos_token_id is not None and responses[b][-1] == self.eos_token_id
                )
                if not done:
                    still.append(b)
            active = still
            rounds += 1
        self._fill_student_logprobs(rows, responses, logprobs)
        frac = sum(map(sum, writers)) / max(sum(map(len, writers)), 1)
        metrics = {
            "timing/generate": time.perf_counter() - start,
            "tokens/response": float(sum(map(len, responses))),
            "tokens/prompt": float(sum(map(len, rows))),
            "switch/teacher_fraction": frac,
            "switch/rounds": float(rounds),
        }
        return RolloutBatch.from_lists(
            rows, responses, logprobs, index.tolist(), writers=writers,
            policy_version=self.student.policy_version, metrics=metrics, pad_id=self.pad_token_id,
        )

    def _fill_student_logprobs(self, rows, responses, logprobs) -> None:
        todo = [b for b in range(len(rows)) if any(lp is None for lp in logprobs[b])]
        if not todo:
            return
        scored = self.student.token_logprobs([rows[b] + responses[b] for b in todo], [len(rows[b]) for b in todo])
        for b, values in zip(todo, scored):
            logprobs[b] = [v if lp is None else lp for v, lp in zip(values, logprobs[b])]
