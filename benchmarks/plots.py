"""The benchmark plots (PNG) from the results JSON: BENCHMARKS.md and the README show them.

    python benchmarks/plots.py          # reads benchmarks/results/{okd_vs_sgo,quality}.json

    quality_vs_time.png    validation ROUGE-L against training wall-clock, per variant, mean ± std over
                           seeds, with the target and the warm-up score (okd_vs_sgo)
    time_breakdown.png     median seconds per step split into its parts, per variant (okd_vs_sgo)
    quality_by_length.png  test ROUGE-L per reference-length bucket, per method and student size,
                           mean and standard deviation over seeds (quality)

A missing results file skips its plots (with a line saying so); nothing is measured here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COLORS = {"sft": "#7f7f7f", "kd": "#1f77b4", "okd": "#2ca02c", "sgo": "#d62728", "sgo_l1": "#ff9896",
          "sgo_sync": "#8c564b", "switch": "#9467bd"}
PARTS = [("rollout_wait", "waiting for rollout"), ("teacher_forward", "teacher forward"),
         ("student_fwd_bwd", "student forward+backward"), ("optimizer", "optimizer step"),
         ("weight_sync", "weight sync"), ("other", "other (batching, logging)")]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)
    return path


def quality_vs_time(result: dict, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for method, r in result["methods"].items():
        curve = r["validation"]  # mean over seeds at each validation step
        ax.errorbar([c["train_seconds"] for c in curve], [c["rouge_l"] for c in curve],
                    yerr=[c.get("rouge_l_std", 0.0) for c in curve], marker="o", ms=3, capsize=2,
                    label=method, color=COLORS.get(method))
    ax.axhline(result["target_rouge_l"], ls="--", lw=1, color="black", label="target")
    ax.axhline(result["warmup_rouge_l"], ls=":", lw=1, color="gray", label="warm-up student")
    ax.set_xlabel("training wall-clock (s, validation excluded; mean over seeds)")
    ax.set_ylabel(f"validation ROUGE-L (mean ± std, {result['seeds']} seeds)")
    ax.set_title(f"Quality against training time ({result['settings']['steps']} steps each)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def time_breakdown(result: dict, path: Path) -> Path:
    plt = _pyplot()
    methods = list(result["methods"])
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    bottom = [0.0] * len(methods)
    for part, label in PARTS:
        values = [result["methods"][m]["breakdown_seconds"][part] for m in methods]
        ax.bar(methods, values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values)]
    busy = [result["methods"][m]["rollout_busy_seconds"] for m in methods]
    ax.scatter(methods, busy, marker="_", s=600, color="black", zorder=3, label="rollout worker busy (overlapped)")
    ax.set_ylabel("seconds per step (median of each part)")
    ax.set_title("Where a training step's time goes")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def quality_by_length(result: dict, path: Path) -> Path:
    plt = _pyplot()
    sizes = list(result["sizes"])
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.0 * len(sizes), 4.0), sharey=True, squeeze=False)
    for ax, size in zip(axes[0], sizes):
        entry = result["sizes"][size]
        buckets = list(entry["warmup"]["by_length"])
        methods = list(entry["methods"])
        width = 0.8 / (len(methods) + 2)
        xs = range(len(buckets))
        for i, (name, scores) in enumerate((("teacher", result["teacher"]), ("warm-up", entry["warmup"]))):
            ax.bar([x + i * width for x in xs], [scores["by_length"][b]["rouge_l"] or 0 for b in buckets], width,
                   label=name, color="white", edgecolor="black", hatch="//" if i == 0 else "..")
        for j, method in enumerate(methods):
            agg = entry["methods"][method]["aggregate"]["by_length"]
            ax.bar([x + (j + 2) * width for x in xs], [agg[b]["rouge_l"]["mean"] if b in agg else 0 for b in buckets], width,
                   yerr=[agg[b]["rouge_l"]["std"] if b in agg else 0 for b in buckets], capsize=2, label=method,
                   color=COLORS.get(method))
        ax.set_xticks([x + 0.4 - width / 2 for x in xs], [f"{b}\nn={entry['warmup']['by_length'][b]['n']}" for b in buckets])
        ax.set_title(f"{size} student ({entry['parameters'] / 1e6:.2f}M, {entry['gap']:.1f}x gap)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test ROUGE-L (mean ± std over seeds)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=str(RESULTS), help="directory of the results JSON")
    p.add_argument("--out-dir", default=None, help="where the PNGs go [--results]")
    p.add_argument("--quick", action="store_true", help="the same (plots have no smaller size)")
    args = p.parse_args(argv)
    results = Path(args.results)
    out_dir = Path(args.out_dir or results)
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    jobs = {"okd_vs_sgo.json": [(quality_vs_time, "quality_vs_time.png"), (time_breakdown, "time_breakdown.png")],
            "quality.json": [(quality_by_length, "quality_by_length.png")]}
    for name, plots in jobs.items():
        src = results / name
        if not src.is_file():
            print(f"[plots] no {src}: skipping {', '.join(png for _, png in plots)}")
            continue
        data = json.loads(src.read_text())
        made += [fn(data, out_dir / png) for fn, png in plots]
    for path in made:
        print(f"wrote {path}")
    return 0 if made else 1


if __name__ == "__main__":
    raise SystemExit(main())
