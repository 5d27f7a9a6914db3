"""`RolloutBatch`: the one batch type that crosses actor boundaries (rollout -> queue -> trainer).

Layout, for B sequences (rows are prompt-major: the samples of one prompt are adjacent):

    prompt_ids     [B, P] int64  LEFT-padded with pad_id (the prompt ends at column P-1)
    prompt_mask    [B, P] bool   True on real prompt tokens
    response_ids   [B, R] int64  RIGHT-padded with pad_id (the response starts at column 0)
    response_mask  [B, R] bool   True on real response tokens (EOS included when generated)
    logprobs       [B, R] f32    the student's log-probability of each response token under its raw
                                 distribution (log_softmax of the logits: no temperature, no top-p,
                                 as vLLM's default logprobs_mode="raw_logprobs"); 0 on padding
    writer_mask    [B, R] bool   True where the teacher wrote the token (SWITCH); all False for plain
                                 student sampling
    prompt_index   [B]    int64  index of the dataset prompt the row answers (exactly-once accounting)
    policy_version int           version of the student weights that generated the batch
    metrics        dict          "timing/..." seconds, "tokens/..." counts, "switch/..." statistics
    teacher_topk_ids / teacher_topk_logprobs  [B, R, K] (optional): the teacher's top-K
                                 log-probabilities at every response position, filled by
                                 `TeacherScorer.score_batch`; zeros on padding

Because the prompt is left-padded and the response right-padded, `torch.cat([prompt_ids,
response_ids], 1)` is a valid model input: see `model_inputs`, where logits[:, P-1+t] predict
response token t for every row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from distill_ray.errors import DistillError

_ROW_FIELDS = ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "logprobs", "writer_mask", "prompt_index")
_TOPK_FIELDS = ("teacher_topk_ids", "teacher_topk_logprobs")


@dataclass
class RolloutBatch:
    prompt_ids: torch.Tensor  # [B, P] int64, left-padded
    prompt_mask: torch.Tensor  # [B, P] bool
    response_ids: torch.Tensor  # [B, R] int64, right-padded
    response_mask: torch.Tensor  # [B, R] bool
    logprobs: torch.Tensor  # [B, R] float32, student log-probs of the response tokens
    writer_mask: torch.Tensor  # [B, R] bool, True = teacher wrote the token
    prompt_index: torch.Tensor  # [B] int64
    policy_version: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    teacher_topk_ids: torch.Tensor | None = None  # [B, R, K] int64
    teacher_topk_logprobs: torch.Tensor | None = None  # [B, R, K] float32
    pad_id: int = 0
    request_id: int | None = None  # the rollout request that generated it (pipeline/rollout_loop.py); None otherwise

    def __post_init__(self):
        B, P = self.prompt_ids.shape
        R = self.response_ids.shape[1]
        want = {
            "prompt_mask": (B, P),
            "response_mask": (B, R),
            "logprobs": (B, R),
            "writer_mask": (B, R),
            "prompt_index": (B,),
        }
        for name, shape in want.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise DistillError(f"RolloutBatch.{name}: expected shape {shape}, got {got}")
        if (self.teacher_topk_ids is None) != (self.teacher_topk_logprobs is None):
            raise DistillError("RolloutBatch: teacher_topk_ids and teacher_topk_logprobs come together")
        if self.teacher_topk_ids is not None:
            for name in _TOPK_FIELDS:
                got = tuple(getattr(self, name).shape)
                if got[:2] != (B, R) or got != tuple(self.teacher_topk_ids.shape):
                    raise DistillError(f"RolloutBatch.{name}: expected shape ({B}, {R}, K), got {got}")

    # ------------------------------------------------------------------ building

    @classmethod
    def from_lists(
        cls,
        prompts: list[list[int]],
        responses: list[list[int]],
        logprobs: list[list[float]],
        prompt_index: list[int],
        *,
        writers: list[list[bool]] | None = None,
        policy_version: int = 0,
        metrics: dict[str, float] | None = None,
        pad_id: int = 0,
    ) -> "RolloutBatch":
        """Pad ragged per-row lists into a batch (prompts left, responses right)."""
        B = len(prompts)
        if not (len(responses) == len(logprobs) == len(prompt_index) == B):
            raise DistillError("RolloutBatch.from_lists: prompts, responses, logprobs, prompt_index differ in length")
        P = max((len(p) for p in prompts), default=0)
        R = max((len(r) for r in responses), default=0)
        prompt_ids = torch.full((B, P), pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((B, P), dtype=torch.bool)
        response_ids = torch.full((B, R), pad_id, dtype=torch.long)
        response_mask = torch.zeros((B, R), dtype=torch.bool)
        lp = torch.zeros((B, R), dtype=torch.float32)
        writer = torch.zeros((B, R), dtype=torch.bool)
        for b in range(B):
            p, r = prompts[b], responses[b]
            if p:
                prompt_ids[b, P - len(p) :] = torch.as_tensor(p, dtype=torch.long)
                prompt_mask[b, P - len(p) :] = True
            if r:
                response_ids[b, : len(r)] = torch.as_tensor(r, dtype=torch.long)
                response_mask[b, : len(r)] = True
                lp[b, : len(r)] = torch.as_tensor(logprobs[b], dtype=torch.float32)
                if writers is not None:
                    writer[b, : len(r)] = torch.as_tensor(writers[b], dtype=torch.bool)
        return cls(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            logprobs=lp,
            writer_mask=writer,
            prompt_index=torch.as_tensor(prompt_index, dtype=torch.long).reshape(B),
            policy_version=policy_version,
            metrics=dict(metrics or {}),
            pad_id=pad_id,
        )

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def num_response_tokens(self) -> int:
        return int(self.response_mask.sum())

    def prompts(self) -> list[list[int]]:
        return [row[m].tolist() for row, m in zip(self.prompt_ids, self.prompt_mask)]

    def responses(self) -> list[list[int]]:
        return [row[m].tolist() for row, m in zip(self.response_ids, self.response_mask)]

    def sequences(self) -> list[list[int]]:
        """Prompt + response ids of every row, without padding (what a teacher scores)."""
        return [p + r for p, r in zip(self.prompts(), self.responses())]

    def prompt_lengths(self) -> list[int]:
        return self.prompt_mask.sum(1).tolist()

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask, position_ids [B, P+R] for a teacher-forced forward pass.

        logits[:, P-1 : P-1+R] line up with response_ids / response_mask / logprobs.
        """
        input_ids = torch.cat([self.prompt_ids, self.response_ids], 1)
        attention_mask = torch.cat([self.prompt_mask, self.response_mask], 1).long()
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}

    def with_teacher_topk(self, ids: torch.Tensor, logprobs: torch.Tensor, metrics: dict[str, float]) -> "RolloutBatch":
        """This batch with the teacher's top-k attached, from any teacher source (TeacherScorer, the
        teacher scoring service); `metrics` are added to the batch's.

        ids / logprobs: [B, R', k] with R' the longest real response (as `score_topk` returns them);
        padded with zeros to the batch's R columns. Adds "teacher/topk_mass": the mean probability
        the top-k cover at real response positions (what the sparse loss's tail bucket does not hold).
        """
        R = self.response_ids.shape[1]
        ids = torch.nn.functional.pad(ids, (0, 0, 0, R - ids.shape[1]))  # [B, R, k]
        logprobs = torch.nn.functional.pad(logprobs, (0, 0, 0, R - logprobs.shape[1]))
        mass = logprobs.exp().sum(-1)[self.response_mask]
        merged = {**self.metrics, **metrics, "teacher/topk_mass": float(mass.mean()) if mass.numel() else 0.0}
        return dataclasses.replace(self, teacher_topk_ids=ids, teacher_topk_logprobs=logprobs, metrics=merged)

    # ------------------------------------------------------------------ moving and combining

    def to(self, device: torch.device | str) -> "RolloutBatch":
        """A copy with every tensor on `device`."""
        moved = {
            f.name: getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), torch.Tensor) else getattr(self, f.name)
            for f in dataclasses.fields(self)
        }
        return RolloutBatch(**moved)

    def select(self, rows: torch.Tensor | list[int] | slice) -> "RolloutBatch":
        """The rows `rows` (an index list/tensor or a slice); padding columns are kept."""
        if not isinstance(rows, slice):
            rows = torch.as_tensor(rows, dtype=torch.long)
        values = {name: getattr(self, name)[rows] for name in _ROW_FIELDS}
        if self.teacher_topk_ids is not None:
            values.update({name: getattr(self, name)[rows] for name in _TOPK_FIELDS})
        return RolloutBatch(**values, policy_version=self.policy_version, metrics=dict(self.metrics), pad_id=self.pad_id)

    def split(self, num_chunks: int) -> list["RolloutBatch"]:
        """`num_chunks` contiguous pieces of sizes differing by at most one (e.g. one per trainer rank).

        Metrics stay with the first piece only, so concatenating the pieces gives them back once.
        """
        if num_chunks <= 0:
            raise DistillError(f"RolloutBatch.split: num_chunks must be positive, got {num_chunks}")
        B = len(self)
        bounds = [B * i // num_chunks for i in range(num_chunks + 1)]
        pieces = [self.select(slice(bounds[i], bounds[i + 1])) for i in range(num_chunks)]
        for piece in pieces[1:]:
            piece.metrics = {}
        return pieces

    @classmethod
    def concat(cls, batches: list["RolloutBatch"]) -> "RolloutBatch":
        """Rows of all batches, re-padded to the longest prompt and response.

        policy_version is the OLDEST of the inputs (what a staleness check must see). Metrics merge
        as: "timing/*" -> max (the batches were made in parallel), "tokens/*" and "count/*" -> sum,
        anything else -> mean weighted by rows.
        """
        if not batches:
            raise DistillError("RolloutBatch.concat: no batches")
        pad_id = batches[0].pad_id
        P = max(b.prompt_ids.shape[1] for b in batches)
        R = max(b.response_ids.shape[1] for b in batches)
        with_topk = [b.teacher_topk_ids is not None for b in batches]
        if any(with_topk) and not all(with_topk):
            raise DistillError("RolloutBatch.concat: some batches have teacher top-k log-probs and some do not")

        def left(t: torch.Tensor, width: int, value) -> torch.Tensor:
            return torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value)

        def right(t: torch.Tensor, width: int, value) -> torch.Tensor:
            if t.dim() == 3:
                return torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[1]), value=value)
            return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

        out = dict(
            prompt_ids=torch.cat([left(b.prompt_ids, P, pad_id) for b in batches]),
            prompt_mask=torch.cat([left(b.prompt_mask, P, False) for b in batches]),
            response_ids=torch.cat([right(b.response_ids, R, pad_id) for b in batches]),
            response_mask=torch.cat([right(b.response_mask, R, False) for b in batches]),
            logprobs=torch.cat([right(b.logprobs, R, 0.0) for b in batches]),
            writer_mask=torch.cat([right(b.writer_mask, R, False) for b in batches]),
            prompt_index=torch.cat([b.prompt_index for b in batches]),
        )
        if all(with_topk):
            K = batches[0].teacher_topk_ids.shape[2]
            if any(b.teacher_topk_ids.shape[2] != K for b in batches):
                raise DistillError("RolloutBatch.concat: batches have different teacher top-k sizes")
            out["teacher_topk_ids"] = torch.cat([right(b.teacher_topk_ids, R, 0) for b in batches])
            out["teacher_topk_logprobs"] = torch.cat([right(b.teacher_topk_logprobs, R, 0.0) for b in batches])
        return cls(
            **out,
            policy_version=min(b.policy_version for b in batches),
            metrics=_merge_metrics(batches),
            pad_id=pad_id,
        )


def _merge_metrics(batches: list[RolloutBatch]) -> dict[str, float]:
    merged: dict[str, float] = {}
    keys = {k for b in batches for k in b.metrics}
    for key in sorted(keys):
        have = [(b.metrics[key], len(b)) for b in batches if key in b.metrics]
        if key.startswith("timing/"):
            merged[key] = max(v for v, _ in have)
        elif key.startswith(("tokens/", "count/")):
            merged[key] = sum(v for v, _ in have)
        else:
            rows = sum(n for _, n in have)
            merged[key] = sum(v * n for v, n in have) / rows if rows else 0.0
    return merged
