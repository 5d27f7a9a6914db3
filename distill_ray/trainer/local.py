"""A single-process trainer for the offline methods (sft, kd) on one device.

Used by `distill-ray models init` (teacher SFT, student warm-up) and by `distill-ray train`
for sft/kd when the distributed pipeline is not asked for. One optimizer step per call of
`train_step`; gradient accumulation, clipping and the LR schedule as in TrainerConfig.
"""

from __future__ import annotations

import time

import torch

from distill_ray.config import LossConfig, TrainerConfig
from distill_ray.methods import METHODS
from distill_ray.trainer.objective import distillation_loss, masked_cross_entropy
from distill_ray.trainer.optim import lr_at


class LocalTrainer:
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
            raise ValueError(f"LocalTrainer trains {', '.join(trainable)} (on the batches it is given), not {method!r}")
        self.spec = METHODS[method]
        if self.spec.teacher_in_loss and teacher is None:
            raise ValueError(f"{method} needs a teacher")
        self.student, self.teacher, self.cfg, self.method = student, teacher, cfg, method
        self.loss_cfg = loss_cfg or LossConfig()
        self.step = 0
        self.optimizer = torch.optim.AdamW(
            [p for p in student.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        if teacher is not None:
            teacher.eval().requires_grad_(False)

    def _micro_loss(self, micro: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.student(input_ids=micro["input_ids"], attention_mask=micro["attention_mask"])
        if self.spec.ce_only:
            loss = masked_cross_entropy(out.logits, micro["input_ids"], micro["loss_mask"])
            return loss, {"loss/ce": float(loss.detach())}
        with torch.no_grad():
            t_logits = self.teacher(input_ids=micro["input_ids"], attention_mask=micro["attention_mask"]).logits
        return distillation_loss(t_logits, out.logits, micro["input_ids"], micro["loss_mask"], self.loss_cfg)

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
