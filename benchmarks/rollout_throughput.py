"""Rollout tokens/s: vLLM vs torch backend by model size, with 1 and 2 rollout workers.

    python benchmarks/rollout_throughput.py             # hidden 64..512, both backends, ~10 min on 2 cores
    python benchmarks/rollout_throughput.py --quick --out /tmp/tp.json   # torch only, tiny, seconds

Every measurement goes through `RolloutWorker` Ray actors (the pipeline's path). Each worker
gets one core: num_cpus=1, one torch thread, and vLLM's CPU threads bound to a core of its own
(VLLM_CPU_OMP_THREADS_BIND=<worker index>), so "2 workers" means two cores. Workload: --prompts
random prompts (4-24 tokens) split evenly across the workers, --max-new-tokens sampled tokens
each (temperature 1), one `generate` call per worker; tokens/s = response tokens / wall time
from submitting to the last result, median of --repeats after a warm-up call. Models are
random Llamas (head size 64, 4 layers, MLP 4x hidden, vocab 1000) saved to a temporary
directory. `crossover_hidden_size` is the smallest size at which vLLM beats torch with one worker.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common  # noqa: E402

import torch  # noqa: E402

from distill_ray.models.build import ModelShape, build_causal_lm, count_parameters  # noqa: E402
from distill_ray.rollout.sampling import SamplingConfig  # noqa: E402
from distill_ray.rollout.workers import EngineConfig, create_rollout_worker  # noqa: E402


def make_model_dir(root: Path, hidden: int, layers: int, vocab: int) -> tuple[Path, int]:
    shape = ModelShape(hidden_size=hidden, num_layers=layers, num_heads=max(hidden // 64, 1),
                       intermediate_size=4 * hidden)
    model = build_causal_lm("llama", shape, vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0, seed=0)
    path = root / f"llama-h{hidden}-l{layers}"
    model.save_pretrained(path)
    return path, count_parameters(model)


def engine_config(backend: str, worker: int) -> EngineConfig:
    return EngineConfig(
        backend=backend, eos_token_id=2, torch_threads=1,
        vllm_kv_cache_gib=0.25, vllm_max_model_len=256, vllm_cpu_threads_bind=str(worker % (os.cpu_count() or 1)),
    )


def measure(ray, workers, prompts, sampling, repeats: int) -> tuple[float, list[float]]:
    """(tokens/s median, wall seconds of each repeat) with the prompts split evenly across workers."""
    n = len(workers)
    parts = [list(range(i, len(prompts), n)) for i in range(n)]
    walls, tokens = [], 0
    for r in range(repeats):
        s = SamplingConfig(temperature=sampling.temperature, max_new_tokens=sampling.max_new_tokens, seed=r + 1)
        start = time.perf_counter()
        refs = [w.generate.remote([prompts[i] for i in idx], idx, s) for w, idx in zip(workers, parts)]
        batches = ray.get(refs)
        walls.append(time.perf_counter() - start)
        tokens = sum(b.num_response_tokens for b in batches)
    return tokens / statistics.median(walls), walls


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", default="64,128,256,512", help="comma-separated hidden sizes")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--backends", default="torch,vllm")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="torch only, tiny sizes: runs in seconds")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/rollout_throughput.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.hidden, args.layers, args.backends, args.prompts, args.max_new_tokens, args.repeats = "64", 2, "torch", 8, 8, 1
    hidden_sizes = [int(h) for h in args.hidden.split(",")]
    backends = [b for b in args.backends.split(",") if b]
    worker_counts = sorted(int(w) for w in args.workers.split(","))

    import ray

    started_ray = not ray.is_initialized()  # the test suite calls main() inside its own Ray session
    if started_ray:
        ray.init(num_cpus=max(worker_counts) * 2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(4, 24, (args.prompts,), generator=g).tolist()
    prompts = [[1] + torch.randint(3, args.vocab, (k - 1,), generator=g).tolist() for k in lengths]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens)
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="rollout_tp_", dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        for hidden in hidden_sizes:
            model_dir, n_params = make_model_dir(Path(tmp), hidden, args.layers, args.vocab)
            for backend in backends:
                start = time.perf_counter()
                workers = [create_rollout_worker(str(model_dir), engine=engine_config(backend, i), num_cpus=1)
                           for i in range(max(worker_counts))]
                ray.get([w.ready.remote() for w in workers])
                startup = time.perf_counter() - start
                ray.get([w.generate.remote(prompts[:2], [0, 1], sampling) for w in workers])  # warm-up
                for n in worker_counts:
                    tps, walls = measure(ray, workers[:n], prompts, sampling, args.repeats)
                    rows.append({"hidden_size": hidden, "layers": args.layers, "parameters": n_params,
                                 "backend": backend, "workers": n, "tokens_per_s": tps, "wall_seconds": walls,
                                 "engine_startup_s": startup})
                    print(f"hidden {hidden:4d} ({n_params / 1e6:5.1f}M) {backend:5s} x{n}: {tps:8.0f} tok/s", flush=True)
                for w in workers:
                    ray.kill(w)
    if started_ray:
        ray.shutdown()

    def tps(hidden, backend, n):
        return next((r["tokens_per_s"] for r in rows if (r["hidden_size"], r["backend"], r["workers"]) == (hidden, backend, n)), None)

    crossover = None
    if {"torch", "vllm"} <= set(backends):
        crossover = next((h for h in hidden_sizes if tps(h, "vllm", 1) > tps(h, "torch", 1)), None)
    scaling = {
        f"{b}/h{h}": tps(h, b, 2) / tps(h, b, 1)
        for b in backends for h in hidden_sizes if tps(h, b, 2) and tps(h, b, 1)
    }
    result = {
        "question": "rollout tokens/s of the vllm and torch backends by model size, with 1 and 2 workers",
        "settings": {"prompts": args.prompts, "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
                     "layers": args.layers, "vocab": args.vocab, "cores_per_worker": 1, "quick": args.quick},
        "rows": rows,
        "crossover_hidden_size": crossover,
        "two_worker_scaling": scaling,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
    }
    _common.write_result(args.out, result)
    print_table(result, hidden_sizes, backends, worker_counts, tps)
    return result


def print_table(result, hidden_sizes, backends, worker_counts, tps) -> None:
    cols = [f"{b} x{n}" for b in backends for n in worker_counts]
    print(f"{'hidden':>6} " + " ".join(f"{c:>12}" for c in cols) + "   (tokens/s)")
    for h in hidden_sizes:
        cells = [tps(h, b, n) for b in backends for n in worker_counts]
        print(f"{h:>6} " + " ".join(f"{c:>12.0f}" if c else f"{'-':>12}" for c in cells))
    print(f"crossover (vLLM faster than torch, 1 worker): hidden {result['crossover_hidden_size']}")
    print("2-worker scaling: " + ", ".join(f"{k} {v:.2f}x" for k, v in result["two_worker_scaling"].items()))


if __name__ == "__main__":
    main()
