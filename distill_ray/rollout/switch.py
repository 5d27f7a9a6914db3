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

Which model drafts follows the position: the student early, where tau_t is high, the teacher
late, where it is low. Writers come in runs (tau_t decays, so a response is mostly student
first and mostly teacher later), so by default the writer of the previous token drafts the
next block (for a batch, the majority of the rows' last writers); `handover` instead fixes the
response position from which the teacher drafts. Teacher drafts may be given their own
length (`teacher_draft_tokens`: a teacher step costs several student steps, so a cut-short
teacher draft wastes more; with runs as long as SWITCH's, the same length measured best).
Drafting stops early once every row has drafted an EOS, since nothing after an EOS is kept.

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
from distill_ray.rollout.decode import ResponseBuffer, expand_prompts, left_pad, prefill, stop_counts
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
        self.adaptive = adaptive  # adapt each model's draft length to its recent runs (the lengths are then maxima)
        self._k_carry: dict[bool, int] = {}  # adaptive: the draft lengths the last call ended with
        self.policy_version = 0

    # ------------------------------------------------------------------ the rule

    def _decide(self, teacher_logp: torch.Tensor, student_logp: torch.Tensor, position: torch.Tensor):
        """(jsd [...], teacher_writes [...] bool): switch_rule.teacher_writes, keeping the JSD."""
        d = jsd_from_logprobs(teacher_logp, student_logp).double()
        return d, d > switch_threshold(position, self.tau0, self.decay).to(d.device)

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
        pending = prefill([teacher, student], prompt_ids, prompt_mask)
        out = ResponseBuffer(B, sampling.max_new_tokens)
        active = torch.arange(B)
        for t in range(sampling.max_new_tokens):
            t_logits = teacher.feed(pending[:, None], last_only=True)[:, 0]  # [A, V]
            s_logits = student.feed(pending[:, None], last_only=True)[:, 0]
            t_logp, s_logp = t_logits.log_softmax(-1), s_logits.log_softmax(-1)
            dev = t_logits.device
            _, on_device = self._decide(t_logp, s_logp, torch.tensor(t))
            teacher_writes = on_device.cpu()  # bookkeeping lives on the CPU, logits on the model's device
            stream = torch.where(teacher_writes, TEACHER_STREAM, STUDENT_STREAM)
            u = keyed_uniform(sampling.seed, keys[active], torch.full_like(active, t), stream)
            logits = torch.where(on_device[:, None], t_logits, s_logits)
            token = sample_tokens(logits, u, sampling.temperature, sampling.top_p).cpu()
            ones = torch.ones_like(active)
            counts, finished = stop_counts(
                token[:, None], ones, torch.full_like(active, sampling.max_new_tokens - t), self.eos_token_id
            )
            out.write(active, token[:, None], s_logp.gather(1, token.to(dev)[:, None]), teacher_writes[:, None], counts)
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
        row's last token (False before the first token: tau_t is highest at the start).
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
    ) -> RolloutBatch:
        """Draft a block with one model, check it with the other in one pass, keep the valid prefix.

        draft_tokens overrides both block lengths (student and teacher drafts) for this call.
        """
        start = time.perf_counter()
        k_student = draft_tokens or self.draft_tokens
        k_teacher = draft_tokens or self.teacher_draft_tokens or self.draft_tokens
        rows, index, keys = expand_prompts(prompts, prompt_index, sampling.samples_per_prompt)
        prompt_ids, prompt_mask = left_pad(rows, self.pad_token_id)
        B = len(rows)
        caches = {True: SlotCache(self.teacher, B), False: SlotCache(self.student, B)}  # keyed by "is teacher"
        pending = prefill(list(caches.values()), prompt_ids, prompt_mask)
        out = ResponseBuffer(B, sampling.max_new_tokens)
        active = torch.arange(B)
        position = torch.zeros(B, dtype=torch.long)  # response tokens accepted so far, per active row
        last_writer = torch.zeros(B, dtype=torch.bool)  # True: the teacher wrote the row's last token
        rounds = drafted = 0
        k_max = {True: k_teacher, False: k_student}
        # draft length per drafter: adaptive lengths carry over from the previous call (a short
        # response gives too few rounds to learn the run lengths from scratch)
        k_now = {d: min(k, self._k_carry.get(d, k)) if self.adaptive else k for d, k in k_max.items()}
        while len(active):
            room = sampling.max_new_tokens - position  # [A] >= 1
            teacher_drafts = self._teacher_drafts(position, last_writer)
            block = min(k_now[teacher_drafts], int(room.max()))
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
            # check: the same block in one forward pass
            c_logits = checker.feed(fed)  # [A, block, V]
            dev = c_logits.device
            drafted += block * len(active)

            d_logp, c_logp = d_logits.log_softmax(-1), c_logits.log_softmax(-1)
            t_logp, s_logp = (d_logp, c_logp) if teacher_drafts else (c_logp, d_logp)
            teacher_writes = self._decide(t_logp, s_logp, positions)[1].cpu()  # [A, block]
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
            if self.adaptive:
                k_now[teacher_drafts] = self._next_draft_length(k_now[teacher_drafts], k_max[teacher_drafts], block, n_ok)
            counts, finished = stop_counts(draft, accepted, room, self.eos_token_id)
            writers = torch.where(torch.arange(block)[None, :] < n_ok[:, None], teacher_drafts, not teacher_drafts)
            out.write(active, draft, s_logp.gather(2, draft.to(dev)[:, :, None])[:, :, 0], writers, counts)
            last_writer = writers[torch.arange(len(active)), counts - 1]

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
            active, pending, position, last_writer = active[alive], pending[alive], position[alive], last_writer[alive]
            rounds += 1
        self._k_carry = k_now
        metrics = self._metrics(out, prompt_mask, time.perf_counter() - start, rounds=rounds, drafted=drafted)
        return out.to_batch(prompt_ids, prompt_mask, index, self.policy_version, metrics, self.pad_token_id)

    @staticmethod
    def _next_draft_length(k: int, k_max: int, block: int, n_ok: torch.Tensor) -> int:
        """The drafter's next draft length from this round: every row kept the whole block, so
        its run may go on: twice as long (up to k_max); else the rows' mean run length plus one
        (the position the drafter lost), so the next draft ends about where a run ends."""
        if bool((n_ok >= block).all()):
            return min(k_max, max(2 * block, k))
        return max(1, min(k_max, round(float(n_ok.double().mean())) + 1))

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
