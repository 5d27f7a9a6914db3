"""`distill-ray models init`: local data, tokenizer, teacher and student, built and trained here.

No model hub is reachable, so the testbed is made locally: synthetic task data, a BPE
tokenizer trained on it, a teacher trained with SFT until it is good at the tasks, and a
much smaller student given a short SFT warm-up (as both papers start from an SFT student).
Each piece is an ordinary Hugging Face directory; a second call reuses what exists.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from distill_ray.config import TrainerConfig
from distill_ray.data import synth
from distill_ray.data.encoding import batches_by_length, collate_for_training, encode_examples
from distill_ray.data.loading import load_examples
from distill_ray.models.build import ModelShape, build_causal_lm, count_parameters
from distill_ray.models.tokenizer import train_tokenizer
from distill_ray.progress import progress_bar
from distill_ray.trainer.in_process import InProcessTrainer

TEMPLATE = "Instruction: {prompt}\nResponse:"


@dataclass
class LocalModelsSpec:
    out_dir: str = "local"  # root: data/synth/, models/{tokenizer,teacher,student}
    arch: str = "llama"  # llama or qwen2
    vocab_size: int = 1024  # BPE vocabulary size (1200, every number one token, made counting harder to learn)
    num_train: int = 20000  # synthetic training rows
    num_validation: int = 300  # synthetic validation rows
    num_test: int = 300  # synthetic test rows
    data_seed: int = 0  # seed of the synthetic data
    # teacher 1.31M parameters, student 0.26M (5x smaller): the teacher learns every task exactly in
    # a few minutes of CPU time (exact match >= 0.8 at every length); the student, given the same
    # data for a fraction of the steps, walks the chain with errors and often misses the stop
    teacher: ModelShape = field(default_factory=lambda: ModelShape(128, 4, 4, 512, max_position_embeddings=512))
    student: ModelShape = field(default_factory=lambda: ModelShape(64, 2, 2, 256, max_position_embeddings=512))
    teacher_steps: int = 2500  # teacher SFT optimizer steps (1700 left long-answer exact match at 0.80; 2500: 1.00)
    teacher_lr: float = 1e-3  # teacher SFT peak learning rate (3e-3 learnt more slowly)
    teacher_short_steps: int = 1100  # of teacher_steps, the first ones on short rows only (see sft)
    # student SFT warm-up (measured on 200 test rows, 2026-12-03): 1000 steps with 800 of them on
    # short rows sampled 22/28/27 tokens for short/medium/long answers (references ~7/35/100) and
    # greedy hit the 200-token cap on 28-53% of rows; 1200 steps on every row sample 12/42/47
    # tokens, greedy caps 12-30%, exact match 0.80/0.39/0.10; 1500 left too little room (0.94 ROUGE-L)
    student_steps: int = 1200
    student_lr: float = 3e-3  # student warm-up peak learning rate (small models want more than the teacher)
    student_short_steps: int = 0  # of student_steps, the first ones on short rows only (none: see above)
    batch_size: int = 32  # sequences per step
    batch_window: int = 8  # SFT batches: lengths sorted within windows of this many batches (see batches_by_length)
    seed: int = 0  # model init and data order

    def fingerprint(self, part: str) -> dict:
        d = asdict(self)
        d.pop("out_dir")
        d["recipe"] = RECIPE
        keep = {
            "data": ["recipe", "num_train", "num_validation", "num_test", "data_seed"],
            "tokenizer": ["recipe", "num_train", "num_validation", "num_test", "data_seed", "vocab_size"],
            "teacher": ["recipe", "num_train", "data_seed", "vocab_size", "arch", "teacher", "teacher_steps", "teacher_lr", "teacher_short_steps", "batch_size", "batch_window", "seed"],
            "student": ["recipe", "num_train", "data_seed", "vocab_size", "arch", "student", "student_steps", "student_lr", "student_short_steps", "batch_size", "batch_window", "seed"],
        }[part]
        return {k: d[k] for k in keep}


MARKER = "distill_ray_init.json"
# Bumped whenever the synthetic tasks or the training recipe change, so directories built by an
# older version are rebuilt instead of silently reused.
RECIPE = 3


def _is_done(path: Path, fingerprint: dict) -> bool:
    marker = path / MARKER
    return marker.is_file() and json.loads(marker.read_text()) == fingerprint


def _commit_dir(tmp: Path, final: Path, fingerprint: dict) -> None:
    """Mark a fully written temp directory done and move it into place."""
    from distill_ray.fsutil import replace_dir

    (tmp / MARKER).write_text(json.dumps(fingerprint))
    replace_dir(tmp, final)


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)


def sft(model, tokenizer, encoded, steps: int, lr: float, batch_size: int, seed: int, label: str, quiet: bool,
        window: int | None = None, short_steps: int = 0, short_tokens: int = 64) -> list[float]:
    """Plain SFT of `model` on `encoded` for `steps` steps; returns the loss per step.

    The first `short_steps` steps see only rows of at most `short_tokens` tokens (a length
    curriculum): a short step costs a fraction of a full one, and a small model learns to copy
    and count on short rows first (the attention patterns it needs are the same at every length)."""
    cfg = TrainerConfig(lr=lr, max_steps=steps, warmup_steps=min(50, steps // 10), batch_size=batch_size, seed=seed)
    trainer = InProcessTrainer(model, cfg, method="sft")
    short = [e for e in encoded if len(e.prompt_ids) + len(e.response_ids) <= short_tokens] if short_steps else []
    pool = short if short else encoded
    batches = batches_by_length(pool, batch_size, seed, window)
    losses, epoch_start = [], 0
    bar = progress_bar(steps, f"{label} sft", unit="step", enabled=not quiet)
    for step in range(steps):
        if short and step == short_steps:  # the curriculum ends: every row from here on
            pool, epoch_start = encoded, step
            batches = batches_by_length(pool, batch_size, seed + step, window)
        elif step > epoch_start and (step - epoch_start) % len(batches) == 0:  # a new epoch: new order
            batches = batches_by_length(pool, batch_size, seed + step, window)
        m = trainer.train_step(collate_for_training(batches[(step - epoch_start) % len(batches)], tokenizer.pad_token_id))
        losses.append(m["loss"])
        if step % 25 == 0 or step == steps - 1:
            bar.set_postfix_str(f"loss {sum(losses[-25:]) / len(losses[-25:]):.3f}", refresh=False)
        bar.update(1)
    bar.close()
    return losses


def init_local_models(spec: LocalModelsSpec = LocalModelsSpec(), quiet: bool = False,
                      extra_students: dict[str, ModelShape] | None = None) -> dict:
    """Make (or reuse) data, tokenizer, teacher and student under spec.out_dir. Returns paths and stats.

    `extra_students` {name: shape}: more warm-up students of other sizes (same recipe as the
    student: steps, rate, data), in models/student-NAME; their paths under "students"."""
    torch.manual_seed(spec.seed)
    root = Path(spec.out_dir)
    data_dir, models_dir = root / "data" / "synth", root / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    stats: dict = {}

    if not _is_done(data_dir, spec.fingerprint("data")):
        _say(f"[models init] writing synthetic data to {data_dir}", quiet)
        splits = synth.generate_splits(spec.num_train, spec.num_validation, spec.num_test, seed=spec.data_seed)
        tmp = data_dir.with_name(data_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        synth.write_splits(tmp, splits)
        _say(synth.describe(splits), quiet)
        _commit_dir(tmp, data_dir, spec.fingerprint("data"))
    else:
        _say(f"[models init] reusing data in {data_dir}", quiet)
    train = load_examples(data_dir / "train.jsonl")

    tok_dir = models_dir / "tokenizer"
    if not _is_done(tok_dir, spec.fingerprint("tokenizer")):
        _say(f"[models init] training a {spec.vocab_size}-token BPE tokenizer", quiet)
        texts = [TEMPLATE.replace("{prompt}", e.prompt) for e in train] + [e.response for e in train]
        tokenizer = train_tokenizer(texts, vocab_size=spec.vocab_size)
        tmp = tok_dir.with_name("tokenizer.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer.save_pretrained(tmp)
        _commit_dir(tmp, tok_dir, spec.fingerprint("tokenizer"))
    from distill_ray.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tok_dir)
    encoded, report = encode_examples(train, tokenizer, TEMPLATE, max_prompt_tokens=128, max_response_tokens=256)
    _say(f"[models init] training rows: {report}", quiet)

    roles = [("teacher", spec.teacher, spec.teacher_steps, spec.teacher_lr),
             ("student", spec.student, spec.student_steps, spec.student_lr)]
    roles += [(f"student-{name}", shape, spec.student_steps, spec.student_lr) for name, shape in (extra_students or {}).items()]
    for role, shape, steps, lr in roles:
        path = models_dir / role
        fingerprint = spec.fingerprint("teacher" if role == "teacher" else "student")
        fingerprint["teacher" if role == "teacher" else "student"] = asdict(shape)
        if _is_done(path, fingerprint):
            _say(f"[models init] reusing {role} in {path}", quiet)
            continue
        model = build_causal_lm(
            spec.arch,
            shape,
            len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            seed=spec.seed + (0 if role == "teacher" else 1),
        )
        _say(f"[models init] {role}: {spec.arch}, {count_parameters(model) / 1e6:.2f}M parameters, {steps} SFT steps", quiet)
        t0 = time.perf_counter()
        losses = sft(model, tokenizer, encoded, steps, lr, spec.batch_size, spec.seed, role, quiet, spec.batch_window,
                     short_steps=spec.teacher_short_steps if role == "teacher" else spec.student_short_steps)
        stats[role] = {"final_loss": sum(losses[-25:]) / max(1, len(losses[-25:])), "seconds": time.perf_counter() - t0}
        tmp = path.with_name(role + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)  # each model directory loads on its own
        _commit_dir(tmp, path, fingerprint)
    return {
        "data": str(data_dir),
        "tokenizer": str(tok_dir),
        "teacher": str(models_dir / "teacher"),
        "student": str(models_dir / "student"),
        "students": {name: str(models_dir / f"student-{name}") for name in (extra_students or {})},
        "stats": stats,
    }


# The benchmarks' second student size (benchmarks/quality.py): 0.64M, 2.1x smaller than the teacher,
# against the quickstart student's 5x (a small and a large teacher/student gap).
LARGE_STUDENT = ModelShape(96, 3, 3, 384, max_position_embeddings=512)
QUICK_LARGE_STUDENT = ModelShape(32, 2, 1, 64, max_position_embeddings=512)


def init_benchmark_models(quick: bool, out_dir: str | Path, large_student: bool = False) -> dict:
    """The models a benchmark runs on: the quickstart's (reused when present), or with `quick`
    tiny smoke-test ones (seconds to build). `large_student` adds LARGE_STUDENT (or its quick
    counterpart) as students["large"]. Returns what `init_local_models` returns."""
    extra = {"large": QUICK_LARGE_STUDENT if quick else LARGE_STUDENT} if large_student else None
    if quick:
        spec = LocalModelsSpec(out_dir=str(out_dir), num_train=400, num_validation=20, num_test=20, vocab_size=600,
                               teacher=ModelShape(64, 2, 2, 128, max_position_embeddings=512),
                               student=ModelShape(32, 1, 1, 64, max_position_embeddings=512),
                               teacher_steps=4, student_steps=2, batch_size=8)
    else:
        spec = LocalModelsSpec(out_dir=str(out_dir))
    return init_local_models(spec, quiet=True, extra_students=extra)
