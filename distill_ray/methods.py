"""What each method does, in one table: every place that asks "does this method use the teacher,
rollouts, SWITCH sequences, ..." reads `method_spec(cfg)` (or `METHODS[name]`) instead of naming
methods itself.

    sft     cross-entropy on the dataset's responses; no teacher
    kd      D(teacher || student) on the dataset's responses (supervised KD)
    seqkd   cross-entropy on responses the teacher generates once, before training
    sgo     D(teacher || student) on the student's own samples, mixed with dataset batches by
            method.lambda_on (GKD / on-policy KD)
    switch  D(teacher || student) on SWITCH sequences: the student samples, the teacher takes over
            a token where their JSD exceeds a threshold that decays with position; mixed with
            dataset batches by method.lambda_on like sgo (default 1.0: SWITCH sequences only)
    okd     kd with small online modules inside the frozen teacher, trained with the student;
            method.combine_with adds sgo or SWITCH sequences (rollouts) to it

This module imports nothing of the project, so any layer can read it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class MethodSpec:
    name: str
    needs_teacher: bool  # the teacher model is loaded at all (for the loss, or to write the data)
    teacher_in_loss: bool  # the loss is a divergence from the teacher's distribution (else cross-entropy)
    teacher_writes_data: bool = False  # seqkd: the teacher generates the training responses first
    rollouts: bool = False  # trains on sequences that rollout workers generate
    switch: bool = False  # those sequences are SWITCH's (teacher-intervened)
    mixes_dataset: bool = False  # method.lambda_on mixes dataset batches in with the rollouts
    online_teacher: bool = False  # OKD online modules in the teacher (needs a replicated teacher)
    combinable: bool = False  # method.combine_with (sgo or switch sequences) applies
    in_process: bool = False  # `train --in-process` (InProcessTrainer) can run it

    @property
    def ce_only(self) -> bool:
        return not self.teacher_in_loss


METHODS: dict[str, MethodSpec] = {
    "sft": MethodSpec("sft", needs_teacher=False, teacher_in_loss=False, in_process=True),
    "kd": MethodSpec("kd", needs_teacher=True, teacher_in_loss=True, in_process=True),
    "seqkd": MethodSpec("seqkd", needs_teacher=True, teacher_in_loss=False, teacher_writes_data=True),
    "sgo": MethodSpec("sgo", needs_teacher=True, teacher_in_loss=True, rollouts=True, mixes_dataset=True),
    "switch": MethodSpec("switch", needs_teacher=True, teacher_in_loss=True, rollouts=True, switch=True, mixes_dataset=True),
    "okd": MethodSpec("okd", needs_teacher=True, teacher_in_loss=True, online_teacher=True, combinable=True),
}


def method_spec(cfg) -> MethodSpec:
    """The spec of `cfg.method.name`, with `method.combine_with` applied (okd + sgo or switch
    sequences: rollouts, without sgo's mixing of dataset batches)."""
    spec = METHODS[cfg.method.name]
    combine = cfg.method.combine_with
    if spec.combinable and combine != "none":
        spec = replace(spec, rollouts=True, switch=(combine == "switch"))
    return spec
