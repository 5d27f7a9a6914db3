"""Which SWITCH tau0 makes the teacher write about half the tokens at the training settings?

    python benchmarks/switch_tau0.py                     # quickstart models, ~2 min on 2 cores
    python benchmarks/switch_tau0.py --quick --out /tmp/switch_tau0.json   # tiny random models, seconds

The SWITCH paper reports the teacher writing 53% of the tokens at its setting; the rule's tau0 is
what sets that share, and it depends on how far apart the two models are. This measures it where
training uses it: the warm-up student and the teacher of `distill-ray models init`, training
prompts (--prompts), the rollout's batch size (32), temperature 1, --max-new-tokens 200 and
decay 0.1 (configs/quickstart.yaml), the drafted generator of the torch backend. For each tau0 of
--grid and each of --seeds sampling seeds: the teacher's share of the response tokens, overall
and by response position, and the mean response length. `calibrated_tau0` is the grid point
whose mean share is closest to --target; `tau0_above_ln2` flags any tau0 above ln 2, where the
rule can no longer fire at the first positions (a JSD is at most ln 2), so it hands over by
position instead of by disagreement.

The share is the warm-up student's: during training the student moves toward the teacher and
the share falls; benchmarks/okd_vs_sgo.py --methods ...,switch reports the share over a run.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common  # noqa: E402
from benchmarks.switch_rollout import fraction, load_models, load_prompts, run_switch  # noqa: E402

import torch  # noqa: E402

from distill_ray.rollout.sampling import SamplingConfig  # noqa: E402
from distill_ray.rollout.switch import SwitchGenerator  # noqa: E402
from distill_ray.rollout.switch_rule import teacher_fraction_by_bucket  # noqa: E402

LN2 = math.log(2.0)


def by_position(batches) -> dict[str, float]:
    """The teacher's share per position bucket over all `batches`, token-weighted (the same sum
    okd_vs_sgo makes over a run's metrics)."""
    return _common.teacher_share_by_position([teacher_fraction_by_bucket(b.writer_mask, b.response_mask) for b in batches]) or {}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="local/models/teacher")
    p.add_argument("--student", default="local/models/student")
    p.add_argument("--prompts", default="local/data/synth/train.jsonl")
    p.add_argument("--num-prompts", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32, help="the training rollout batch (trainer.batch_size)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--decay", type=float, default=0.1)
    p.add_argument("--grid", default="0.03,0.06,0.1,0.15,0.2,0.3,0.5,0.69,1.0",
                   help="tau0 values (nats), comma-separated")
    p.add_argument("--seeds", default="0,1,2", help="sampling seeds")
    p.add_argument("--target", type=float, default=0.5, help="the teacher share to calibrate to")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny random models: runs in seconds")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/switch_tau0.json"))
    args = p.parse_args(argv)
    try:
        grid = [float(x) for x in args.grid.split(",")]
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError as e:
        p.error(f"--grid/--seeds: {e}")
    if not grid or not seeds or min(grid) <= 0:
        p.error("--grid: give positive tau0 values; --seeds: at least one")
    if args.quick:
        args.num_prompts, args.max_new_tokens, args.batch_size = 8, 16, 4
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    ns = types.SimpleNamespace(teacher=args.teacher, student=args.student, prompts=args.prompts, quick=args.quick)
    teacher, student, model_info, eos = load_models(ns)
    prompts, source = load_prompts(ns, Path(args.student), student.config.vocab_size, args.num_prompts)
    gen = SwitchGenerator(teacher, student, tau0=grid[0], decay=args.decay, eos_token_id=eos, draft_tokens=32,
                          adaptive=True)
    rows = []
    for tau0 in grid:
        gen.tau0 = tau0
        shares, lengths, positions = [], [], []
        for seed in seeds:
            _, out = run_switch(gen, prompts, SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens,
                                                             seed=seed), args.batch_size, drafted=True)
            shares.append(fraction(out))
            lengths.append(sum(b.num_response_tokens for b in out) / len(prompts))
            positions.append(by_position(out))
        buckets = sorted({k for d in positions for k in d}, key=lambda k: int(k.split("-")[0].rstrip("+")))
        rows.append({
            "tau0": tau0, "tau0_above_ln2": tau0 > LN2,
            "teacher_fraction": _common.mean_std(shares),
            "mean_response_tokens": statistics.fmean(lengths),
            "teacher_fraction_by_position": {k: statistics.fmean(d[k] for d in positions if k in d) for k in buckets},
        })
        print(f"tau0 {tau0:<6g} teacher share {rows[-1]['teacher_fraction']['mean']:.3f} "
              f"(+- {rows[-1]['teacher_fraction']['std']:.3f}), {rows[-1]['mean_response_tokens']:.1f} tokens/response",
              flush=True)
    best = min(rows, key=lambda r: abs(r["teacher_fraction"]["mean"] - args.target))
    result = {
        "question": "the SWITCH tau0 at which the teacher writes --target of the tokens, at the training settings",
        "models": model_info,
        "prompts": {"source": source, "count": len(prompts)},
        "settings": {"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "decay": args.decay,
                     "temperature": 1.0, "seeds": seeds, "torch_threads": args.threads, "quick": args.quick},
        "target": args.target,
        "calibrated_tau0": best["tau0"],
        "teacher_fraction_at_calibrated": best["teacher_fraction"]["mean"],
        "tau0_above_ln2": any(r["tau0_above_ln2"] for r in rows),
        "calibrated_above_ln2": best["tau0_above_ln2"],
        "rows": rows,
        "machine": _common.machine(load_before),
    }
    _common.write_result(args.out, result)
    print(f"calibrated tau0 {best['tau0']:g}: teacher share {best['teacher_fraction']['mean']:.3f} "
          f"(target {args.target}); grid values above ln 2 flagged: "
          f"{[r['tau0'] for r in rows if r['tau0_above_ln2']]}")
    return result


if __name__ == "__main__":
    main()
