"""The quickstart (`make demo`): the whole product on one machine, start to finish.

1. `models init`: synthetic data, tokenizer, teacher (SFT) and student (SFT warm-up).
2. Distill a student with each method in METHODS through the distributed pipeline (a local
   Ray in this process: DeepSpeed trainer ranks, rollout workers, the queue), every method
   from the same warm-up student, with configs/quickstart.yaml plus the method's overrides.
3. Evaluate the teacher and the warm-up student on the same test rows; print one table.
"""

from __future__ import annotations

import time
from pathlib import Path

from distill_ray.config import load_config
from distill_ray.data.prepare import prepare_split
from distill_ray.eval.evaluate import evaluate_model, write_json
from distill_ray.models.build import count_parameters, load_causal_lm
from distill_ray.testbed import LocalModelsSpec, init_local_models
from distill_ray.models.tokenizer import load_tokenizer

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"

# method -> its settings on top of configs/quickstart.yaml (the rest is shared, the divergence
# included: forward KL for every method, so where the sequences come from is the only difference).
# sgo and switch mix student-generated (SWITCH) and dataset batches half and half (DistiLLM's GKD
# baseline): a small warm-up student's own samples alone (lambda_on 1) first pull it below its
# warm-up (BENCHMARKS.md, okd_vs_sgo's curves), which a 200-step run does not recover from.
METHODS: dict[str, list[str]] = {
    "sft": ["method.name=sft"],
    "kd": ["method.name=kd"],
    "sgo": ["method.name=sgo", "method.lambda_on=0.5"],
    "switch": ["method.name=switch", "method.lambda_on=0.5"],
    "okd": ["method.name=okd"],
}


def _config_path() -> Path:
    if CONFIG.is_file():
        return CONFIG
    import importlib.resources

    return Path(str(importlib.resources.files("distill_ray") / "configs" / "quickstart.yaml"))


def run_quickstart(out_dir: str = "local", fast: bool = False, methods: list[str] | None = None,
                   verbose: bool = False) -> dict:
    import ray

    from distill_ray.pipeline.driver import connect_ray, run

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
    if verbose:
        base.append("logging.verbose=true")
    if fast:
        base += ["trainer.max_steps=4", "eval.max_examples=16", "eval.max_new_tokens=48", "rollout.max_new_tokens=48"]
    rows = {}
    print("== 2/3 distilling students through the pipeline (local Ray)", flush=True)
    cfg = None
    try:
        for method in methods or list(METHODS):
            cfg = load_config(_config_path(), base + METHODS[method] + [f"trainer.output_dir={root}/runs/{method}"])
            logs = connect_ray(cfg).get("logs")  # once: later runs find it started
            if logs and not verbose:
                print(f"   actors' output: {logs} (--verbose shows it here)", flush=True)
            print(f"-- {method}", flush=True)
            t0 = time.perf_counter()
            result = run(cfg)
            rows[f"{method} student"] = {"eval": result["test"], "seconds": time.perf_counter() - t0,
                                         "train_seconds": result["train_seconds"]}
    finally:
        if ray.is_initialized():
            ray.shutdown()

    print("== 3/3 evaluating teacher and warm-up student", flush=True)
    tokenizer = load_tokenizer(paths["student"])
    test, _ = prepare_split(cfg.data, tokenizer, cfg.data.test, shuffle=False, max_rows=cfg.eval.max_examples or None)
    params, reference = {}, {}
    for name, path in (("teacher", paths["teacher"]), ("warm-up student (SFT)", paths["student"])):
        model = load_causal_lm(path)
        params[name] = count_parameters(model)
        res = evaluate_model(model, tokenizer, test, max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size)
        reference[name] = {"eval": res, "seconds": None, "train_seconds": None}
    rows = {"teacher": reference["teacher"], **rows, "warm-up student (SFT)": reference["warm-up student (SFT)"]}
    student_params = params["warm-up student (SFT)"]
    print()
    print(f"teacher {params['teacher'] / 1e6:.2f}M parameters, student {student_params / 1e6:.2f}M "
          f"({params['teacher'] / student_params:.1f}x smaller); test rows: {len(test)}; "
          f"{cfg.trainer.max_steps} steps of {cfg.trainer.batch_size} sequences per method")
    header = f"{'model':<24}{'exact match':>12}{'ROUGE-L':>9}{'mean len':>10}{'train time':>12}{'wall time':>11}"
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        o = row["eval"]["overall"]
        train = "-" if row["train_seconds"] is None else f"{row['train_seconds']:.0f}s"
        wall = "-" if row["seconds"] is None else f"{row['seconds']:.0f}s"
        print(f"{name:<24}{o['exact_match']:>12.3f}{o['rouge_l']:>9.3f}{o['mean_length']:>10.1f}{train:>12}{wall:>11}")
    summary = {
        "parameters": params,
        "rows": {k: {"overall": v["eval"]["overall"], "by_length": v["eval"]["by_length"], "seconds": v["seconds"],
                     "train_seconds": v["train_seconds"]} for k, v in rows.items()},
        "total_seconds": time.perf_counter() - t_all,
    }
    write_json(root / "quickstart.json", summary)
    print(f"\nquickstart finished in {summary['total_seconds']:.0f}s; results in {root / 'quickstart.json'}")
    print("train time: the training loop; wall time: the whole run (actors, training, export, test evaluation)")
    return summary
