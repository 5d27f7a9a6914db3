"""Does running vLLM's engine core inside the calling process pay? (`rollout/engines.py:in_process_vllm`)

    python benchmarks/vllm_engine_start.py [--model local/models/student] [--rounds 2]

Each measurement is a fresh Python process that builds a `VllmEngine` on `--model` and then
samples 8 batches of 16 prompts x 64 new tokens, with VLLM_ENABLE_V1_MULTIPROCESSING=1 (vLLM's
default: an engine-core and a worker process are spawned, each importing torch and vLLM) or =0
(the engine core runs in the process, distill-ray's default). The two modes alternate, A B A B,
`--rounds` times. Reported per mode: engine build seconds, and the median seconds of batches 3-8
(the first two warm up). Writes benchmarks/results/vllm_engine_start.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import _common  # noqa: E402
OUT = ROOT / "benchmarks" / "results" / "vllm_engine_start.json"
MODES = {"spawned": "1", "in_process": "0"}

CHILD = r"""
import json, os, statistics, sys, time
def main():
    t0 = time.perf_counter()
    from distill_ray.rollout.engines import VllmEngine
    from distill_ray.rollout.sampling import SamplingConfig
    t1 = time.perf_counter()
    engine = VllmEngine(sys.argv[1], max_model_len=256, kv_cache_gib=0.25)
    t2 = time.perf_counter()
    prompts = [[5 + i, 9, 12, 30 + i, 7] for i in range(16)]
    sampling = SamplingConfig(max_new_tokens=64, temperature=1.0)
    batches = []
    for _ in range(8):
        start = time.perf_counter()
        batch = engine.generate(prompts, sampling)
        batches.append(time.perf_counter() - start)
    print("RESULT " + json.dumps({"import_s": t1 - t0, "build_s": t2 - t1, "batch_s": batches,
                                  "tokens": int(batch.response_mask.sum())}), flush=True)
    os._exit(0)  # no engine teardown in the measurement
if __name__ == "__main__":
    main()
"""


def measure(model: str, flag: str) -> dict:
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": flag,
           "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 1) - 1}")}
    start = time.perf_counter()
    # a spawned engine core outlives the measured process and keeps its stdout open: read until
    # the result line, then kill the whole process group
    proc = subprocess.Popen([sys.executable, "-c", CHILD, model], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT, start_new_session=True)
    line = None
    try:
        for out in proc.stdout:
            if out.startswith("RESULT "):
                line = out
                break
    finally:
        wall = time.perf_counter() - start
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    if line is None:
        raise SystemExit(f"error: the VLLM_ENABLE_V1_MULTIPROCESSING={flag} run printed no result (exit {proc.returncode})")
    result = json.loads(line.removeprefix("RESULT "))
    result["wall_s"] = wall
    result["steady_batch_s"] = statistics.median(result["batch_s"][2:])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "local" / "models" / "student"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if not (Path(args.model) / "config.json").is_file():
        print(f"error: --model {args.model}: no config.json (run `distill-ray models init` first)", file=sys.stderr)
        return 2
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        for mode, flag in MODES.items():
            runs[mode].append(measure(args.model, flag))
            print(f"round {r + 1} {mode}: build {runs[mode][-1]['build_s']:.1f} s, "
                  f"steady batch {runs[mode][-1]['steady_batch_s']:.3f} s", flush=True)
    summary = {
        mode: {key: {"median": statistics.median(x[key] for x in rs), "min": min(x[key] for x in rs),
                     "max": max(x[key] for x in rs)}
               for key in ("build_s", "steady_batch_s", "wall_s")}
        for mode, rs in runs.items()
    }
    result = {
        "question": "vLLM engine core in the calling process vs spawned (VLLM_ENABLE_V1_MULTIPROCESSING)",
        "model": args.model, "rounds": args.rounds, "order": "A B A B (spawned, in_process)",
        "batch": "16 prompts x 64 new tokens, temperature 1; steady = median of batches 3-8",
        "load_average_at_end": os.getloadavg()[0], "cpus": os.cpu_count(),
        "summary": summary, "runs": runs,
        "in_process_over_spawned_build": summary["in_process"]["build_s"]["median"] / summary["spawned"]["build_s"]["median"],
        "in_process_over_spawned_steady_batch": (summary["in_process"]["steady_batch_s"]["median"]
                                                 / summary["spawned"]["steady_batch_s"]["median"]),
    }
    _common.write_result(args.out, result)
    print(f"\n{'mode':<12}{'build s (median; range)':>28}{'steady batch s (median; range)':>34}")
    for mode, s in summary.items():
        b, g = s["build_s"], s["steady_batch_s"]
        print(f"{mode:<12}{b['median']:>12.1f} ({b['min']:.1f}-{b['max']:.1f}){'':>8}"
              f"{g['median']:>12.3f} ({g['min']:.3f}-{g['max']:.3f})")
    print(f"in_process / spawned: build {result['in_process_over_spawned_build']:.2f}, "
          f"steady batch {result['in_process_over_spawned_steady_batch']:.2f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
