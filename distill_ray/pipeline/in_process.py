"""The in-process run for the offline methods (sft, kd, seqkd-on-given-data): one process, no Ray.

    load config -> tokenizer, data, models -> train loop (eval, checkpoint) -> export, test eval

The distributed driver (rollout workers, queue, DeepSpeed trainer group) follows the same
outline; this one is what `distill-ray train` runs for offline methods on one machine.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from distill_ray.config import Config, check_config, check_model_paths, to_dict
from distill_ray.data.encoding import batches_by_length, collate_for_training
from distill_ray.data.prepare import prepare_split
from distill_ray.errors import DistillError
from distill_ray.eval.evaluate import evaluate_model, format_table, write_json
from distill_ray.models.build import count_parameters, load_causal_lm
from distill_ray.models.tokenizer import load_tokenizer
from distill_ray.pipeline.run_log import MetricsLogger
from distill_ray.methods import METHODS
from distill_ray.trainer.in_process import InProcessTrainer


def export_model(model, tokenizer, out_dir: Path) -> None:
    """Save an HF directory atomically: a staging directory, then renames (fsutil.written_dir)."""
    from distill_ray.fsutil import written_dir

    with written_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def run_in_process(cfg: Config, quiet: bool = False) -> dict:
    check_config(cfg)
    method = cfg.method.name
    if not METHODS[method].in_process:
        local = tuple(name for name, m in METHODS.items() if m.in_process)
        raise DistillError(f"method.name: {method!r} needs the distributed pipeline; in-process runs do {local}")
    check_model_paths(cfg)
    torch.manual_seed(cfg.trainer.seed)
    out = Path(cfg.trainer.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))

    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.student)
    train, report = prepare_split(cfg.data, tokenizer, cfg.data.train, shuffle=True, max_rows=cfg.data.max_rows)
    if not quiet:
        print(f"[train] {cfg.data.train}: {report}", flush=True)
    validation = None
    if cfg.data.validation:
        validation, _ = prepare_split(cfg.data, tokenizer, cfg.data.validation, shuffle=False, max_rows=cfg.eval.max_examples or None)

    student = load_causal_lm(cfg.model.student)
    teacher = load_causal_lm(cfg.model.teacher) if METHODS[method].teacher_in_loss else None
    if teacher is not None:
        from distill_ray.pipeline.driver import check_teacher_tokenizer

        check_teacher_tokenizer(cfg, tokenizer)
    if teacher is not None and teacher.config.vocab_size < len(tokenizer):
        raise DistillError("model.teacher: its vocabulary is smaller than the tokenizer's; teacher and student must share a tokenizer")
    if not quiet:
        sizes = f"student {count_parameters(student) / 1e6:.2f}M"
        if teacher is not None:
            sizes += f", teacher {count_parameters(teacher) / 1e6:.2f}M"
        print(f"[train] method {method}: {sizes} parameters, {cfg.trainer.max_steps} steps", flush=True)

    trainer = InProcessTrainer(student, cfg.trainer, method=method, loss_cfg=cfg.loss, teacher=teacher)
    logger = MetricsLogger(out, cfg.logging, to_dict(cfg))
    batches = batches_by_length(train, cfg.trainer.batch_size, cfg.trainer.seed)
    t_start = time.perf_counter()
    history = []
    try:
        for step in range(1, cfg.trainer.max_steps + 1):
            i = step - 1
            if i and i % len(batches) == 0:
                batches = batches_by_length(train, cfg.trainer.batch_size, cfg.trainer.seed + i)
            metrics = trainer.train_step(collate_for_training(batches[i % len(batches)], tokenizer.pad_token_id))
            if validation and cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0:
                res = evaluate_model(student, tokenizer, validation, max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size)
                metrics["val/rouge_l"] = res["overall"]["rouge_l"]
                metrics["val/exact_match"] = res["overall"]["exact_match"]
            if cfg.trainer.save_every and step % cfg.trainer.save_every == 0:
                export_model(student, tokenizer, out / "checkpoints" / f"step_{step:06d}")
            logger.log(step, metrics)
            history.append(metrics["loss"])
            if not quiet:
                logger.progress(step, cfg.trainer.max_steps, metrics)
    finally:
        logger.close()
    train_seconds = time.perf_counter() - t_start
    export_model(student, tokenizer, out / "student")
    result = {"method": method, "train_seconds": train_seconds, "losses": history, "student_dir": str(out / "student")}
    if cfg.data.test:
        test, _ = prepare_split(cfg.data, tokenizer, cfg.data.test, shuffle=False, max_rows=cfg.eval.max_examples or None)
        res = evaluate_model(student, tokenizer, test, max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size)
        result["test"] = res
        write_json(out / "eval.json", res)
        if not quiet:
            print(format_table({f"{method} student": res}), flush=True)
    write_json(out / "result.json", {k: v for k, v in result.items() if k != "losses"})
    return result
