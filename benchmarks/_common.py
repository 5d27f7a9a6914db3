"""What the benchmarks share: the options of a training benchmark, running one method through
the real driver on the quickstart config, the machine description, and writing a result file
atomically (never half-written)."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path


def training_parser(doc: str, out: Path, quick_help: str) -> argparse.ArgumentParser:
    """The options every training benchmark has (methods, steps, response length, models, --quick,
    --out); the caller adds its own."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--methods", default="sft,kd,okd,sgo,switch")
    p.add_argument("--steps", type=int, default=120, help="training steps per run (the quickstart's)")
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
