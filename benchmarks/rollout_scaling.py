"""Rollout throughput with 1, 2 and 4 rollout workers on the local multi-node Ray cluster.

    python benchmarks/rollout_scaling.py            # 1/2/4 workers, 7 rounds each, a few minutes on 2 cores
    python benchmarks/rollout_scaling.py --quick --out /tmp/scaling.json   # 1/2 workers, tiny: a smoke run
    python benchmarks/rollout_scaling.py --address 127.0.0.1:6390           # on a cluster already up

Without --address it starts its own cluster with `cluster/local.sh` (head + two rollout nodes,
each with {"CPU": W/2, "rollout": W/2} for W = the largest worker count; its own state directory
and ports) and stops it at the end. Workers are `RolloutWorker` actors (torch backend) asking for
{"CPU": 1, "rollout": 1}, one torch thread each. Workload per round: --prompts random prompts
(4-24 tokens) split evenly across the workers, --max-new-tokens sampled tokens each, one
`generate` call per worker; tokens/s and sequences/s = output / wall time from submitting to
the last result, median over --rounds after a warm-up call; `parallelism` = the workers' own
generate seconds summed / wall seconds (how many really ran at once). Model: a random Llama (hidden
--hidden, 4 layers, vocab 1000). Writes benchmarks/results/rollout_scaling.json and prints a table;
the JSON records the machine's core count and load average, which bound what scaling can show.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common  # noqa: E402
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from rollout_throughput import make_model_dir  # noqa: E402

from distill_ray.pipeline.placement import actor_node_id  # noqa: E402
from distill_ray.rollout.sampling import SamplingConfig  # noqa: E402
from distill_ray.rollout.workers import EngineConfig, create_rollout_worker  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """`cluster/local.sh up` with a head and two rollout nodes in a temp dir; `down` on exit."""

    def __init__(self, rollout_slots: int):
        self.state = tempfile.mkdtemp(prefix="drl-b", dir="/tmp")  # short: Ray's socket paths live under it
        self.gcs_port = _free_port()
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
                    "DISTILL_RAY_LOCAL_DIR": self.state, "DISTILL_RAY_GCS_PORT": str(self.gcs_port),
                    "DISTILL_RAY_DASHBOARD_PORT": str(_free_port()), "DISTILL_RAY_ROLLOUT_NODES": "2",
                    "DISTILL_RAY_ROLLOUT_CPUS": str(max(1, (rollout_slots + 1) // 2)), "DISTILL_RAY_TRAINER_NODES": "0"}

    def _local_sh(self, command: str) -> None:
        res = subprocess.run([str(ROOT / "cluster" / "local.sh"), command], env=self.env, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"cluster/local.sh {command} failed: {res.stderr.strip() or res.stdout.strip()}")

    def __enter__(self) -> str:
        self._local_sh("up")
        # this cluster's own token (local.sh keeps it in its state dir), for ray.init in this process
        os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": f"{self.state}/auth_token"})
        return f"127.0.0.1:{self.gcs_port}"

    def __exit__(self, *exc) -> None:
        self._local_sh("down")
        shutil.rmtree(self.state, ignore_errors=True)


def measure(ray, workers, prompts, sampling, rounds: int) -> list[dict]:
    """Per round: wall seconds, response tokens, and each worker's own generate seconds (its
    busy time), with the prompts split evenly across the workers."""
    n = len(workers)
    parts = [list(range(i, len(prompts), n)) for i in range(n)]
    out = []
    for r in range(rounds):
        s = SamplingConfig(temperature=sampling.temperature, max_new_tokens=sampling.max_new_tokens, seed=r + 1)
        start = time.perf_counter()
        batches = ray.get([w.generate.remote([prompts[i] for i in idx], idx, s) for w, idx in zip(workers, parts)])
        out.append({"wall_s": time.perf_counter() - start, "tokens": sum(b.num_response_tokens for b in batches),
                    "busy_s": [b.metrics["timing/generate"] for b in batches]})
    return out


def run_scaling(ray, args, worker_counts: list[int]) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(4, 24, (args.prompts,), generator=g).tolist()
    prompts = [[1] + torch.randint(3, 1000, (k - 1,), generator=g).tolist() for k in lengths]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens)
    engine = EngineConfig(backend="torch", eos_token_id=2, torch_threads=1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rollout_scaling_", dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        model_dir, n_params = make_model_dir(Path(tmp), args.hidden, 4, 1000)
        workers = [create_rollout_worker(str(model_dir), engine=engine, num_cpus=1, resources={"rollout": 1})
                   for _ in range(max(worker_counts))]
        try:
            ray.get([w.ready.remote() for w in workers])
            nodes = [actor_node_id(w)[:8] for w in workers]
            ray.get([w.generate.remote(prompts[:2], [0, 1], sampling) for w in workers])  # warm-up
            for n in worker_counts:
                rounds = measure(ray, workers[:n], prompts, sampling, args.rounds)
                wall = statistics.median(r["wall_s"] for r in rounds)
                tps = statistics.median(r["tokens"] / r["wall_s"] for r in rounds)
                rows.append({"workers": n, "tokens_per_s": tps, "sequences_per_s": len(prompts) / wall,
                             "median_wall_s": wall,
                             # busy seconds of all workers / wall: how many workers really ran at once
                             "parallelism": statistics.median(sum(r["busy_s"]) / r["wall_s"] for r in rounds),
                             "rounds": rounds, "worker_nodes": nodes[:n], "parameters": n_params})
                print(f"x{n}: {tps:8.0f} tok/s  {len(prompts) / wall:7.1f} seq/s  (nodes {sorted(set(nodes[:n]))})", flush=True)
        finally:
            for w in workers:
                ray.kill(w)
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", default="1,2,4", help="comma-separated rollout worker counts")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per worker count (median reported)")
    p.add_argument("--prompts", type=int, default=64, help="prompts per round, split across the workers")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128, help="hidden size of the random Llama")
    p.add_argument("--address", default=None, help="GCS address of a running cluster with `rollout` resources "
                                                   "(default: start one with cluster/local.sh)")
    p.add_argument("--quick", action="store_true", help="1 and 2 workers, tiny sizes: a smoke run")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/rollout_scaling.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.workers, args.rounds, args.prompts, args.max_new_tokens, args.hidden = "1,2", 2, 8, 8, 64
    worker_counts = sorted(int(w) for w in args.workers.split(","))

    load_before = os.getloadavg()
    cluster = LocalCluster(max(worker_counts)) if args.address is None else contextlib.nullcontext(args.address)
    with cluster as address:
        import ray  # after the cluster's token is in the environment: Ray reads its auth settings at import

        ray.init(address=address, logging_level="ERROR", log_to_driver=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
        try:
            rollout_slots = sum(n["Resources"].get("rollout", 0) for n in ray.nodes() if n["Alive"])
            rows = run_scaling(ray, args, worker_counts)
        finally:
            ray.shutdown()
    base = rows[0]["tokens_per_s"] / rows[0]["workers"]
    for r in rows:
        r["speedup"] = r["tokens_per_s"] / rows[0]["tokens_per_s"]
        r["efficiency"] = r["tokens_per_s"] / (base * r["workers"])  # 1.0: linear scaling
    result = {
        "question": "rollout tokens/s and sequences/s with 1, 2 and 4 rollout workers on a multi-node Ray cluster",
        "settings": {"prompts": args.prompts, "max_new_tokens": args.max_new_tokens, "rounds": args.rounds,
                     "hidden": args.hidden, "layers": 4, "vocab": 1000, "backend": "torch",
                     "torch_threads_per_worker": 1, "cpus_per_worker": 1, "quick": args.quick,
                     "cluster": args.address or "cluster/local.sh (head + 2 rollout nodes)",
                     "rollout_slots": rollout_slots},
        "rows": rows,
        "machine": {"platform": platform.platform(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
    }
    _common.write_result(args.out, result)
    print_table(result)
    return result


def print_table(result: dict) -> None:
    print(f"{'workers':>7} {'tokens/s':>10} {'seq/s':>8} {'speedup':>8} {'efficiency':>10} {'parallelism':>11}  nodes")
    for r in result["rows"]:
        print(f"{r['workers']:>7} {r['tokens_per_s']:>10.0f} {r['sequences_per_s']:>8.1f} {r['speedup']:>8.2f} "
              f"{r['efficiency']:>10.2f} {r['parallelism']:>11.2f}  {len(set(r['worker_nodes']))}")
    m = result["machine"]
    print(f"{m['cores']} cores; load average {m['load_average_before'][0]:.1f} before, {m['load_average_after'][0]:.1f} after")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"done in {time.perf_counter() - t0:.0f}s")
