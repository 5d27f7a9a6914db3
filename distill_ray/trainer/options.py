"""Trainer choices resolved once, in the driver, from the run config and sent to every rank
(`RankOptions`): where the frozen teacher lives (`trainer.teacher_mode`) and whether the loss is
computed chunk by chunk. The rules about them are checked at config load (`config.validate`)."""

from __future__ import annotations

from dataclasses import dataclass

from distill_ray.config import Config
from distill_ray.methods import method_spec


# Where each rank's frozen teacher lives (`trainer.teacher_mode`):
TEACHER_MODES = (
    "replicated",  # a full copy on every rank's device (default; the fastest forward)
    "zero3",  # ZeRO-3 inference: each rank keeps 1/N of the weights, gathered layer by layer
    "zero3_offload",  # as zero3, with the partitions in host memory (GPU holds only the layer in use)
    "remote",  # none: every batch carries the teacher's top-k log-probs from a TeacherScorer
)


def teacher_mode(cfg: Config) -> str:
    """The validated teacher placement; "none" when the method's loss does not use a teacher.

    The group resolves it once, in the driver, and hands it to the ranks in `RankOptions`. (Its
    rules, a known mode and okd's replicated teacher, are checked at config load: config.validate.)
    """
    return cfg.trainer.teacher_mode if method_spec(cfg).teacher_in_loss else "none"


def uses_chunked_loss(cfg: Config) -> bool:
    """Whether the loss is computed chunk by chunk from hidden states (`loss.chunked`, default off).

    The chunked loss multiplies hidden states by the output layers itself, so both must be whole
    on every rank: not with a ZeRO-3 student or a ZeRO-3 teacher (their output layers are
    partitioned and only gathered inside the model's own forward): config.validate refuses those.
    """
    return cfg.loss.chunked and method_spec(cfg).teacher_in_loss


@dataclass(frozen=True)
class RankOptions:
    """Trainer choices resolved once in the driver from the config and sent to every rank."""

    teacher_mode: str  # one of TEACHER_MODES, or "none" (sft, seqkd)
    chunked_loss: bool  # compute the divergence chunk by chunk from hidden states

    @classmethod
    def from_config(cls, cfg: Config) -> "RankOptions":
        return cls(teacher_mode=teacher_mode(cfg), chunked_loss=uses_chunked_loss(cfg))
