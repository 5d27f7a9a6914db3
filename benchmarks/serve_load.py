"""Teacher scoring service under load: N concurrent clients for T seconds against it on loopback.

    python benchmarks/serve_load.py                 # 32 clients x 30 s; starts deploy/teacher.yaml's app itself
    python benchmarks/serve_load.py --quick         # 8 clients x 5 s (the test suite runs this against its service)
    python benchmarks/serve_load.py --url http://127.0.0.1:8000/teacher   # a service already running (serve run)

Each client sends POST /score (a batch of --batch random sequences of --seq-len tokens, the response
starting half-way, top_k --top-k), waits for the answer and sends the next, until --seconds have
passed. Every request is counted once: `ok` (200 with an answer of the right shape), `failed` (an
HTTP error status or a malformed answer) or `dropped` (no answer: connection refused or reset, or
no reply within --timeout). Latency percentiles are over the ok requests; requests/s = ok / wall time.

Without --url the script starts a local Ray and Serve on a free loopback port and deploys the app of
deploy/teacher.yaml (its args and autoscaling) with --teacher, local/models/teacher when it exists,
or else a random Llama of the quickstart teacher's shape (scoring cost does not depend on the weights).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common  # noqa: E402


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) by the nearest-rank method; None for no values."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def make_payloads(vocab: int, batch: int, seq_len: int, top_k: int, count: int = 16) -> list[dict]:
    rng = random.Random(0)
    return [{"sequences": [[rng.randrange(vocab) for _ in range(seq_len)] for _ in range(batch)],
             "response_start": seq_len // 2, "top_k": top_k} for _ in range(count)]


def answers_every_sequence(response, payload: dict) -> bool:
    try:
        return len(response.json()["topk_ids"]) == len(payload["sequences"])
    except (ValueError, KeyError, TypeError):
        return False


async def run_load(url: str, clients: int, seconds: float, payloads: list[dict], token: str | None = None,
                   timeout: float = 60.0) -> dict:
    """Drive `clients` concurrent request loops for `seconds` against url/score; returns counts and latencies."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    latencies: list[float] = []
    counts = {"ok": 0, "failed": 0, "dropped": 0}
    errors: dict[str, int] = {}
    deadline = time.perf_counter() + seconds

    async def client(i: int, http: httpx.AsyncClient) -> None:
        n = i
        while time.perf_counter() < deadline:
            payload = payloads[n % len(payloads)]
            n += clients
            start = time.perf_counter()
            try:
                response = await http.post("/score", json=payload)
            except httpx.TransportError as exc:  # refused, reset, timed out: no answer
                counts["dropped"] += 1
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            elapsed = time.perf_counter() - start
            if response.status_code == 200 and answers_every_sequence(response, payload):
                counts["ok"] += 1
                latencies.append(elapsed)
            else:
                counts["failed"] += 1
                errors[f"HTTP {response.status_code}"] = errors.get(f"HTTP {response.status_code}", 0) + 1

    async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, limits=limits, timeout=timeout) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        wall = time.perf_counter() - start
    latencies.sort()
    ms = [x * 1000 for x in latencies]
    return {
        **counts, "requests": sum(counts.values()), "errors": errors, "wall_s": wall,
        "requests_per_s": counts["ok"] / wall,
        "latency_ms": {"p50": percentile(ms, 50), "p90": percentile(ms, 90), "p99": percentile(ms, 99),
                       "mean": sum(ms) / len(ms) if ms else None, "max": ms[-1] if ms else None},
    }


def start_service(teacher: str | None, tmp: Path) -> tuple[str, dict]:
    """Local Ray + Serve on a free loopback port running deploy/teacher.yaml's app; (url, what was started)."""
    import socket

    import ray
    from ray import serve

    from distill_ray.serve.apps import load_app_spec

    source = "given"
    if teacher is None and (ROOT / "local/models/teacher").is_dir():
        teacher, source = str(ROOT / "local/models/teacher"), "local/models/teacher"
    if teacher is None:
        from distill_ray.models.build import ModelShape, build_causal_lm

        shape = ModelShape(256, 4, 4, 768, max_position_embeddings=512)  # the quickstart teacher's shape
        model = build_causal_lm("llama", shape, 1024, bos_token_id=1, eos_token_id=2, pad_token_id=0)
        teacher, source = str(tmp / "teacher"), "random llama, quickstart teacher shape (3.9M parameters)"
        model.save_pretrained(teacher)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    spec = load_app_spec(ROOT / "deploy/teacher.yaml")
    # a token when the shell has one (the benchmark sends it); else open, on this loopback port only
    auth = {} if os.environ.get("DISTILL_RAY_SERVE_TOKEN") else {"auth": "none"}
    serve.run(spec.build({"model": teacher, **auth}), name=spec.name, route_prefix=spec.route_prefix)
    return f"http://127.0.0.1:{port}{spec.route_prefix}", {"teacher": source, "deployment": spec.deployment_options,
                                                           "args": {**spec.args, "model": teacher}}


def running_replicas() -> int | None:
    """Replicas of the teacher deployment running now (autoscaling), when this process started Serve."""
    from ray import serve

    try:
        app = serve.status().applications["teacher"]
        return sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())
    except Exception:  # not ours to inspect (--url): unknown
        return None


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", help="a running teacher service (e.g. http://127.0.0.1:8000/teacher); default: start one")
    p.add_argument("--teacher", help="teacher model directory for the service this script starts")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--batch", type=int, default=4, help="sequences per request")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per sequence (the second half is scored)")
    p.add_argument("--top-k", type=int, default=16)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds without an answer before a request counts as dropped")
    p.add_argument("--quick", action="store_true", help="8 clients x 5 s")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/serve_load.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.seconds = 8, 5.0
    if args.clients < 1 or args.seconds <= 0:
        p.error("--clients and --seconds must be positive")

    import httpx

    from distill_ray.serve.common import TOKEN_ENV

    token = os.environ.get(TOKEN_ENV)
    started = None
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        url = args.url
        if url is None:
            url, started = start_service(args.teacher, Path(tmp))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        info = httpx.get(f"{url.rstrip('/')}/info", headers=headers, timeout=30).raise_for_status().json()
        payloads = make_payloads(info["vocab_size"], args.batch, args.seq_len, args.top_k)
        asyncio.run(run_load(url, 2, 1.0, payloads, token, args.timeout))  # warm-up, not counted
        load = asyncio.run(run_load(url, args.clients, args.seconds, payloads, token, args.timeout))
        replicas = running_replicas() if started else None
        if started:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    result = {
        "question": "requests/s, latency and failures of the teacher scoring service under concurrent clients",
        "settings": {"clients": args.clients, "seconds": args.seconds, "batch": args.batch, "seq_len": args.seq_len,
                     "top_k": args.top_k, "timeout_s": args.timeout, "quick": args.quick, "url": url},
        "service": {"info": info, "started_here": started, "replicas_at_end": replicas},
        **load,
        "scored_positions_per_s": load["requests_per_s"] * args.batch * (args.seq_len - args.seq_len // 2),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
    }
    _common.write_result(args.out, result)
    print_table(result)
    return result


def print_table(r: dict) -> None:
    lat = r["latency_ms"]
    fmt = lambda v: f"{v:8.1f}" if v is not None else f"{'-':>8}"  # noqa: E731
    s = r["settings"]
    print(f"teacher service {s['url']}: {s['clients']} clients x {s['seconds']:.0f} s, {s['batch']} x {s['seq_len']} "
          f"tokens per request, top_k {s['top_k']}")
    print(f"{'requests':>9} {'ok':>7} {'failed':>7} {'dropped':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(f"{r['requests']:>9} {r['ok']:>7} {r['failed']:>7} {r['dropped']:>7} {r['requests_per_s']:>8.1f} "
          f"{fmt(lat['p50'])} {fmt(lat['p99'])} {fmt(lat['max'])}")
    if r["errors"]:
        print(f"errors: {r['errors']}")
    if r["service"]["replicas_at_end"] is not None:
        print(f"replicas running at the end: {r['service']['replicas_at_end']}")


if __name__ == "__main__":
    main()
