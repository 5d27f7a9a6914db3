"""How much faster is drafted SWITCH than the sequential reference, and how close to the ideal?

    python benchmarks/switch_rollout.py                    # quickstart models, ~5-10 min on 2 cores
    python benchmarks/switch_rollout.py --quick --out /tmp/switch.json   # tiny, seconds (smoke test)

Both generators are the torch backend's (`distill_ray.rollout.switch.SwitchGenerator`), with KV
caches, on one thread, batch size --batch-size (default 1: each prompt on its own, the
latency regime where drafting pays on CPU). For each target teacher-token fraction (30%, 50%,
70%) tau0 is calibrated by bisection (decay fixed at --decay), then sequential and drafted
runs alternate --repeats times over the same prompts; the table reports medians. The two
generators must produce identical tokens and writer masks (checked on every run).

The ideal speedup, from per-token decode costs c_s and c_t measured in the same run (a
KV-cached one-token forward of each model alone, same batch, 16 steps after the prompt) and
teacher fraction f:
    ideal = (c_s + c_t) / ((1 - f) * c_s + f * c_t)
i.e. sequential pays both models per token, a perfect drafter only the writer. The headline is
`efficiency_at_half_teacher` = measured speedup / ideal at the setting closest to 50%.

It also measures the top-k + tail-bucket JSD (the vLLM SWITCH approximation, `rollout.topk_jsd`)
against the exact JSD on the 50% rollouts: mean/max error and how often the SWITCH decision agrees.

Models: --teacher / --student directories (the quickstart's `distill-ray models init`), prompts
from --prompts (jsonl with "prompt"). When those do not exist, random Llamas of the quickstart
shapes (teacher hidden 256 x 4 layers, student hidden 64 x 2, vocab 1000, output layer scaled
so the distributions are peaked like a trained model's) and random prompts are used, and the
JSON says so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from distill_ray.models.build import ModelShape, build_causal_lm, count_parameters  # noqa: E402
from distill_ray.rollout.kv import SlotCache  # noqa: E402
from distill_ray.rollout.decode import left_pad, prefill  # noqa: E402
from distill_ray.rollout.sampling import SamplingConfig  # noqa: E402
from distill_ray.rollout.switch import SwitchGenerator  # noqa: E402
from distill_ray.rollout.switch_rule import jsd_from_logprobs, switch_threshold  # noqa: E402
from distill_ray.rollout.topk_jsd import topk_jsd  # noqa: E402

TARGETS = (0.3, 0.5, 0.7)
GOAL_EFFICIENCY = 0.75


# ------------------------------------------------------------------ models and prompts


def random_pair(quick: bool, vocab: int):
    if quick:
        t_shape = ModelShape(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
        s_shape = ModelShape(hidden_size=32, num_layers=1, num_heads=1, intermediate_size=64)
    else:
        t_shape = ModelShape(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024)
        s_shape = ModelShape(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256)
    models = []
    for shape, seed in ((t_shape, 0), (s_shape, 1)):
        m = build_causal_lm("llama", shape, vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0, seed=seed)
        with torch.no_grad():
            m.lm_head.weight *= 6.0  # peaked distributions, like a trained model's (random init is near-uniform)
        models.append(m.eval())
    return models[0], models[1], {"teacher": asdict_shape(t_shape), "student": asdict_shape(s_shape)}


def asdict_shape(shape: ModelShape) -> dict:
    return {"hidden_size": shape.hidden_size, "num_layers": shape.num_layers, "num_heads": shape.num_heads,
            "intermediate_size": shape.intermediate_size}


def load_models(args):
    t_dir, s_dir = Path(args.teacher), Path(args.student)
    if not args.quick and t_dir.is_dir() and s_dir.is_dir():
        from distill_ray.models.build import load_causal_lm

        teacher, student = load_causal_lm(t_dir).eval(), load_causal_lm(s_dir).eval()
        eos = student.config.eos_token_id
        return teacher, student, {"source": "local", "teacher": str(t_dir), "student": str(s_dir)}, eos
    teacher, student, shapes = random_pair(args.quick, vocab=128 if args.quick else 1000)
    why = "--quick" if args.quick else f"{t_dir} or {s_dir} not found"
    return teacher, student, {"source": f"random ({why})", **shapes}, 2


def load_prompts(args, student_dir: Path, vocab: int, n: int) -> tuple[list[list[int]], str]:
    path = Path(args.prompts)
    if not args.quick and path.is_file() and (student_dir / "tokenizer.json").is_file():
        from distill_ray.config import DataConfig
        from distill_ray.data.encoding import encode_prompt
        from distill_ray.models.tokenizer import load_tokenizer

        tok = load_tokenizer(student_dir)
        template = DataConfig().template
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:n]
        return [encode_prompt(tok, template, r["prompt"]) for r in rows], str(path)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(4, 24, (n,), generator=g).tolist()
    return [[1] + torch.randint(3, vocab, (k - 1,), generator=g).tolist() for k in lengths], "random"


# ------------------------------------------------------------------ measurements


@torch.inference_mode()
def decode_cost(model, prompts: list[list[int]], batch_size: int, steps: int) -> float:
    """Seconds per KV-cached one-token forward of `model` alone at `batch_size`, averaged over
    `steps` steps after each batch of `prompts` (the cache grows as it does in generation)."""
    seconds, count = 0.0, 0
    for i in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[i : i + batch_size], 0)
        cache = SlotCache(model, ids.shape[0])
        token = prefill([cache], ids, mask)
        start = time.perf_counter()
        for _ in range(steps):
            token = cache.feed(token[:, None], last_only=True)[:, 0].argmax(-1)
        seconds += time.perf_counter() - start
        count += steps
    return seconds / count


def run_switch(gen: SwitchGenerator, prompts, sampling, batch_size: int, drafted: bool):
    """All prompts in batches; returns (seconds, batches)."""
    fn = gen.generate_drafted if drafted else gen.generate_sequential
    start = time.perf_counter()
    out = [fn(prompts[i : i + batch_size], sampling, list(range(i, min(i + batch_size, len(prompts)))))
           for i in range(0, len(prompts), batch_size)]
    return time.perf_counter() - start, out


def timed_pass(gen: SwitchGenerator, prompts, sampling, batch_size: int, cost_steps: int) -> dict:
    """One timed pass over the prompts, batch by batch: each batch's decode costs, sequential
    and drafted runs are measured back to back, so a shift in the (shared) machine's load hits
    all four alike."""
    totals = {"sequential": 0.0, "drafted": 0.0, "student": 0.0, "teacher": 0.0}
    seq_out, dr_out = [], []
    for i in range(0, len(prompts), batch_size):
        chunk, index = prompts[i : i + batch_size], list(range(i, min(i + batch_size, len(prompts))))
        totals["student"] += decode_cost(gen.student, chunk, batch_size, cost_steps)
        totals["teacher"] += decode_cost(gen.teacher, chunk, batch_size, cost_steps)
        start = time.perf_counter()
        seq_out.append(gen.generate_sequential(chunk, sampling, index))
        totals["sequential"] += time.perf_counter() - start
        start = time.perf_counter()
        dr_out.append(gen.generate_drafted(chunk, sampling, index))
        totals["drafted"] += time.perf_counter() - start
    chunks = math.ceil(len(prompts) / batch_size)
    totals["student"] /= chunks
    totals["teacher"] /= chunks
    return {**totals, "seq_out": seq_out, "dr_out": dr_out}


def fraction(batches) -> float:
    teacher = sum(int(b.writer_mask[b.response_mask].sum()) for b in batches)
    total = sum(b.num_response_tokens for b in batches)
    return teacher / max(total, 1)


def calibrate_tau0(gen: SwitchGenerator, prompts, sampling, batch_size: int, target: float, iters: int) -> float:
    """Bisection on log(tau0): the teacher fraction falls as tau0 grows."""
    lo, hi = math.log(1e-3), math.log(1e3)
    best = (1.0, 0.0)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        gen.tau0 = math.exp(mid)
        _, out = run_switch(gen, prompts, sampling, batch_size, drafted=True)
        f = fraction(out)
        if abs(f - target) < abs(best[0] - target):
            best = (f, gen.tau0)
        if f > target:
            lo = mid
        else:
            hi = mid
    return best[1]


def same_outputs(a, b) -> bool:
    return all(
        torch.equal(x.response_ids, y.response_ids) and torch.equal(x.writer_mask, y.writer_mask)
        for x, y in zip(a, b)
    )


@torch.inference_mode()
def topk_error(teacher, student, batches, tau0: float, decay: float, ks=(8, 32, 64)) -> dict:
    """The top-k + tail JSD against the exact JSD on real SWITCH rollouts."""
    from distill_ray.rollout.engines import TorchEngine

    seqs, plens = [], []
    for b in batches:
        seqs += b.sequences()
        plens += b.prompt_lengths()
    seqs, plens = seqs[:64], plens[:64]
    lt = TorchEngine(teacher).score_logprobs(seqs, plens)
    ls = TorchEngine(student).score_logprobs(seqs, plens)
    resp = torch.tensor([len(s) - p for s, p in zip(seqs, plens)])
    mask = torch.arange(lt.shape[1])[None, :] < resp[:, None]
    tau = switch_threshold(torch.arange(lt.shape[1]), tau0, decay)[None, :].expand_as(mask)[mask]
    exact = jsd_from_logprobs(lt, ls).double()[mask]
    out = {}
    for k in ks:
        if k > lt.shape[-1]:
            continue
        values, ids = lt.topk(k, dim=-1)
        approx = topk_jsd(values, ls.gather(2, ids))[mask]
        err = exact - approx
        out[str(k)] = {
            "mean_abs_error": float(err.abs().mean()),
            "max_abs_error": float(err.abs().max()),
            "mean_exact_jsd": float(exact.mean()),
            "teacher_top_k_mass": float(values.exp().sum(-1)[mask].mean()),
            "decision_agreement": float(((exact > tau) == (approx > tau)).double().mean()),
        }
    return out


# ------------------------------------------------------------------ main


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="local/models/teacher")
    p.add_argument("--student", default="local/models/student")
    p.add_argument("--prompts", default="local/data/synth/test.jsonl")
    p.add_argument("--num-prompts", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--draft-tokens", type=int, default=8)
    p.add_argument("--decay", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--calibration-iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny models and sizes: runs in seconds")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/switch_rollout.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.num_prompts, args.max_new_tokens, args.repeats, args.calibration_iters = 4, 12, 1, 4
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    teacher, student, model_info, eos = load_models(args)
    prompts, prompt_source = load_prompts(args, Path(args.student), student.config.vocab_size, args.num_prompts)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    gen = SwitchGenerator(teacher, student, tau0=1.0, decay=args.decay, eos_token_id=eos, draft_tokens=args.draft_tokens)
    model_info["teacher_parameters"] = count_parameters(teacher)
    model_info["student_parameters"] = count_parameters(student)
    model_info["vocab_size"] = student.config.vocab_size

    # warm-up (first calls allocate)
    run_switch(gen, prompts[:2], sampling, args.batch_size, drafted=True)
    all_costs: dict[str, list[float]] = {"student": [], "teacher": []}
    cost_steps = min(args.max_new_tokens, 16)

    rows = []
    calib = prompts[: max(4, len(prompts) // 3)]
    for target in TARGETS:
        tau0 = calibrate_tau0(gen, calib, sampling, args.batch_size, target, args.calibration_iters)
        gen.tau0 = tau0
        passes = [timed_pass(gen, prompts, sampling, args.batch_size, cost_steps) for _ in range(args.repeats)]
        seq_out, dr_out = passes[-1]["seq_out"], passes[-1]["dr_out"]
        identical = all(same_outputs(p["seq_out"], p["dr_out"]) for p in passes)
        tokens = sum(b.num_response_tokens for b in seq_out)
        f = fraction(seq_out)
        med = {name: statistics.median(p[name] for p in passes) for name in ("sequential", "drafted", "student", "teacher")}
        c_s, c_t = med["student"], med["teacher"]
        for name in all_costs:
            all_costs[name] += [p[name] for p in passes]
        ideal = (c_s + c_t) / ((1 - f) * c_s + f * c_t)
        speedup = med["sequential"] / med["drafted"]
        rounds = sum(b.metrics["switch/rounds"] for b in dr_out)
        rows.append({
            "target_fraction": target,
            "tau0": tau0,
            "teacher_fraction": f,
            "tokens": tokens,
            "sequential_tokens_per_s": tokens / med["sequential"],
            "drafted_tokens_per_s": tokens / med["drafted"],
            "speedup": speedup,
            "ideal_speedup": ideal,
            "efficiency": speedup / ideal,
            "tokens_per_check": tokens / rounds,
            "decode_cost_ms": {"student": c_s * 1e3, "teacher": c_t * 1e3},
            "identical_outputs": bool(identical),
            "sequential_seconds": [p["sequential"] for p in passes],
            "drafted_seconds": [p["drafted"] for p in passes],
            "_batches": dr_out,
        })
    half = min(rows, key=lambda r: abs(r["teacher_fraction"] - 0.5))
    topk = topk_error(teacher, student, half.pop("_batches"), half["tau0"], args.decay)
    for r in rows:
        r.pop("_batches", None)

    result = {
        "question": "tokens/s of drafted vs sequential SWITCH (torch backend, KV caches), against the ideal speedup",
        "models": model_info,
        "prompts": {"source": prompt_source, "count": len(prompts)},
        "settings": {
            "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "draft_tokens": args.draft_tokens,
            "decay": args.decay, "temperature": 1.0, "repeats": args.repeats, "torch_threads": args.threads,
            "quick": args.quick,
        },
        "decode_cost_ms": {name: statistics.median(v) * 1e3 for name, v in all_costs.items()},
        "rows": rows,
        "speedup_at_half_teacher": half["speedup"],
        "efficiency_at_half_teacher": half["efficiency"],
        "teacher_fraction_at_half": half["teacher_fraction"],
        "target_efficiency": GOAL_EFFICIENCY,
        "meets_target": half["efficiency"] >= GOAL_EFFICIENCY,
        "all_identical": all(r["identical_outputs"] for r in rows),
        "topk_jsd_error_at_half": topk,
        "machine": {
            "platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    return result


def print_table(result: dict) -> None:
    c = result["decode_cost_ms"]
    print(f"models: {result['models']['source']}; decode cost per token: student {c['student']:.2f} ms, "
          f"teacher {c['teacher']:.2f} ms; batch {result['settings']['batch_size']}, k={result['settings']['draft_tokens']}")
    print(f"{'target':>6} {'tau0':>8} {'f':>6} {'seq tok/s':>10} {'draft tok/s':>12} {'speedup':>8} {'ideal':>6} "
          f"{'eff':>6} {'tok/check':>9} {'same':>5}")
    for r in result["rows"]:
        print(f"{r['target_fraction']:>6.2f} {r['tau0']:>8.3f} {r['teacher_fraction']:>6.2f} "
              f"{r['sequential_tokens_per_s']:>10.0f} {r['drafted_tokens_per_s']:>12.0f} {r['speedup']:>8.2f} "
              f"{r['ideal_speedup']:>6.2f} {r['efficiency']:>6.2f} {r['tokens_per_check']:>9.2f} "
              f"{str(r['identical_outputs']):>5}")
    print(f"efficiency at ~50% teacher: {result['efficiency_at_half_teacher']:.2f} "
          f"(target >= {GOAL_EFFICIENCY}); speedup {result['speedup_at_half_teacher']:.2f}x")
    for k, e in result["topk_jsd_error_at_half"].items():
        print(f"top-{k} JSD: mean |error| {e['mean_abs_error']:.4f} (exact mean {e['mean_exact_jsd']:.3f}), "
              f"decision agreement {e['decision_agreement']:.3f}, teacher top-k mass {e['teacher_top_k_mass']:.3f}")


if __name__ == "__main__":
    main()
