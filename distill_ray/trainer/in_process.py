"""A single-process trainer for the offline methods (sft, kd) on one device.

Used by `distill-ray models init` (teacher SFT, student warm-up) and by `distill-ray train`
for sft/kd when the distributed pipeline is not asked for. One optimizer step per call of
`train_step`; gradient accumulation, clipping and the LR schedule as in TrainerConfig. The loss
is the distributed trainer's own (`trainer/step.py` `student_loss`) on whole right-padded rows.
"""

from __future__ import annotations

import time

import torch

from distill_ray.config import LossConfig, TrainerConfig
from distill_ray.methods import METHODS
from distill_ray.trainer.optim import lr_at
from distill_ray.trainer.step import LossSpec, ModelOutput, ResponseTargets, student_loss


class InProcessTrainer:
    def __init__(
        self,
        student: torch.nn.Module,
        cfg: TrainerConfig,
        *,
        method: str = "sft",
        loss_cfg: LossConfig | None = None,
        teacher: torch.nn.Module | None = None,
    ):
        trainable = [name for name, m in METHODS.items() if not (m.rollouts or m.online_teacher)]
        if method not in trainable:
            raise ValueError(f"InProcessTrainer trains {', '.join(trainable)} (on the batches it is given), not {method!r}")
        self.spec = METHODS[method]
        if self.spec.teacher_in_loss and teacher is None:
            raise ValueError(f"{method} needs a teacher")
        self.student, self.teacher, self.cfg, self.method = student, teacher, cfg, method
        self.loss = LossSpec.of(method, loss_cfg or LossConfig(), vocab_size=_shared_vocab(student, teacher))
        self.step = 0
        self.optimizer = torch.optim.AdamW(
            [p for p in student.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        if teacher is not None:
            teacher.eval().requires_grad_(False)

    def _micro_loss(self, micro: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        targets = ResponseTargets.from_sequences(micro["input_ids"], micro["loss_mask"])
        student = self.student(input_ids=micro["input_ids"], attention_mask=micro["attention_mask"]).logits
        teacher = None
        if self.spec.teacher_in_loss:
            with torch.no_grad():
                teacher = ModelOutput(logits=self.teacher(input_ids=micro["input_ids"],
                                                          attention_mask=micro["attention_mask"]).logits[:, :-1])
        return student_loss(self.loss, targets, ModelOutput(logits=student[:, :-1]), teacher)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimizer step on `batch` (split into grad_accum micro-batches). Returns metrics."""
        t0 = time.perf_counter()
        self.student.train()
        lr = lr_at(self.step, self.cfg.lr, self.cfg.warmup_steps, self.cfg.max_steps, self.cfg.lr_schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n = batch["input_ids"].shape[0]
        parts = torch.arange(n).chunk(self.cfg.grad_accum)
        tokens = float(batch["loss_mask"].sum())
        total, metrics = 0.0, {}
        for idx in parts:
            micro = {k: v[idx] for k, v in batch.items()}
            loss, m = self._micro_loss(micro)
            # weight each micro-batch by its share of the step's response tokens
            weight = float(micro["loss_mask"].sum()) / max(tokens, 1.0)
            (loss * weight).backward()
            total += float(loss.detach()) * weight
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + v * weight
        grad_norm = None
        if self.cfg.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.cfg.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        seconds = time.perf_counter() - t0
        metrics.update(
            {"loss": total, "lr": lr, "tokens": tokens, "timing/step": seconds, "tokens_per_s": tokens / seconds}
        )
        if grad_norm is not None:
            metrics["grad_norm"] = grad_norm
        return metrics


def _shared_vocab(student: torch.nn.Module, teacher: torch.nn.Module | None) -> int | None:
    """The rows both output layers have, when they differ (output layers padded to different
    multiples); None when they agree or there is no teacher."""
    if teacher is None:
        return None
    rows = (student.get_output_embeddings().weight.shape[0], teacher.get_output_embeddings().weight.shape[0])
    return min(rows) if rows[0] != rows[1] else None
