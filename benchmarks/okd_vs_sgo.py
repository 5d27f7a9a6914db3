"""OKD against student-generated-output (SGO) training: what does each method cost to train?

    python benchmarks/okd_vs_sgo.py                  # quickstart models (built if missing), 5 methods
    python benchmarks/okd_vs_sgo.py --quick --out /tmp/okd_vs_sgo.json   # tiny models, a smoke test

The same teacher, student, data, optimizer and machine for every method, one run after another
on one local Ray, each through the real driver (configs/quickstart.yaml plus the quickstart's
per-method settings: 2 DeepSpeed ZeRO-2 ranks, 1 torch rollout worker for sgo/switch, staleness
1), with validation ROUGE-L every --eval-every steps. From each run's own metrics.jsonl:

    train time      the loop's time per step without validation and checkpoints
                    (timing/step_total - timing/eval - timing/checkpoint)
    step time       median train time per step; per_1k_tokens: train time per 1,000 trained
                    (response) tokens
    breakdown       per step, medians: rollout wait (the trainer idle on an empty queue),
                    teacher forward, student forward+backward, optimizer, weight sync, and the rest
                    (batch handling, logging); rollout busy (the worker's generation time, which
                    asynchronous rollout hides when it is shorter than a step) is given apart
    time to target  train time summed up to the first validation whose ROUGE-L reaches the target,
                    target = the lower of sgo's and okd's final validation ROUGE-L (null if never)

Headline keys: sgo_over_okd_step_time and sgo_over_okd_time_to_target (the OKD paper reports up to
4x less training time than SGO methods).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common  # noqa: E402

BREAKDOWN = {  # column -> metric key (seconds per step)
    "rollout_wait": "timing/rollout_wait",
    "teacher_forward": "timing/teacher_forward",
    "student_fwd_bwd": "timing/student_forward_backward",
    "optimizer": "timing/optimizer",
    "weight_sync": "timing/weight_sync",
}


def build_models(quick: bool, root: Path) -> dict:
    from distill_ray.models.local import init_benchmark_models

    return init_benchmark_models(quick, root)


def run_method(method: str, paths: dict, out: Path, args) -> list[dict]:
    overrides = [
        "data.test=null", f"trainer.max_steps={args.steps}", f"trainer.eval_every={args.eval_every}",
        f"eval.max_examples={args.eval_examples}", f"eval.max_new_tokens={args.max_new_tokens}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
    ]
    if args.quick:
        overrides += ["trainer.batch_size=8", "trainer.warmup_steps=1"]
    return _common.run_method(method, paths, out, overrides)[1]


def train_time(m: dict) -> float:
    return m["timing/step_total"] - m.get("timing/eval", 0.0) - m.get("timing/checkpoint", 0.0)


def summarize(metrics: list[dict]) -> dict:
    times = [train_time(m) for m in metrics]
    tokens = sum(m.get("tokens", 0.0) for m in metrics)
    breakdown = {col: statistics.median(m.get(key, 0.0) for m in metrics) for col, key in BREAKDOWN.items()}
    step = statistics.median(times)
    breakdown["other"] = max(0.0, step - sum(breakdown.values()))
    curve, elapsed = [], 0.0
    for m, t in zip(metrics, times):
        elapsed += t
        if "val/rouge_l" in m:
            curve.append({"step": m["step"], "train_seconds": elapsed, "rouge_l": m["val/rouge_l"],
                          "exact_match": m["val/exact_match"]})
    return {
        "steps": len(metrics),
        "step_seconds": step,
        "per_1k_tokens_seconds": 1000.0 * sum(times) / max(tokens, 1.0),
        "train_seconds": sum(times),
        "breakdown_seconds": breakdown,
        "rollout_busy_seconds": statistics.median(m.get("timing/generate", 0.0) for m in metrics),
        "validation": curve,
        "final_rouge_l": curve[-1]["rouge_l"] if curve else None,
    }


def time_to(curve: list[dict], target: float) -> float | None:
    return next((c["train_seconds"] for c in curve if c["rouge_l"] >= target - 1e-12), None)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def main(argv: list[str] | None = None) -> int:
    p = _common.training_parser(__doc__, ROOT / "benchmarks" / "results" / "okd_vs_sgo.json",
                                "tiny models, 4 steps: a smoke test")
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--eval-examples", type=int, default=100, help="validation rows per evaluation")
    args = p.parse_args(argv)
    methods = args.methods.split(",")
    if not {"okd", "sgo"} <= set(methods):
        p.error("--methods must include okd and sgo (the headline compares them)")
    if args.quick:
        args.steps, args.eval_every, args.eval_examples, args.max_new_tokens = 4, 2, 8, 16

    import os

    import ray

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="okd_vs_sgo_"))
    paths = build_models(args.quick, work / "models" if args.quick else Path(args.models))
    load_before = os.getloadavg()
    per_method = {}
    own_ray = not ray.is_initialized()  # inside the test suite the session's Ray is reused, not shut down
    try:
        for method in methods:
            t0 = time.perf_counter()
            print(f"-- {method}: {args.steps} steps", flush=True)
            per_method[method] = summarize(run_method(method, paths, work / method, args))
            per_method[method]["wall_seconds"] = time.perf_counter() - t0
    finally:
        if own_ray and ray.is_initialized():
            ray.shutdown()
    target = min(per_method["sgo"]["final_rouge_l"], per_method["okd"]["final_rouge_l"])
    for r in per_method.values():
        r["time_to_target_seconds"] = time_to(r["validation"], target)
    okd, sgo = per_method["okd"], per_method["sgo"]
    result = {
        "question": "training cost of each method on the same models, data and machine (OKD vs SGO)",
        "settings": {"methods": methods, "steps": args.steps, "eval_every": args.eval_every,
                     "eval_examples": args.eval_examples, "max_new_tokens": args.max_new_tokens,
                     "quick": args.quick, "config": "configs/quickstart.yaml + distill_ray/quickstart.py METHODS"},
        "target_rouge_l": target,
        "sgo_over_okd_step_time": ratio(sgo["step_seconds"], okd["step_seconds"]),
        "sgo_over_okd_time_to_target": ratio(sgo["time_to_target_seconds"], okd["time_to_target_seconds"]),
        "methods": per_method,
        "machine": _common.machine(load_before),
    }
    out = _common.write_result(args.out, result)
    print(format_table(result))
    print(f"wrote {out}")
    return 0


def format_table(result: dict) -> str:
    cols = list(BREAKDOWN) + ["other"]
    head = f"{'method':<8} {'step s':>7} {'s/1k tok':>8} {'final RL':>8} {'to target':>9}  " + " ".join(f"{c:>15}" for c in cols)
    lines = [head, "-" * len(head)]
    for name, r in result["methods"].items():
        ttt = r["time_to_target_seconds"]
        lines.append(
            f"{name:<8} {r['step_seconds']:>7.3f} {r['per_1k_tokens_seconds']:>8.3f} {r['final_rouge_l'] or 0:>8.3f} "
            f"{(f'{ttt:.0f}s' if ttt is not None else 'never'):>9}  "
            + " ".join(f"{r['breakdown_seconds'][c]:>15.3f}" for c in cols)
        )
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}x"  # noqa: E731
    lines.append(f"target ROUGE-L {result['target_rouge_l']:.3f}; sgo/okd step time {fmt(result['sgo_over_okd_step_time'])}, "
                 f"time to target {fmt(result['sgo_over_okd_time_to_target'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
