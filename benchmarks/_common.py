"""What the benchmarks share: the options of a training benchmark, running one method through
the real driver on the quickstart config, the machine description, and writing a result file
atomically (never half-written)."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
from pathlib import Path

# The training benchmarks' own settings, the same for every method, on top of the quickstart's
# (a benchmark's --set wins):
#   lr 1e-3        the student moves: at the quickstart's 3e-4 no method recovered more than 0.10
#                  of the teacher/warm-up gap in 120 steps; at 1e-3 kd recovers about half in 400
#   1 trainer rank of 1 thread, so an on-policy run's rollout worker gets the machine's other core
#                  (offline methods hold 1 core, on-policy ones 2: cpu seconds count both)
#   length_window  rows of similar length batched together (data.length_window): less padding,
#                  the same rows every epoch
BENCH_SETTINGS = ["trainer.lr=1.0e-3", "trainer.num_workers=1", "trainer.num_cpus_per_worker=1",
                  "data.length_window=8"]

# two-sided 95% quantiles of Student's t by degrees of freedom (beyond 30: the normal's 1.96)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def cores_held(cfg: dict) -> int:
    """Threads the run's actors hold: each trainer rank and each rollout worker runs
    max(1, int(num_cpus)) torch threads (trainer/group.py, pipeline/rollout_loop.py)."""
    from distill_ray.config import from_dict
    from distill_ray.methods import method_spec

    c = from_dict(cfg, "config.json")
    cores = c.trainer.num_workers * max(1, int(c.trainer.num_cpus_per_worker))
    if method_spec(c).rollouts:
        cores += c.rollout.num_workers * max(1, int(c.rollout.num_cpus_per_worker))
    return cores


def train_time(m: dict) -> float:
    """A step's training time: its wall time without validation and checkpointing."""
    return m["timing/step_total"] - m.get("timing/eval", 0.0) - m.get("timing/checkpoint", 0.0)


def teacher_share_by_position(metrics: list[dict]) -> dict[str, float] | None:
    """SWITCH: the teacher's share of the response tokens per position bucket over the whole run,
    token-weighted (`switch/teacher_fraction/<bucket>` x `switch/tokens/<bucket>` of each step);
    None for a run without SWITCH batches."""
    written: dict[str, float] = {}
    tokens: dict[str, float] = {}
    for m in metrics:
        for key, n in m.items():
            if key.startswith("switch/tokens/"):
                bucket = key.removeprefix("switch/tokens/")
                tokens[bucket] = tokens.get(bucket, 0.0) + n
                written[bucket] = written.get(bucket, 0.0) + n * m[f"switch/teacher_fraction/{bucket}"]
    return {b: written[b] / tokens[b] for b in tokens} or None


def to_target(run: dict, key: str, target: float, lower_is_better: bool = False) -> dict:
    """Steps, train seconds and cpu seconds to the first validation point of `run` whose `key`
    reaches `target` (at or above it; at or below it when lower is better)."""
    reached = (lambda v: v <= target + 1e-12) if lower_is_better else (lambda v: v >= target - 1e-12)
    hit = next((c for c in run["validation"] if reached(c[key])), None)
    if hit is None:
        return {"steps": None, "seconds": None, "cpu_seconds": None}
    return {"steps": hit["step"], "seconds": hit["train_seconds"], "cpu_seconds": hit["train_seconds"] * run["cores_held"]}


def spread(values: list[float | None]) -> dict:
    """Median and range over seeds; seeds that never got there are counted apart ("never")."""
    got = [v for v in values if v is not None]
    out = {"per_seed": [("never" if v is None else v) for v in values], "reached": len(got), "of": len(values)}
    if len(got) == len(values) and got:  # a median is only meaningful when every seed got there
        out.update(median=statistics.median(got), min=min(got), max=max(got))
    else:
        out.update(median="never" if len(got) * 2 <= len(values) else statistics.median(
            [float("inf") if v is None else v for v in values]), min=min(got) if got else "never", max="never")
    return out


def time_ratio(num: dict, den: dict, key: str = "seconds_to_target") -> dict:
    """num's median time to target over den's, with the range of the per-seed ratios (seeds paired)."""
    a, b = num[key]["per_seed"], den[key]["per_seed"]
    pairs = [x / y for x, y in zip(a, b) if x != "never" and y != "never" and y > 0]
    med_a, med_b = num[key]["median"], den[key]["median"]
    ratio = med_a / med_b if isinstance(med_a, float) and isinstance(med_b, float) and med_b > 0 else None
    out = {"ratio_of_medians": ratio, "per_seed": pairs, "min": min(pairs) if pairs else None,
           "max": max(pairs) if pairs else None}
    if ratio is None:
        out["why_none"] = f"{'numerator' if not isinstance(med_a, float) else 'denominator'} never reached the target in most seeds"
    return out


def mean_std(values: list[float]) -> dict:
    """Mean, sample standard deviation, range and the values themselves (one per seed)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "per_seed": list(values)}


def paired_interval(diffs: list[float]) -> dict:
    """Per-seed paired differences (a - b, same seed) -> their mean with a two-sided 95% t interval
    and a verdict on "a > b": `a above b` when the interval lies above 0, `a below b` when below,
    `not resolved` when it holds 0 (or with a single seed, which has no interval)."""
    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return {"n": n, "mean": mean, "ci95": None, "per_seed": list(diffs), "verdict": "not resolved"}
    half = (_T975[n - 2] if n - 1 <= len(_T975) else 1.96) * statistics.stdev(diffs) / math.sqrt(n)
    lo, hi = mean - half, mean + half
    verdict = "a above b" if lo > 0 else "a below b" if hi < 0 else "not resolved"
    return {"n": n, "mean": mean, "ci95": [lo, hi], "per_seed": list(diffs), "verdict": verdict}


def training_parser(doc: str, out: Path, quick_help: str) -> argparse.ArgumentParser:
    """The options every training benchmark has (methods, steps, response length, models, --quick,
    --out); the caller adds its own."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--methods", default="sft,kd,okd,sgo,switch")
    p.add_argument("--steps", type=int, default=120, help="training steps per run")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--models", default=str(out.parents[2] / "local"), help="root of the local models (built if missing)")
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--out", default=str(out))
    return p


def run_method(method: str, paths: dict, out: Path, overrides: list[str], student: str | None = None) -> tuple[dict, list[dict]]:
    """Distil `method` with configs/quickstart.yaml + the quickstart's settings for it + `overrides`,
    on the models in `paths` (init_local_models' result; `student` replaces its student), writing
    to `out`. Returns the driver's result and the run's metrics.jsonl rows."""
    from distill_ray.config import load_config
    from distill_ray.pipeline.driver import connect_ray, run
    from distill_ray.quickstart import METHODS, _config_path

    base = [
        f"model.teacher={paths['teacher']}", f"model.student={student or paths['student']}",
        f"data.train={paths['data']}/train.jsonl", f"data.validation={paths['data']}/validation.jsonl",
        f"trainer.output_dir={out}", "logging.tensorboard=false", "logging.progress=false",
    ]
    cfg = load_config(_config_path(), base + METHODS[method] + overrides)
    connect_ray(cfg)
    result = run(cfg, quiet=True)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return result, metrics


def machine(load_before: tuple[float, float, float]) -> dict:
    """The machine a result was measured on, with the load average before and after the run."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "load_average_before": list(load_before), "load_average_after": list(os.getloadavg())}


def write_result(path: str | Path, result: dict) -> Path:
    """Write `result` as JSON to `path` through a temp file and a rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    return path
