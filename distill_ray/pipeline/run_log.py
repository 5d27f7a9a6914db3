"""Where a run's metrics go: a JSONL file, TensorBoard, wandb, and a live progress line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from distill_ray.config import LoggingConfig


class MetricsLogger:
    def __init__(self, output_dir: str | Path, cfg: LoggingConfig, run_config: dict | None = None):
        self.cfg = cfg
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = (self.dir / "metrics.jsonl").open("a") if cfg.jsonl else None
        self._tb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tensorboard"))
        self._wandb = None
        if cfg.wandb:
            try:
                import wandb
            except ImportError:
                print("warning: logging.wandb is on but wandb is not installed; skipping it", file=sys.stderr)
            else:
                self._wandb = wandb.init(project="distill-ray", config=run_config, dir=str(self.dir))
        self._t0 = time.perf_counter()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, "time": time.perf_counter() - self._t0, **metrics}
        if self._jsonl:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tb:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
        if self._wandb:
            self._wandb.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def progress(self, step: int, max_steps: int, metrics: dict[str, float]) -> None:
        """One line per logged step: the numbers a user watches during a run."""
        if not self.cfg.progress or step % self.cfg.log_every:
            return
        parts = [f"step {step}/{max_steps}", f"loss {metrics.get('loss', float('nan')):.4f}"]
        if "tokens_per_s" in metrics:
            parts.append(f"{metrics['tokens_per_s']:.0f} tok/s")
        for key, label in (("queue/depth", "queue"), ("staleness", "staleness"), ("switch/teacher_fraction", "teacher tok")):
            if key in metrics:
                parts.append(f"{label} {metrics[key]:.2f}")
        parts.append(f"{time.perf_counter() - self._t0:.0f}s")
        print("  ".join(parts), flush=True)

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._tb:
            self._tb.close()
        if self._wandb:
            self._wandb.finish()
