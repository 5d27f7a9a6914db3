"""How much memory and time does the chunked distillation loss save over the naive one?

    python benchmarks/losses.py                       # vocab 32000/152064 x seq 1024/4096: ~25 min, ~19 GB RAM
    python benchmarks/losses.py --quick --out /tmp/losses.json    # tiny sizes, seconds (the test suite's smoke run)

Both compute forward KL from the same last hidden states and output layers (batch 1, hidden
896, float32, CPU), forward + backward, with gradients for the student's hidden states and
output layer:

    naive    logits = hidden @ weight.T for the whole sequence, then `divergence`
    chunked  `chunked_divergence`, which never holds more than `--chunk-size` tokens of logits

Each case runs in a fresh child process, so its peak memory is its own: the child builds its
inputs, records its resident memory, resets the kernel's high-water mark, runs once, and reports
the peak minus that baseline (the memory the loss itself needs, its gradients included). The
child caps its address space (--cap-gib, lowered to what the machine has free) so a case too
large for this shared machine fails with "did not fit" instead of taking the machine down.
Time is the median of --repeats further runs. Results go to benchmarks/results/losses.json and
a table to stdout; the headline ratios are at vocab 152064 and sequence 4096.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3
HEADLINE = (152064, 4096)
TARGETS = {"mem_ratio_max": 0.25, "time_ratio_max": 1.5}


def _status_kib(field: str) -> int:
    """A `VmXXX:  N kB` line of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_case(case: dict) -> dict:
    """In the child: build inputs, measure one run's peak memory, then time the repeats."""
    sys.path.insert(0, str(ROOT))
    import torch

    from distill_ray.losses.chunked import chunked_divergence
    from distill_ray.losses.divergences import divergence

    vocab, seq, hidden = case["vocab"], case["seq"], case["hidden"]
    g = torch.Generator().manual_seed(0)
    student_hidden = torch.randn(1, seq, hidden, generator=g).requires_grad_()
    student_weight = (torch.randn(vocab, hidden, generator=g) * hidden**-0.5).requires_grad_()
    teacher_hidden = torch.randn(1, seq, hidden, generator=g)
    teacher_weight = torch.randn(vocab, hidden, generator=g) * hidden**-0.5

    def step():
        if case["impl"] == "naive":
            teacher_logits = teacher_hidden @ teacher_weight.T  # [1, T, V]
            student_logits = student_hidden @ student_weight.T  # [1, T, V]
            loss = divergence(teacher_logits, student_logits, kind="forward_kl")
            del teacher_logits, student_logits  # what the graph does not keep can go
        else:
            loss = chunked_divergence(
                student_hidden,
                student_weight,
                teacher_hidden,
                teacher_weight,
                kind="forward_kl",
                chunk_size=case["chunk_size"],
            )
        loss.backward()
        student_hidden.grad = student_weight.grad = None
        return float(loss)

    # from here on, at most cap bytes more address space: a MemoryError rather than the OOM killer
    limit = _status_kib("VmSize") * 1024 + case["cap_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    baseline = _status_kib("VmRSS") * 1024
    exact_peak = _reset_peak_rss()
    try:
        start = time.perf_counter()
        loss = step()
        first = time.perf_counter() - start
        peak = (_status_kib("VmHWM") if exact_peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        times = []
        for _ in range(case["repeats"]):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    except (MemoryError, RuntimeError) as exc:  # torch raises RuntimeError for a failed allocation
        return {**case, "fits": False, "error": str(exc).splitlines()[0][:200]}
    return {
        **case,
        "fits": True,
        "loss": loss,
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak,
        "peak_mem_bytes": peak - baseline,
        "peak_is_exact": exact_peak,
        "first_run_s": first,
        "times_s": times,
        "time_s": statistics.median(times) if times else first,
        "threads": torch.get_num_threads(),
    }


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def spawn(case: dict, timeout_s: float) -> dict:
    """Run one case in a fresh interpreter; a crash or a kill is recorded as 'did not fit'."""
    # leave 2 GiB to the other users of the machine
    case = {**case, "cap_bytes": int(min(case["cap_bytes"], max(available_bytes() - 2 * GIB, GIB)))}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(case)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {**case, "fits": False, "error": f"timed out after {timeout_s:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return {**case, "fits": False, "error": f"child failed (status {proc.returncode}): {tail[:200]}"}
    return json.loads(lines[-1])


def ratios(results: list[dict], vocab: int, seq: int) -> dict:
    """chunked / naive peak memory and time at one size, or why there is none."""
    by_impl = {r["impl"]: r for r in results if r["vocab"] == vocab and r["seq"] == seq}
    naive, chunked = by_impl.get("naive"), by_impl.get("chunked")
    out = {"mem_ratio": None, "time_ratio": None}
    if naive and chunked and naive["fits"] and chunked["fits"]:
        out["mem_ratio"] = chunked["peak_mem_bytes"] / naive["peak_mem_bytes"]
        out["time_ratio"] = chunked["time_s"] / naive["time_s"]
    elif naive and chunked and chunked["fits"] and not naive["fits"]:
        # naive needed more than its cap, so the true ratio is below this
        out["mem_ratio_upper_bound"] = chunked["peak_mem_bytes"] / naive["cap_bytes"]
    return out


def table(results: list[dict]) -> str:
    rows = [f"{'impl':8} {'vocab':>7} {'seq':>5} {'peak MiB':>9} {'time s':>8}  note"]
    for r in results:
        if r["fits"]:
            mib = r["peak_mem_bytes"] / 2**20
            rows.append(f"{r['impl']:8} {r['vocab']:>7} {r['seq']:>5} {mib:>9.0f} {r['time_s']:>8.2f}")
        else:
            rows.append(f"{r['impl']:8} {r['vocab']:>7} {r['seq']:>5} {'-':>9} {'-':>8}  did not fit: {r['error']}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: a smoke run in seconds")
    default_out = ROOT / "benchmarks" / "results" / "losses.json"
    parser.add_argument("--out", type=Path, default=default_out, help="JSON output path")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case after the measured first run")
    parser.add_argument("--chunk-size", type=int, default=256, help="tokens per chunk of the chunked loss")
    parser.add_argument("--cap-gib", type=float, default=18.0, help="address-space cap of each child, GiB")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_case(json.loads(args.child))), flush=True)
        return {}

    if args.quick:
        vocabs, seqs, hidden, repeats, headline = (1000,), (64, 128), 32, 1, (1000, 128)
    else:
        vocabs, seqs, hidden, repeats, headline = (32000, 152064), (1024, 4096), 896, args.repeats, HEADLINE
    base = dict(hidden=hidden, repeats=repeats, chunk_size=args.chunk_size, cap_bytes=int(args.cap_gib * GIB))
    results = []
    largest_naive_fit = {}
    for vocab in vocabs:
        for seq in seqs:
            for impl in ("naive", "chunked"):
                result = spawn({**base, "impl": impl, "vocab": vocab, "seq": seq}, timeout_s=1800)
                results.append(result)
                print(table([result]).splitlines()[1], flush=True)
                if impl == "naive" and result["fits"]:
                    largest_naive_fit[vocab] = seq
        # where naive did not fit at the longest sequence, find the longest that does
        if not args.quick and largest_naive_fit.get(vocab) != seqs[-1]:
            for seq in (3072, 2048):
                if seq > largest_naive_fit.get(vocab, 0):
                    result = spawn({**base, "impl": "naive", "vocab": vocab, "seq": seq}, timeout_s=1800)
                    results.append(result)
                    print(table([result]).splitlines()[1], flush=True)
                    if result["fits"]:
                        largest_naive_fit[vocab] = seq
                        break

    import torch  # only for the version: the children did the work

    head = ratios(results, *headline)
    report = {
        "question": "peak memory and time of chunked vs naive distillation loss, forward + backward",
        "quick": args.quick,
        "torch_version": torch.__version__,
        "threads": next((r["threads"] for r in results if r.get("fits")), None),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "dtype": "float32",
        "device": "cpu",
        "batch": 1,
        "hidden": hidden,
        "kind": "forward_kl",
        "chunk_size": args.chunk_size,
        "repeats": repeats,
        "memory_cap_gib": args.cap_gib,
        "peak_memory": "peak RSS of the case's child process minus its RSS after building the inputs",
        "headline": {"vocab": headline[0], "seq": headline[1]},
        "mem_ratio_152k_4096": head["mem_ratio"],
        "time_ratio_152k_4096": head["time_ratio"],
        "targets": TARGETS,
        "naive_largest_fitting_seq": {str(v): largest_naive_fit.get(v) for v in vocabs},
        "ratios": {f"{v}_{s}": ratios(results, v, s) for v in vocabs for s in seqs},
        "cases": results,
    }
    if "mem_ratio_upper_bound" in head:
        report["mem_ratio_152k_4096_upper_bound"] = head["mem_ratio_upper_bound"]
    sys.path.insert(0, str(ROOT))
    from benchmarks import _common

    _common.write_result(args.out, report)
    print()
    print(table(results))
    print(
        f"\nat vocab {headline[0]}, seq {headline[1]}: mem_ratio {head['mem_ratio']}, time_ratio {head['time_ratio']} "
        f"(targets <= {TARGETS['mem_ratio_max']}, <= {TARGETS['time_ratio_max']}); written to {args.out}"
    )
    return report


if __name__ == "__main__":
    main()
