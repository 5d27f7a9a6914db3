"""SWITCH generation on the torch backend: the sequential reference and the drafted generator.

At response position t both models give next-token distributions; the teacher writes token t
when JSD(p_t, q_t) > tau_t = tau0 * exp(-decay * t) (`switch_rule`), otherwise the student
does. The rule compares the models' own distributions (log_softmax of the logits, temperature
1, no top-p); the writer then samples with the configured temperature and top-p.

Sequential: both models advance one token per step (a KV-cached forward each).

Drafted: one model (the drafter) samples k tokens one at a time; the other (the checker)
scores all k positions in one forward pass. Going left to right, the first position whose
writer is not the drafter gets the checker's sample instead, and the rest of the draft is
dropped; every position before it was written by the right model with the right prefix.

Which model drafts, and how long a block: with `adaptive` (the default of the pipeline), a
cost model (`rollout.draft_policy`) picks both each round from the writer runs seen so far and
the measured cost of a drafted token and of a check: the expected tokens per second of each
choice, for every row's last writer and run so far. Without it, the writer of the previous
token drafts (for a batch, the majority of the rows' last writers) a block of `draft_tokens`
(`teacher_draft_tokens` for the teacher); `handover` instead fixes the response position from
which the teacher drafts. Drafting stops early once every row has drafted an EOS, since nothing
after an EOS is kept. `generate_drafted(plan=...)` follows given writer sequences instead: a
drafter that knows every run in advance, the ceiling the benchmark measures the policy against.

Both use position-keyed draws (`sampling.keyed_uniform`), so drafted and sequential give the
same tokens and writers, token for token: the drafter's token at position t is the same draw
the sequential generator would make if that model wrote t, and a rejected draft is rolled back
from both KV caches before anything depends on it.
"""

from __future__ import annotations

import time

import torch
from transformers import PreTrainedModel

from distill_ray.batch import RolloutBatch
from distill_ray.errors import DistillError
from distill_ray.rollout.decode import ResponseBuffer, expand_prompts, left_pad, prefill_all, stop_counts
from distill_ray.rollout.draft_policy import DraftPolicy
from distill_ray.rollout.kv import SlotCache
from distill_ray.rollout.sampling import (
    STUDENT_STREAM,
    TEACHER_STREAM,
    SamplingConfig,
    keyed_uniform,
    sample_tokens,
)
from distill_ray.rollout.switch_rule import jsd_from_logprobs, switch_threshold, teacher_fraction


class SwitchGenerator:
    """SWITCH sequences from a teacher and a student that share a vocabulary (torch backend).

    generate_sequential / generate_drafted return a RolloutBatch whose writer_mask marks the
    teacher's tokens and whose logprobs are the student's log-probs of every response token.
    """

    def __init__(
        self,
        teacher: PreTrainedModel,
        student: PreTrainedModel,
        *,
        tau0: float,
        decay: float,
        eos_token_id: int | None,
        pad_token_id: int = 0,
        draft_tokens: int = 8,
        teacher_draft_tokens: int | None = None,
        handover: int | None = None,
        adaptive: bool = False,
    ):
        if teacher.config.vocab_size != student.config.vocab_size:
            raise DistillError(
                f"switch: teacher vocab {teacher.config.vocab_size} != student vocab {student.config.vocab_size}"
            )
        if draft_tokens <= 0 or (teacher_draft_tokens is not None and teacher_draft_tokens <= 0):
            raise DistillError(f"switch.draft_tokens: must be positive, got {draft_tokens}, {teacher_draft_tokens}")
        self.teacher, self.student = teacher.eval(), student.eval()
        self.tau0, self.decay = tau0, decay
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self.draft_tokens = draft_tokens  # tokens per student draft
        self.teacher_draft_tokens = teacher_draft_tokens  # tokens per teacher draft (None: draft_tokens)
        self.handover = handover  # response position from which the teacher drafts (None: the last writer drafts)
        self.adaptive = adaptive  # a cost model picks drafter and block length (the lengths are then maxima)
        self.policy = DraftPolicy(
            sum(p.numel() for p in student.parameters()), sum(p.numel() for p in teacher.parameters())
        )
        self.policy_version = 0

    # ------------------------------------------------------------------ the rule

    def _decide(self, teacher_logp: torch.Tensor, student_logp: torch.Tensor, position: torch.Tensor):
        """(jsd [...], teacher_writes [...] bool): switch_rule.teacher_writes, keeping the JSD."""
        d = jsd_from_logprobs(teacher_logp, student_logp).double()
        return d, d > switch_threshold(position, self.tau0, self.decay).to(d.device)

    def _step(self, t_logits: torch.Tensor, s_logits: torch.Tensor, position: int, keys: torch.Tensor,
              sampling: SamplingConfig):
        """One token from both models' logits [A, V] at one response position.

        Returns (token [A], teacher_writes [A] bool, the student's log-prob of the token [A]), on the CPU.
        """
        t_logp, s_logp = t_logits.log_softmax(-1), s_logits.log_softmax(-1)
        _, on_device = self._decide(t_logp, s_logp, torch.tensor(position))
        teacher_writes = on_device.cpu()  # bookkeeping lives on the CPU, logits on the model's device
        stream = torch.where(teacher_writes, TEACHER_STREAM, STUDENT_STREAM)
        u = keyed_uniform(sampling.seed, keys, torch.full_like(keys, position), stream)
        logits = torch.where(on_device[:, None], t_logits, s_logits)
        token = sample_tokens(logits, u, sampling.temperature, sampling.top_p)
        return token.cpu(), teacher_writes, s_logp.gather(1, token[:, None])[:, 0].cpu()

    # ------------------------------------------------------------------ sequential reference

    @torch.inference_mode()
    def generate_sequential(
        self, prompts: list[list[int]], sampling: SamplingConfig, prompt_index: list[int] | None = None
    ) -> RolloutBatch:
        """Both models step one token at a time; the rule picks who samples each token."""
        start = time.perf_counter()
        rows, index, keys = expand_prompts(prompts, prompt_index, sampling.samples_per_prompt)
        prompt_ids, prompt_mask = left_pad(rows, self.pad_token_id)
        B = len(rows)
        teacher, student = SlotCache(self.teacher, B), SlotCache(self.student, B)
        t_logits, s_logits = prefill_all([teacher, student], prompt_ids, prompt_mask)  # position 0
        out = ResponseBuffer(B, sampling.max_new_tokens)
        active = torch.arange(B)
        for t in range(sampling.max_new_tokens):
            if t:
                t_logits = teacher.feed(pending[:, None], last_only=True)[:, 0]  # [A, V]
                s_logits = student.feed(pending[:, None], last_only=True)[:, 0]
            token, teacher_writes, s_logp = self._step(t_logits, s_logits, t, keys[active], sampling)
            ones = torch.ones_like(active)
            counts, finished = stop_counts(
                token[:, None], ones, torch.full_like(active, sampling.max_new_tokens - t), self.eos_token_id
            )
            out.write(active, token[:, None], s_logp[:, None], teacher_writes[:, None], counts)
            keep = (~finished).nonzero().squeeze(1)
            if len(keep) < len(active):
                teacher.select_rows(keep)
                student.select_rows(keep)
            active, pending = active[keep], token[keep]
            if not len(active):
                break
        metrics = self._metrics(out, prompt_mask, time.perf_counter() - start, rounds=t + 1, drafted=0)
        return out.to_batch(prompt_ids, prompt_mask, index, self.policy_version, metrics, self.pad_token_id)

    # ------------------------------------------------------------------ drafted

    def _teacher_drafts(self, positions: torch.Tensor, last_writer: torch.Tensor) -> bool:
        """Which model drafts this round: one choice for the batch (any choice gives the same tokens).

        positions: [A] response tokens so far; last_writer: [A] bool, True if the teacher wrote the
        row's last token.
        """
        if self.handover is not None:
            return float(positions.double().median()) >= self.handover
        return float(last_writer.double().mean()) > 0.5

    @torch.inference_mode()
    def generate_drafted(
        self,
        prompts: list[list[int]],
        sampling: SamplingConfig,
        prompt_index: list[int] | None = None,
        draft_tokens: int | None = None,
        plan: list[list[bool]] | None = None,
    ) -> RolloutBatch:
        """Draft a block with one model, check it with the other in one pass, keep the valid prefix.

        draft_tokens overrides both block lengths (student and teacher drafts) for this call.
        plan: for one row only, the writers the response will have (True = teacher, e.g. from
        generate_sequential): each round then drafts exactly the next run, whole, with its writer:
        what a schedule that knew the runs in advance would do (the benchmark's ceiling for the
        adaptive schedule; the tokens are the same either way).
        """
        start = time.perf_counter()
        k_student = draft_tokens or self.draft_tokens
        k_teacher = draft_tokens or self.teacher_draft_tokens or self.draft_tokens
        rows, index, keys = expand_prompts(prompts, prompt_index, sampling.samples_per_prompt)
        if plan is not None and (len(rows) != 1 or len(plan) != 1):
            raise DistillError(f"switch: a plan is for one row, got {len(rows)} rows and {len(plan)} plans")
        prompt_ids, prompt_mask = left_pad(rows, self.pad_token_id)
        B = len(rows)
        caches = {True: SlotCache(self.teacher, B), False: SlotCache(self.student, B)}  # keyed by "is teacher"
        # position 0: both distributions come with the prompt's pass, so it costs no draft
        t_logits, s_logits = prefill_all([caches[True], caches[False]], prompt_ids, prompt_mask)
        out = ResponseBuffer(B, sampling.max_new_tokens)
        pending, last_writer, s_logp0 = self._step(t_logits, s_logits, 0, keys, sampling)
        counts, finished = stop_counts(pending[:, None], torch.ones(B, dtype=torch.long),
                                       torch.full((B,), sampling.max_new_tokens), self.eos_token_id)
        out.write(torch.arange(B), pending[:, None], s_logp0[:, None], last_writer[:, None], counts)
        active = (~finished).nonzero().squeeze(1)
        if len(active) < B:
            for cache in caches.values():
                cache.select_rows(active)
        pending, last_writer = pending[active], last_writer[active]  # True: the teacher wrote the row's last token
        position = torch.ones(len(active), dtype=torch.long)  # response tokens accepted so far, per active row
        run = torch.ones(len(active), dtype=torch.long)  # tokens of the row's current writer run
        first_run = torch.ones(len(active), dtype=torch.bool)  # the current run is the response's first
        rounds = drafted = 0
        k_max = {True: k_teacher, False: k_student}
        while len(active):
            choice_start = time.perf_counter()
            room = sampling.max_new_tokens - position  # [A] >= 1
            if plan is not None:
                teacher_drafts, block = self._planned(plan[0], int(position[0]))
            elif self.adaptive and self.handover is None:
                teacher_drafts, block = self.policy.choose(last_writer, run, first_run, (k_max[False], k_max[True]))
            else:
                teacher_drafts = self._teacher_drafts(position, last_writer)
                block = k_max[teacher_drafts]
            block = min(block, int(room.max()))
            round_start = time.perf_counter()
            drafter, checker = caches[teacher_drafts], caches[not teacher_drafts]
            d_stream = TEACHER_STREAM if teacher_drafts else STUDENT_STREAM
            c_stream = STUDENT_STREAM if teacher_drafts else TEACHER_STREAM
            positions = position[:, None] + torch.arange(block)[None, :]  # [A, block]

            # draft: feed [pending, z_0 .. z_{block-2}], one token at a time
            fed = torch.empty((len(active), block), dtype=torch.long)
            draft = torch.empty((len(active), block), dtype=torch.long)
            d_logits = []
            current = pending
            drafted_eos = torch.zeros(len(active), dtype=torch.bool)
            for j in range(block):
                fed[:, j] = current
                logits = drafter.feed(current[:, None], last_only=True)[:, 0]  # [A, V]
                u = keyed_uniform(sampling.seed, keys[active], positions[:, j], d_stream)
                current = sample_tokens(logits, u, sampling.temperature, sampling.top_p).cpu()
                draft[:, j] = current
                d_logits.append(logits)
                if self.eos_token_id is not None:
                    drafted_eos |= current == self.eos_token_id
                    if bool(drafted_eos.all()):  # nothing after an EOS is ever kept
                        break
            block = len(d_logits)
            fed, draft, positions = fed[:, :block], draft[:, :block], positions[:, :block]
            d_logits = torch.stack(d_logits, 1)  # [A, block, V]
            draft_s = time.perf_counter() - round_start
            # check: the same block in one forward pass
            c_logits = checker.feed(fed)  # [A, block, V]
            dev = c_logits.device
            drafted += block * len(active)

            d_logp, c_logp = d_logits.log_softmax(-1), c_logits.log_softmax(-1)
            t_logp, s_logp = (d_logp, c_logp) if teacher_drafts else (c_logp, d_logp)
            teacher_writes = self._decide(t_logp, s_logp, positions)[1].cpu()  # [A, block]
            check_s = time.perf_counter() - round_start - draft_s
            drafter_ok = teacher_writes == teacher_drafts
            n_ok = drafter_ok.long().cumprod(1).sum(1)  # [A] leading positions the drafter rightly wrote
            rejected = n_ok < block
            # the first wrong position gets the checker's own draw at that position
            rows_r = rejected.nonzero().squeeze(1)
            if len(rows_r):
                at = n_ok[rows_r]
                u = keyed_uniform(sampling.seed, keys[active][rows_r], positions[rows_r, at], c_stream)
                logits = c_logits[rows_r.to(dev), at.to(dev)]
                draft[rows_r, at] = sample_tokens(logits, u, sampling.temperature, sampling.top_p).cpu()
            accepted = torch.where(rejected, n_ok + 1, n_ok)
            counts, finished = stop_counts(draft, accepted, room, self.eos_token_id)
            writers = torch.where(torch.arange(block)[None, :] < n_ok[:, None], teacher_drafts, not teacher_drafts)
            out.write(active, draft, s_logp.gather(2, draft.to(dev)[:, :, None])[:, :, 0], writers, counts)
            new_last = writers[torch.arange(len(active)), counts - 1]
            # the row's current run: the drafter's kept tokens extend it, a checker's token starts one
            trailing = torch.where(new_last == teacher_drafts, counts, torch.ones_like(counts))
            continuing = (new_last == last_writer) & (trailing == counts)
            first_run = first_run & continuing
            run = torch.where(continuing, run + counts, trailing)
            last_writer = new_last

            # roll back: slots hold [pending, z_0 ..]; slot j+1 (z_j) survives only if z_j was kept
            keep_slots = torch.minimum(n_ok + 1, torch.tensor(block))
            for cache in caches.values():
                cache.rollback(keep_slots, block)
            pending = draft[torch.arange(len(active)), (counts - 1).clamp(min=0)]
            position = position + counts
            alive = (~finished).nonzero().squeeze(1)
            if len(alive) < len(active):
                for cache in caches.values():
                    cache.select_rows(alive)
            active, pending, position = active[alive], pending[alive], position[alive]
            last_writer, run, first_run = last_writer[alive], run[alive], first_run[alive]
            rounds += 1
            if self.adaptive:
                self.policy.record_round(int(teacher_drafts), block, draft_s, check_s,
                                         time.perf_counter() - choice_start)
        if self.adaptive:
            self.policy.learn(out.writers, out.lengths)
        metrics = self._metrics(out, prompt_mask, time.perf_counter() - start, rounds=rounds, drafted=drafted)
        return out.to_batch(prompt_ids, prompt_mask, index, self.policy_version, metrics, self.pad_token_id)

    @staticmethod
    def _planned(plan: list[bool], position: int) -> tuple[bool, int]:
        """(teacher drafts, block) from known writers: the run that starts at `position`, whole,
        plus the next run's first token when that is cheaper: the check then gives it for free,
        at the price of one more draft step (worth it when the student drafts, whose steps are
        the cheaper, and when the next run is one token, whose round it saves)."""
        if position >= len(plan):  # past the plan (a different response): one token at a time
            return False, 1
        writer, end = plan[position], position
        while end < len(plan) and plan[end] == writer:
            end += 1
        if end < len(plan):
            next_end = end + 1
            while next_end < len(plan) and plan[next_end] == plan[end]:
                next_end += 1
            if not writer or next_end - end == 1:
                end += 1
        return bool(writer), end - position

    # ------------------------------------------------------------------ metrics

    @staticmethod
    def _metrics(out: ResponseBuffer, prompt_mask: torch.Tensor, seconds: float, rounds: int, drafted: int) -> dict:
        tokens = int(out.lengths.sum())
        mask = torch.arange(out.tokens.shape[1])[None, :] < out.lengths[:, None]
        metrics = {
            "timing/generate": seconds,
            "tokens/response": float(tokens),
            "tokens/prompt": float(prompt_mask.sum()),
            "switch/teacher_fraction": teacher_fraction(out.writers, mask)["overall"],
            "switch/rounds": float(rounds),
        }
        if drafted:
            metrics["switch/draft_tokens"] = float(drafted)
            metrics["switch/tokens_per_round"] = tokens / max(rounds, 1)
        return metrics
