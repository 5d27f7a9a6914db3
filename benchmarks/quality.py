"""Quality of each method on the test split, overall and by response length, for two student sizes.

    python benchmarks/quality.py                  # quickstart models (+ a larger student), 5 methods x 2 sizes x 5 seeds
    python benchmarks/quality.py --quick --out /tmp/quality.json    # tiny models, a smoke test

Every run is the quickstart's (configs/quickstart.yaml plus the method's settings in
distill_ray/quickstart.py) with the training benchmarks' settings (_common.BENCH_SETTINGS: lr 1e-3,
one DeepSpeed ZeRO-2 rank, length-grouped batches, 1 torch rollout worker for on-policy methods),
--steps steps from the same SFT warm-up student, and is scored on the same test rows with greedy
decoding. Two students against the one teacher (1.31M parameters):

    small   the quickstart student, 64 wide x 2 layers (0.26M): a large gap (5x)
    large   LARGE_STUDENT in distill_ray/testbed.py, 96 x 3 (0.64M): a small gap (2.1x)

Each (size, method) runs with --seeds (trainer.seed and data.shuffle_seed: data order, sampling,
OKD module init); the JSON gives every seed's scores (exact match, ROUGE-L, output length, share of
outputs cut at the generation cap) and their mean and standard deviation, overall, per
reference-length bucket (distill_ray/eval/scores.py LENGTH_BUCKETS), per task and per length within
each task, plus the teacher's and each warm-up student's scores on the same rows, and the papers'
claims (`claims`), each as paired per-seed differences with a 95% t interval and a verdict:

    okd_vs_best_sgo                  OKD minus the better of sgo and switch (the OKD paper: OKD
                                     matches or beats the methods that train on student outputs)
    switch_vs_best_other             SWITCH minus the best other method, per size and length bucket
    switch_gain_long_minus_short     SWITCH's gain on long minus on short responses (the SWITCH
                                     paper: the gain grows with response length)
    switch_gain_small_minus_large    SWITCH's gain with the small student minus the large one
                                     (the gain grows with the teacher/student gap)

Progress goes to stdout; a partial JSON (NAME.partial.json) is rewritten after every run, so an
interrupted benchmark keeps what it measured, and `--resume` runs only what is missing from it
(refused when its settings, teacher or warm-up students differ from this run's).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common  # noqa: E402

METRICS = ("exact_match", "rouge_l", "mean_length", "hit_cap")


def _mean_std(values: list[float]) -> dict:
    return {k: v for k, v in _common.mean_std(values).items() if k in ("mean", "std")}


def _agg_cells(rows: list[dict]) -> dict:
    return {"n": rows[0]["n"], **{m: _mean_std([r[m] for r in rows]) for m in METRICS}}


def aggregate(per_seed: list[dict]) -> dict:
    """Mean and standard deviation over seeds of each metric, overall, per length bucket, per task
    and per length bucket within each task (empty cells left out)."""
    out = {"overall": {m: _mean_std([s["overall"][m] for s in per_seed]) for m in METRICS}, "by_length": {},
           "by_task": {}, "by_task_length": {}}
    for bucket in per_seed[0]["by_length"]:
        rows = [s["by_length"][bucket] for s in per_seed]
        if rows[0]["n"]:
            out["by_length"][bucket] = _agg_cells(rows)
    for task in per_seed[0].get("by_task", {}):
        out["by_task"][task] = _agg_cells([s["by_task"][task] for s in per_seed])
        cells = {b: [s["by_task_length"][task][b] for s in per_seed] for b in per_seed[0]["by_task_length"][task]}
        out["by_task_length"][task] = {b: _agg_cells(rows) for b, rows in cells.items() if rows[0]["n"]}
    return out


def _per_seed(method: dict, bucket: str | None = None) -> dict[str, float]:
    """seed -> ROUGE-L of one method's runs, overall or in one length bucket."""
    return {seed: (s["overall"] if bucket is None else s["by_length"][bucket])["rouge_l"] for seed, s in method["seeds"].items()}


def _paired(a: dict[str, float], b: dict[str, float]) -> dict:
    seeds = sorted(set(a) & set(b), key=int)
    return {"seeds": seeds, **_common.paired_interval([a[k] - b[k] for k in seeds])}


def _best_other(methods: dict, exclude: str, bucket: str | None = None, among: tuple[str, ...] | None = None) -> str:
    """The method (other than `exclude`, within `among` if given) with the highest mean ROUGE-L."""
    names = [m for m in methods if m != exclude and (among is None or m in among)]
    return max(names, key=lambda m: sum(_per_seed(methods[m], bucket).values()) / len(methods[m]["seeds"]))


def claims(sizes: dict) -> dict:
    """The papers' claims, each from paired per-seed differences of test ROUGE-L (same seed: same
    data order and sampling) with a 95% t interval and a verdict (_common.paired_interval):

    okd_vs_best_sgo          OKD minus the better (by mean) of sgo and switch, per size (the OKD
                             paper: OKD matches or beats the methods that train on student outputs)
    switch_vs_best_other     SWITCH minus the best other method, per size and length bucket
    switch_gain_long_minus_short   (SWITCH - best other) on long minus on short responses, per size:
                             above 0 when SWITCH's gain grows with length (the SWITCH paper)
    switch_gain_small_minus_large  SWITCH's overall gain with the small student (the larger gap)
                             minus with the large one: above 0 when the gain grows with the gap
    """
    out: dict = {"okd_vs_best_sgo": {}, "switch_vs_best_other": {}, "switch_gain_long_minus_short": {},
                 "switch_gain_small_minus_large": None}
    gains: dict[str, dict[str, float]] = {}
    for size, entry in sizes.items():
        methods = entry["methods"]
        sgo_like = tuple(m for m in ("sgo", "switch") if m in methods)
        if "okd" in methods and sgo_like:
            other = _best_other(methods, "okd", among=sgo_like)
            out["okd_vs_best_sgo"][size] = {"against": other, **_paired(_per_seed(methods["okd"]), _per_seed(methods[other]))}
        if "switch" not in methods or len(methods) < 2:
            continue
        buckets = [b for b, c in next(iter(methods["switch"]["seeds"].values()))["by_length"].items() if c["n"]]
        by_bucket = {}
        for bucket in buckets:
            other = _best_other(methods, "switch", bucket)
            by_bucket[bucket] = {"against": other, **_paired(_per_seed(methods["switch"], bucket), _per_seed(methods[other], bucket))}
        out["switch_vs_best_other"][size] = by_bucket
        if len(buckets) >= 2:
            short, long = buckets[0], buckets[-1]
            gain = {b: dict(zip(by_bucket[b]["seeds"], by_bucket[b]["per_seed"])) for b in (short, long)}
            out["switch_gain_long_minus_short"][size] = {"buckets": [long, short], **_paired(gain[long], gain[short])}
        other = _best_other(methods, "switch")
        sw, ot = _per_seed(methods["switch"]), _per_seed(methods[other])
        gains[size] = {k: sw[k] - ot[k] for k in sw if k in ot}
    if {"small", "large"} <= set(gains):
        out["switch_gain_small_minus_large"] = _paired(gains["small"], gains["large"])
    return out


def evaluate_reference(path: str, paths: dict, args) -> tuple[dict, int]:
    """Greedy test-split scores of a model as it is (the teacher, a warm-up student), and its size."""
    from distill_ray.config import load_config
    from distill_ray.data.prepare import prepare_split
    from distill_ray.eval.evaluate import evaluate_model
    from distill_ray.models.build import count_parameters, load_causal_lm
    from distill_ray.models.tokenizer import load_tokenizer
    from distill_ray.quickstart import _config_path

    cfg = load_config(_config_path(), [f"data.test={paths['data']}/test.jsonl"])
    tokenizer = load_tokenizer(path)
    test, _ = prepare_split(cfg.data, tokenizer, cfg.data.test, shuffle=False, max_rows=args.test_examples)
    model = load_causal_lm(path)
    res = evaluate_model(model, tokenizer, test, max_new_tokens=args.max_new_tokens, batch_size=cfg.eval.batch_size)
    return {k: res[k] for k in ("overall", "by_length", "by_task", "by_task_length")}, count_parameters(model)


def main(argv: list[str] | None = None) -> int:
    p = _common.training_parser(__doc__, ROOT / "benchmarks" / "results" / "quality.json",
                                "tiny models, 2 steps, 8 test rows: a smoke test")
    p.add_argument("--sizes", default="small,large", help="student sizes: small (quickstart student), large")
    p.add_argument("--seeds", default="0,1,2,3,4", help="seeds per (size, method): the claims pair runs by seed")
    p.add_argument("--test-examples", type=int, default=200, help="test rows scored (the quickstart's)")
    p.add_argument("--resume", action="store_true",
                   help="keep the runs in OUT.partial.json (an interrupted benchmark, same settings) and run only the missing ones")
    p.set_defaults(steps=400)
    args = p.parse_args(argv)
    methods, sizes = args.methods.split(","), args.sizes.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    if unknown := set(sizes) - {"small", "large"}:
        p.error(f"--sizes: unknown size(s) {sorted(unknown)} (have: small, large)")
    if args.quick:
        args.steps, args.test_examples, args.max_new_tokens = 2, 8, 16

    import ray

    from distill_ray.testbed import init_benchmark_models

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="quality_"))
    print(f"[quality] models in {work / 'models' if args.quick else args.models} (built if missing)", flush=True)
    paths = init_benchmark_models(args.quick, work / "models" if args.quick else Path(args.models), large_student="large" in sizes)
    students = {"small": paths["student"], **paths["students"]}
    overrides = [f"data.test={paths['data']}/test.jsonl", "data.validation=null", f"trainer.max_steps={args.steps}",
                 f"eval.max_examples={args.test_examples}", f"eval.max_new_tokens={args.max_new_tokens}",
                 f"rollout.max_new_tokens={args.max_new_tokens}", *_common.BENCH_SETTINGS]
    if args.quick:
        overrides += ["trainer.batch_size=8", "trainer.warmup_steps=1"]

    load_before = os.getloadavg()
    t_all = time.perf_counter()
    teacher, teacher_params = evaluate_reference(paths["teacher"], paths, args)
    result = {
        "question": "test-split quality of each method, by response length, for a large and a small teacher/student gap",
        "settings": {"methods": methods, "sizes": sizes, "seeds": seeds, "steps": args.steps,
                     "test_examples": args.test_examples, "max_new_tokens": args.max_new_tokens, "quick": args.quick,
                     "bench_settings": _common.BENCH_SETTINGS,
                     "config": "configs/quickstart.yaml + distill_ray/quickstart.py METHODS + bench_settings"},
        "teacher": {"parameters": teacher_params, **teacher},
        "sizes": {},
    }
    partial = Path(args.out).with_suffix(".partial.json")
    kept = resumable(partial, result, p) if args.resume else {}
    total, done = len(sizes) * len(seeds) * len(methods), 0
    own_ray = not ray.is_initialized()  # inside the test suite the session's Ray is reused, not shut down
    try:
        for size in sizes:
            warmup, params = evaluate_reference(students[size], paths, args)
            old = kept.get(size, {})
            if old and old["warmup"]["overall"] != warmup["overall"]:
                p.error(f"--resume: {partial} was measured from another {size} warm-up student; remove it")
            entry = result["sizes"][size] = {"parameters": params, "gap": teacher_params / params, "warmup": warmup,
                                             "methods": {m: {"seeds": {k: v for k, v in old.get("methods", {}).get(m, {}).get("seeds", {}).items()
                                                                       if int(k) in seeds}} for m in methods}}
            print(f"[quality] {size} student: {params / 1e6:.2f}M parameters ({entry['gap']:.1f}x smaller than the "
                  f"teacher), warm-up ROUGE-L {warmup['overall']['rouge_l']:.3f}", flush=True)
            for seed in seeds:
                for method in methods:
                    done += 1
                    if str(seed) in entry["methods"][method]["seeds"]:
                        print(f"[quality] {done}/{total} {size} {method} seed {seed}: kept from {partial}", flush=True)
                        continue
                    t0 = time.perf_counter()
                    out = work / f"{size}-{method}-{seed}"
                    res, _ = _common.run_method(method, paths, out, overrides + [f"trainer.seed={seed}", f"data.shuffle_seed={seed}"],
                                                student=students[size])
                    test = res["test"]
                    entry["methods"][method]["seeds"][str(seed)] = {
                        **{k: test[k] for k in ("overall", "by_length", "by_task", "by_task_length")},
                        "train_seconds": res["train_seconds"], "wall_seconds": time.perf_counter() - t0}
                    print(f"[quality] {done}/{total} {size} {method} seed {seed}: exact match {test['overall']['exact_match']:.3f}"
                          f" ROUGE-L {test['overall']['rouge_l']:.3f} ({time.perf_counter() - t0:.0f}s,"
                          f" {time.perf_counter() - t_all:.0f}s in all)", flush=True)
                    _common.write_result(partial, result)
    finally:
        if own_ray and ray.is_initialized():
            ray.shutdown()
    for entry in result["sizes"].values():
        for r in entry["methods"].values():
            r["aggregate"] = aggregate(list(r["seeds"].values()))
    result["claims"] = claims(result["sizes"])
    result["total_seconds"] = time.perf_counter() - t_all
    result["machine"] = _common.machine(load_before)
    out = _common.write_result(args.out, result)
    partial.unlink(missing_ok=True)
    print(format_table(result))
    print(f"wrote {out}")
    return 0


def resumable(partial: Path, result: dict, p) -> dict:
    """The sizes of an interrupted run's partial JSON to keep ({} when there is none), after checking
    that it was measured with the same settings and teacher as this run."""
    import json

    if not partial.is_file():
        return {}
    old = json.loads(partial.read_text())
    same = ("steps", "test_examples", "max_new_tokens", "quick", "bench_settings")
    if any(old["settings"].get(k) != result["settings"][k] for k in same) or \
            old["teacher"]["overall"] != result["teacher"]["overall"]:
        p.error(f"--resume: {partial} was measured with other settings or another teacher; remove it")
    n = sum(len(r["seeds"]) for e in old["sizes"].values() for r in e["methods"].values())
    print(f"[quality] resuming: {n} runs kept from {partial}", flush=True)
    return old["sizes"]


def format_table(result: dict) -> str:
    buckets = list(next(iter(result["sizes"].values()))["warmup"]["by_length"]) if result["sizes"] else []
    pm = lambda s: f"{s['mean']:.3f}±{s['std']:.3f}"  # noqa: E731
    lines = []
    for size, entry in result["sizes"].items():
        head = f"{size} student ({entry['gap']:.1f}x gap)"
        cols = f"{'exact match':>13} {'ROUGE-L':>13} " + " ".join(f"{b:>16}" for b in buckets)
        lines += ["", f"{head:<26}{cols}", "-" * (26 + len(cols))]
        for name, scores in (("teacher", result["teacher"]), ("warm-up (SFT)", entry["warmup"])):
            o = scores["overall"]
            lines.append(f"{name:<26}{o['exact_match']:>13.3f} {o['rouge_l']:>13.3f} "
                         + " ".join(f"{scores['by_length'][b]['rouge_l'] or 0:>16.3f}" for b in buckets))
        for method, r in entry["methods"].items():
            a = r["aggregate"]
            lines.append(f"{method:<26}{pm(a['overall']['exact_match']):>13} {pm(a['overall']['rouge_l']):>13} "
                         + " ".join(f"{pm(a['by_length'][b]['rouge_l']) if b in a['by_length'] else '-':>16}" for b in buckets))
    seeds = len(result["settings"]["seeds"])
    lines.append(f"\nmean ± standard deviation over {seeds} seed(s); length buckets: ROUGE-L by reference length in tokens")
    lines += ["", "claims (paired per-seed ROUGE-L differences, mean [95% interval] -> verdict on 'a above b'):"]
    for name, row in claim_rows(result.get("claims", {})):
        ci = "no interval" if row["ci95"] is None else f"[{row['ci95'][0]:+.3f}, {row['ci95'][1]:+.3f}]"
        lines.append(f"  {name:<52} {row['mean']:+.3f} {ci:<18} {row['verdict']}")
    return "\n".join(lines)


def claim_rows(claims: dict) -> list[tuple[str, dict]]:
    """Every paired comparison in `claims` as (label, its paired_interval entry)."""
    rows = []
    for size, r in claims.get("okd_vs_best_sgo", {}).items():
        rows.append((f"okd - {r['against']} ({size})", r))
    for size, buckets in claims.get("switch_vs_best_other", {}).items():
        rows += [(f"switch - {r['against']} ({size}, {b})", r) for b, r in buckets.items()]
    for size, r in claims.get("switch_gain_long_minus_short", {}).items():
        rows.append((f"switch gain: long - short ({size})", r))
    if claims.get("switch_gain_small_minus_large"):
        rows.append(("switch gain: small - large student", claims["switch_gain_small_minus_large"]))
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
