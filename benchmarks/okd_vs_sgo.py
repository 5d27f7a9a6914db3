"""OKD against student-generated-output (SGO) training: what does each method cost to reach the same quality?

    python benchmarks/okd_vs_sgo.py                  # quickstart models (built if missing), 7 variants x 3 seeds, 400 steps
    python benchmarks/okd_vs_sgo.py --methods sft,kd,okd,okd_lr1e-4,sgo,sgo_l1,sgo_sync,switch,switch_l05   # every variant
    python benchmarks/okd_vs_sgo.py --quick --out /tmp/okd_vs_sgo.json   # tiny models, a smoke test

Every variant starts from the same warm-up student and trains with the same teacher, data, optimizer,
divergence (forward KL) and machine, one run after another on one local Ray, each through the real
driver (configs/quickstart.yaml plus the quickstart's per-method settings plus _common.BENCH_SETTINGS: one
DeepSpeed ZeRO-2 trainer rank at lr 1e-3, length-grouped batches, and 1 torch rollout worker for the
on-policy variants), once per seed (trainer.seed: data order, sampling).
The variants:

    sft, kd, okd     offline: dataset responses only
    okd_lr1e-4       okd with the online module's learning rate at 1e-4 instead of the quickstart's 1e-3
    sgo              on-policy at lambda_on 0.5 (DistiLLM's GKD baseline), asynchronous (staleness 1)
    sgo_l1           on-policy at lambda_on 1.0 (GKD's pure on-policy setting), asynchronous
    sgo_sync         lambda_on 0.5, synchronous (max_staleness 0: every batch from the current student)
    switch           SWITCH sequences only (student writes, teacher takes over on disagreement): lambda_on 1.0
    switch_l05       SWITCH sequences mixed half and half with dataset batches (lambda_on 0.5, like sgo;
                     the quickstart's switch)

Validation ROUGE-L on the same rows at step 0 (the warm-up student, evaluated here) and every
--eval-every steps. From each run's own metrics.jsonl:

    train time     the loop's time per step without validation and checkpoints
                   (timing/step_total - timing/eval - timing/checkpoint)
    cores held     the threads the run's actors hold (trainer ranks x threads per rank, plus rollout
                   workers x threads per worker for on-policy variants); cpu seconds = cores held x train time
    target         warm-up ROUGE-L + --target-fraction x (best variant's mean final - warm-up): above the
                   warm-up score by construction, and the benchmark stops with an error when no variant
                   improves on the warm-up (then there is nothing to reach)
    to target      steps, train seconds and cpu seconds up to the first validation at or above the
                   target, per seed; "never" when a seed never gets there; median and range over seeds

Headline: sgo_over_okd_time_to_target (median seconds to target of sgo over okd's, with the range of
the per-seed ratios). The OKD paper reports up to 4x less training time than SGO methods.
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
from benchmarks._common import spread, time_ratio  # noqa: E402  (shared with real_pair)

BREAKDOWN = {  # column -> metric key (seconds per step)
    "rollout_wait": "timing/rollout_wait",
    "teacher_forward": "timing/teacher_forward",
    "student_fwd_bwd": "timing/student_forward_backward",
    "optimizer": "timing/optimizer",
    "weight_sync": "timing/weight_sync",
}

# variant -> (the quickstart method it runs, overrides on top of the quickstart's settings for it)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "sft": ("sft", []),
    "kd": ("kd", []),
    "okd": ("okd", []),
    # the online module at a tenth of the student's rate (the quickstart gives both 1e-3: the teacher's
    # module may then move toward the student as fast as the student moves toward the teacher)
    "okd_lr1e-4": ("okd", ["method.okd.lr=1.0e-4"]),
    "sgo": ("sgo", ["method.lambda_on=0.5"]),
    "sgo_l1": ("sgo", ["method.lambda_on=1.0"]),
    "sgo_sync": ("sgo", ["method.lambda_on=0.5", "rollout.max_staleness=0"]),
    # switch on SWITCH sequences only (the published run's), and mixed half and half like sgo (the quickstart's)
    "switch": ("switch", ["method.lambda_on=1.0"]),
    "switch_l05": ("switch", ["method.lambda_on=0.5"]),
}
DIVERGENCE = "forward_kl"  # one divergence for every variant, so data source and loss are not confounded


def run_variant(variant: str, seed: int, paths: dict, out: Path, args) -> dict:
    method, extra = VARIANTS[variant]
    _, metrics = _common.run_method(method, paths, out, common_overrides(args, seed) + extra)
    cfg = json.loads((out / "config.json").read_text())
    return summarize(metrics, _common.cores_held(cfg))


def common_overrides(args, seed: int) -> list[str]:
    overrides = [
        "data.test=null", f"trainer.max_steps={args.steps}", f"trainer.eval_every={args.eval_every}",
        f"eval.max_examples={args.eval_examples}", f"eval.max_new_tokens={args.max_new_tokens}",
        f"rollout.max_new_tokens={args.max_new_tokens}", f"trainer.seed={seed}", f"loss.divergence={DIVERGENCE}",
        *_common.BENCH_SETTINGS,
    ]
    if args.quick:
        overrides += ["trainer.batch_size=8", "trainer.warmup_steps=1"]
    return overrides + list(args.set)


def summarize(metrics: list[dict], cores: int) -> dict:
    """One run: step times, tokens, the time breakdown and its validation curve (step 0 is added
    by the caller, which evaluates the warm-up student once for all runs)."""
    times = [_common.train_time(m) for m in metrics]
    breakdown = {col: statistics.median(m.get(key, 0.0) for m in metrics) for col, key in BREAKDOWN.items()}
    breakdown["other"] = max(0.0, statistics.median(times) - sum(breakdown.values()))
    curve, elapsed = [], 0.0
    for m, t in zip(metrics, times):
        elapsed += t
        if "val/rouge_l" in m:
            curve.append({"step": m["step"], "train_seconds": elapsed, "rouge_l": m["val/rouge_l"],
                          "exact_match": m["val/exact_match"]})
    return {
        "steps": len(metrics),
        "cores_held": cores,
        "step_seconds": {"mean": statistics.fmean(times), "median": statistics.median(times),
                         "std": statistics.pstdev(times), "min": min(times), "max": max(times)},
        "train_seconds": sum(times),
        "tokens_trained": sum(m.get("tokens", 0.0) for m in metrics),
        "on_policy_fraction": statistics.fmean(m.get("on_policy", 0.0) for m in metrics),
        # SWITCH: the share of response tokens the teacher wrote, over the batches trained on
        "switch_teacher_fraction": (statistics.fmean(fr) if (fr := [m["switch/teacher_fraction"] for m in metrics
                                                                     if "switch/teacher_fraction" in m]) else None),
        "switch_teacher_fraction_by_position": _common.teacher_share_by_position(metrics),
        "breakdown_seconds": breakdown,
        "rollout_busy_seconds": statistics.median(m.get("timing/generate", 0.0) for m in metrics),
        "validation": curve,
        "final_rouge_l": curve[-1]["rouge_l"] if curve else None,
    }


def aggregate(variant_runs: list[dict], warmup: float, target: float) -> dict:
    """Every seed's run of one variant -> the per-variant entry of the JSON."""
    finals = [r["final_rouge_l"] - warmup for r in variant_runs]
    hits = [_common.to_target(r, "rouge_l", target) for r in variant_runs]
    steps = len(variant_runs[0]["validation"])
    curve = [{"step": variant_runs[0]["validation"][i]["step"],
              "train_seconds": statistics.fmean(r["validation"][i]["train_seconds"] for r in variant_runs),
              "rouge_l": statistics.fmean(r["validation"][i]["rouge_l"] for r in variant_runs),
              "rouge_l_std": statistics.pstdev([r["validation"][i]["rouge_l"] for r in variant_runs]),
              "exact_match": statistics.fmean(r["validation"][i]["exact_match"] for r in variant_runs)}
             for i in range(steps)]
    gain = _common.mean_std(finals)
    return {
        "cores_held": variant_runs[0]["cores_held"],
        "steps_to_target": spread([h["steps"] for h in hits]),
        "seconds_to_target": spread([h["seconds"] for h in hits]),
        "cpu_seconds_to_target": spread([h["cpu_seconds"] for h in hits]),
        "final_rouge_l": _common.mean_std([r["final_rouge_l"] for r in variant_runs]),
        "final_minus_warmup": gain,
        # above the warm-up by more than the seed spread: every seed above it and the mean beyond one std
        "above_warmup_beyond_spread": gain["min"] > 0 and gain["mean"] > gain["std"],
        "step_seconds_mean": _common.mean_std([r["step_seconds"]["mean"] for r in variant_runs]),
        "step_seconds_median": _common.mean_std([r["step_seconds"]["median"] for r in variant_runs]),
        "train_seconds_total": _common.mean_std([r["train_seconds"] for r in variant_runs]),
        "tokens_trained": _common.mean_std([r["tokens_trained"] for r in variant_runs]),
        "on_policy_fraction": statistics.fmean(r["on_policy_fraction"] for r in variant_runs),
        "switch_teacher_fraction": (statistics.fmean(fr) if (fr := [r["switch_teacher_fraction"] for r in variant_runs
                                                                     if r.get("switch_teacher_fraction") is not None]) else None),
        # the seeds' by-position shares, averaged per bucket over the seeds that reached it
        "switch_teacher_fraction_by_position": (
            {b: statistics.fmean(d[b] for d in by if b in d) for b in dict.fromkeys(k for d in by for k in d)}
            if (by := [r["switch_teacher_fraction_by_position"] for r in variant_runs
                       if r.get("switch_teacher_fraction_by_position")]) else None),
        "breakdown_seconds": {k: statistics.median(r["breakdown_seconds"][k] for r in variant_runs)
                              for k in variant_runs[0]["breakdown_seconds"]},
        "rollout_busy_seconds": statistics.median(r["rollout_busy_seconds"] for r in variant_runs),
        "validation": curve,
        "runs": variant_runs,
    }


def evaluate_reference(paths: dict, args, role: str, split: str) -> dict:
    """Greedy scores of the teacher or the warm-up student on `split`, with the benchmark's eval settings."""
    from distill_ray.config import load_config
    from distill_ray.data.prepare import prepare_split
    from distill_ray.eval.evaluate import evaluate_model
    from distill_ray.models.build import load_causal_lm
    from distill_ray.models.tokenizer import load_tokenizer
    from distill_ray.quickstart import _config_path

    cfg = load_config(_config_path(), [f"model.teacher={paths['teacher']}", f"model.student={paths['student']}",
                                       f"data.train={paths['data']}/train.jsonl"])
    tokenizer = load_tokenizer(paths["student"])
    rows, _ = prepare_split(cfg.data, tokenizer, f"{paths['data']}/{split}.jsonl", shuffle=False,
                            max_rows=args.eval_examples if split == "validation" else None)
    res = evaluate_model(load_causal_lm(paths[role]), tokenizer, rows, max_new_tokens=args.max_new_tokens,
                         batch_size=cfg.eval.batch_size)
    return {k: res[k] for k in ("overall", "by_length", "by_task")}


def main(argv: list[str] | None = None) -> int:
    p = _common.training_parser(__doc__, ROOT / "benchmarks" / "results" / "okd_vs_sgo.json",
                                "tiny models, 4 steps, 2 seeds: a smoke test")
    p.set_defaults(methods="sft,kd,okd,sgo,sgo_l1,sgo_sync,switch", steps=400)
    p.add_argument("--seeds", default="0,1,2", help="trainer seeds; every variant runs once per seed")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--eval-examples", type=int, default=60, help="validation rows per evaluation")
    p.add_argument("--resume", action="store_true",
                   help="keep the runs in OUT.partial.json (an interrupted benchmark) and run only the missing ones")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every variant (repeatable), e.g. --set trainer.lr=1e-3")
    p.add_argument("--target-fraction", type=float, default=0.5,
                   help="target = warm-up + this fraction of the best variant's mean gain")
    args = p.parse_args(argv)
    variants = args.methods.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"--methods: unknown variant(s) {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    if not {"okd", "sgo"} <= set(variants):
        p.error("--methods must include okd and sgo (the headline compares them)")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.quick:
        args.steps, args.eval_every, args.eval_examples, args.max_new_tokens = 4, 2, 8, 16
        seeds = seeds[:2]

    import os

    import ray

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="okd_vs_sgo_"))
    from distill_ray.testbed import init_benchmark_models

    paths = init_benchmark_models(args.quick, work / "models" if args.quick else Path(args.models))
    load_before = os.getloadavg()
    t_all = time.perf_counter()
    print("-- step 0: the warm-up student and the teacher on the validation rows", flush=True)
    warmup = evaluate_reference(paths, args, "student", "validation")
    teacher = evaluate_reference(paths, args, "teacher", "validation")
    # the testbed itself, on every test row: is the teacher exact at every length, is the student not?
    testbed = {role: evaluate_reference(paths, args, key, "test") for role, key in (("teacher", "teacher"), ("warmup", "student"))}
    w0 = warmup["overall"]["rouge_l"]
    for role, res in testbed.items():
        print(f"   {role} on the test split: " + ", ".join(
            f"{b.split()[0]} EM {v['exact_match']:.2f} RL {v['rouge_l']:.2f} len {v['mean_length']:.0f}"
            for b, v in res["by_length"].items() if v["n"]), flush=True)
    print(f"   validation ROUGE-L: warm-up {w0:.3f}, teacher {teacher['overall']['rouge_l']:.3f}", flush=True)
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    partial_path = Path(args.out).with_suffix(".partial.json")
    if args.resume and partial_path.is_file():
        kept = json.loads(partial_path.read_text())
        if kept["warmup"]["overall"] != warmup["overall"]:
            p.error(f"--resume: {partial_path} was measured from another warm-up student; remove it")
        for v in variants:
            runs[v] = [r for r in kept["runs"].get(v, []) if r["seed"] in seeds]
        print(f"-- resuming: {sum(map(len, runs.values()))} runs kept from {partial_path}", flush=True)
    own_ray = not ray.is_initialized()  # inside the test suite the session's Ray is reused, not shut down
    try:
        for seed in seeds:  # seeds outermost: a drift in machine load spreads over every variant alike
            for variant in variants:
                if any(r["seed"] == seed for r in runs[variant]):
                    continue
                t0 = time.perf_counter()
                print(f"-- {variant} seed {seed}: {args.steps} steps", flush=True)
                run = run_variant(variant, seed, paths, work / f"{variant}-{seed}", args)
                run["seed"], run["wall_seconds"] = seed, time.perf_counter() - t0
                run["validation"].insert(0, {"step": 0, "train_seconds": 0.0, "rouge_l": w0,
                                             "exact_match": warmup["overall"]["exact_match"]})
                runs[variant].append(run)
                # every run so far, rewritten after each one: an interrupted benchmark keeps what it measured
                _common.write_result(partial_path,
                                     {"warmup": warmup, "teacher": teacher, "testbed": testbed, "runs": runs})
                print(f"   final validation ROUGE-L {run['final_rouge_l']:.3f} (warm-up {w0:.3f}), "
                      f"{run['train_seconds']:.0f}s training", flush=True)
    finally:
        if own_ray and ray.is_initialized():
            ray.shutdown()

    best = max(variants, key=lambda v: statistics.fmean(r["final_rouge_l"] for r in runs[v]))
    best_final = statistics.fmean(r["final_rouge_l"] for r in runs[best])
    target = w0 + args.target_fraction * (best_final - w0)
    for v in variants:
        runs[v].sort(key=lambda r: seeds.index(r["seed"]))  # seed order, so per-seed ratios pair up
    per_variant = {v: aggregate(runs[v], w0, target) for v in variants}
    t_rouge = teacher["overall"]["rouge_l"]
    result = {
        "question": "training cost of each method to the same quality, on the same models, data and machine (OKD vs SGO)",
        "settings": {"variants": {v: {"method": VARIANTS[v][0], "overrides": VARIANTS[v][1]} for v in variants},
                     "divergence": DIVERGENCE, "bench_settings": _common.BENCH_SETTINGS, "seeds": seeds, "steps": args.steps, "eval_every": args.eval_every,
                     "eval_examples": args.eval_examples, "max_new_tokens": args.max_new_tokens, "quick": args.quick,
                     "target_fraction": args.target_fraction, "overrides": list(args.set),
                     "config": "configs/quickstart.yaml + distill_ray/quickstart.py METHODS + the variant's overrides"},
        "seeds": len(seeds),
        "warmup_rouge_l": w0,
        "teacher_rouge_l": t_rouge,
        "teacher_validation": teacher,
        "warmup_validation": warmup,
        "testbed_test_split": testbed,
        "teacher_exact_match_by_length_test": {b: v["exact_match"] for b, v in testbed["teacher"]["by_length"].items()},
        "best_variant": best,
        "best_gap_recovered": (best_final - w0) / (t_rouge - w0) if t_rouge > w0 else None,
        "target_rouge_l": target,
        "target_above_warmup": target > w0,
        "target_rule": f"warm-up + {args.target_fraction} x ({best}'s mean final - warm-up)",
        "sgo_over_okd_time_to_target": time_ratio(per_variant["sgo"], per_variant["okd"]),
        "sgo_over_okd_cpu_seconds_to_target": time_ratio(per_variant["sgo"], per_variant["okd"], "cpu_seconds_to_target"),
        "over_okd_time_to_target": {v: time_ratio(per_variant[v], per_variant["okd"]) for v in variants if v != "okd"},
        "methods": per_variant,
        "total_seconds": time.perf_counter() - t_all,
        "machine": _common.machine(load_before),
    }
    if not result["target_above_warmup"]:
        rejected = _common.write_result(Path(args.out).with_suffix(".rejected.json"), result)
        print(format_table(result))
        print(f"error: no variant improved on the warm-up student (best {best}: {best_final:.4f} <= {w0:.4f}); "
              f"a time to target means nothing here. Runs kept in {rejected}; {args.out} left as it was.", file=sys.stderr)
        return 1
    out = _common.write_result(args.out, result)
    print(format_table(result))
    print(f"wrote {out}")
    return 0


def _fmt_spread(s: dict, unit: str = "") -> str:
    med = s["median"]
    if not isinstance(med, float) and not isinstance(med, int):
        return f"never ({s['reached']}/{s['of']})"
    rng = f" [{s['min']:.0f}-{s['max']}]" if s["max"] == "never" else f" [{s['min']:.0f}-{s['max']:.0f}]"
    return f"{med:.0f}{unit}{rng}"


def format_table(result: dict) -> str:
    head = (f"{'variant':<9} {'cores':>5} {'step s mean':>11} {'final RL':>15} {'gain':>15} "
            f"{'steps to tgt':>14} {'s to tgt':>14} {'cpu-s to tgt':>16} {'tokens':>8}")
    lines = [head, "-" * len(head)]
    for name, r in result["methods"].items():
        f, g = r["final_rouge_l"], r["final_minus_warmup"]
        lines.append(
            f"{name:<9} {r['cores_held']:>5} {r['step_seconds_mean']['mean']:>11.3f} "
            f"{f['mean']:>8.3f}±{f['std']:.3f} {g['mean']:>+8.3f}±{g['std']:.3f} "
            f"{_fmt_spread(r['steps_to_target']):>14} {_fmt_spread(r['seconds_to_target'], 's'):>14} "
            f"{_fmt_spread(r['cpu_seconds_to_target'], 's'):>16} {r['tokens_trained']['mean']:>8.0f}"
        )
    h = result["sgo_over_okd_time_to_target"]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}x"  # noqa: E731
    lines.append(f"warm-up ROUGE-L {result['warmup_rouge_l']:.3f}, teacher {result['teacher_rouge_l']:.3f}, "
                 f"target {result['target_rouge_l']:.3f} ({result['target_rule']}); best gap recovered "
                 f"{fmt(result['best_gap_recovered']).rstrip('x')}")
    lines.append(f"sgo/okd time to target {fmt(h['ratio_of_medians'])} (per-seed {fmt(h['min'])}-{fmt(h['max'])}); "
                 f"{result['seeds']} seeds")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
