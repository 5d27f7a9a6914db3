"""The quickstart (`make demo`): the whole product on one machine, start to finish.

1. `models init`: synthetic data, tokenizer, teacher (SFT) and student (SFT warm-up).
2. Train students with each method in configs/quickstart.yaml from the same warm-up student.
3. Evaluate teacher, warm-up student and each trained student on the test split; print a table.
"""

from __future__ import annotations

import time
from pathlib import Path

from distill_ray.config import load_config
from distill_ray.data.prepare import prepare_split
from distill_ray.eval.evaluate import evaluate_model, write_json
from distill_ray.models.build import count_parameters, load_causal_lm
from distill_ray.models.local import LocalModelsSpec, init_local_models
from distill_ray.models.tokenizer import load_tokenizer
from distill_ray.pipeline.local_run import run_local

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
METHODS = ("sft", "kd")


def _config_path() -> Path:
    if CONFIG.is_file():
        return CONFIG
    import importlib.resources

    return Path(str(importlib.resources.files("distill_ray") / "configs" / "quickstart.yaml"))


def run_quickstart(out_dir: str = "local", fast: bool = False) -> dict:
    t_all = time.perf_counter()
    spec = LocalModelsSpec(out_dir=out_dir)
    if fast:  # a smoke run: tiny data and few steps (quality is not the point)
        spec.num_train, spec.num_validation, spec.num_test = 2000, 50, 50
        spec.teacher_steps, spec.student_steps = 30, 10
    print(f"== 1/3 local data and models in {out_dir}/", flush=True)
    paths = init_local_models(spec)

    root = Path(out_dir)
    base = [
        f"model.teacher={paths['teacher']}",
        f"model.student={paths['student']}",
        f"data.train={paths['data']}/train.jsonl",
        f"data.validation={paths['data']}/validation.jsonl",
        f"data.test={paths['data']}/test.jsonl",
    ]
    if fast:
        base += ["trainer.max_steps=5", "eval.max_examples=20", "eval.max_new_tokens=64"]
    rows = {}
    print("== 2/3 distilling students", flush=True)
    for method in METHODS:
        cfg = load_config(_config_path(), base + [f"method.name={method}", f"trainer.output_dir={root}/runs/{method}"])
        print(f"-- {method}", flush=True)
        t0 = time.perf_counter()
        result = run_local(cfg)
        rows[f"{method} student"] = {"eval": result["test"], "seconds": time.perf_counter() - t0}

    print("== 3/3 evaluating teacher and warm-up student", flush=True)
    tokenizer = load_tokenizer(paths["student"])
    test, _ = prepare_split(cfg.data, tokenizer, cfg.data.test, shuffle=False, max_rows=cfg.eval.max_examples or None)
    params = {}
    for name, path in (("teacher", paths["teacher"]), ("warm-up student (SFT)", paths["student"])):
        model = load_causal_lm(path)
        params[name] = count_parameters(model)
        t0 = time.perf_counter()
        res = evaluate_model(model, tokenizer, test, max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size)
        rows = {name: {"eval": res, "seconds": None}, **rows} if name == "teacher" else {**rows, name: {"eval": res, "seconds": None}}
    student_params = params["warm-up student (SFT)"]
    print()
    print(f"teacher {params['teacher'] / 1e6:.2f}M parameters, student {student_params / 1e6:.2f}M "
          f"({params['teacher'] / student_params:.1f}x smaller); test rows: {len(test)}")
    header = f"{'model':<24}{'exact match':>12}{'ROUGE-L':>9}{'mean len':>10}{'train time':>12}"
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        o = row["eval"]["overall"]
        secs = "-" if row["seconds"] is None else f"{row['seconds']:.0f}s"
        print(f"{name:<24}{o['exact_match']:>12.3f}{o['rouge_l']:>9.3f}{o['mean_length']:>10.1f}{secs:>12}")
    summary = {
        "parameters": params,
        "rows": {k: {"overall": v["eval"]["overall"], "by_length": v["eval"]["by_length"], "seconds": v["seconds"]} for k, v in rows.items()},
        "total_seconds": time.perf_counter() - t_all,
    }
    write_json(root / "quickstart.json", summary)
    print(f"\nquickstart finished in {summary['total_seconds']:.0f}s; results in {root / 'quickstart.json'}")
    return summary
