"""benchmarks/quality.py: its aggregation and claim arithmetic on known numbers, a --quick smoke
run (two student sizes, two seeds, through the real driver) with valid JSON, and the plots made
from that JSON. No timing assertions."""

from __future__ import annotations

import json

import pytest


def scores(rouge: float, by_length: dict[str, float], em: float = 0.0, cap: float = 0.0) -> dict:
    cell = lambda r: {"n": 5, "exact_match": em, "rouge_l": r, "mean_length": 10.0, "hit_cap": cap}  # noqa: E731
    empty = {"n": 0, "exact_match": None, "rouge_l": None, "mean_length": None, "hit_cap": None}
    return {"overall": cell(rouge), "by_length": {b: cell(r) for b, r in by_length.items()} | {"empty": empty},
            "by_task": {"count": cell(rouge)}, "by_task_length": {"count": {b: cell(r) for b, r in by_length.items()} | {"empty": empty}}}


def test_aggregate_gives_mean_and_sample_std_and_drops_empty_buckets(load_benchmark):
    quality = load_benchmark("quality")
    agg = quality.aggregate([scores(0.2, {"short": 0.3, "long": 0.1}, cap=0.5), scores(0.4, {"short": 0.5, "long": 0.1})])
    assert agg["overall"]["rouge_l"]["mean"] == pytest.approx(0.3)
    assert agg["overall"]["rouge_l"]["std"] == pytest.approx(0.1414213, rel=1e-5)  # sample std of 0.2, 0.4
    assert agg["overall"]["hit_cap"]["mean"] == pytest.approx(0.25)
    assert agg["by_length"]["long"]["rouge_l"] == {"mean": pytest.approx(0.1), "std": pytest.approx(0.0)}
    assert set(agg["by_length"]) == {"short", "long"}  # the empty bucket has no mean to give
    assert set(agg["by_task_length"]["count"]) == {"short", "long"}
    assert agg["by_task_length"]["count"]["short"]["rouge_l"]["mean"] == pytest.approx(0.4)


def test_paired_interval_on_known_numbers(load_benchmark):
    common = load_benchmark("_common")
    r = common.paired_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.303
    assert r["mean"] == pytest.approx(2.0) and r["ci95"] == pytest.approx([2 - 4.303 / 3**0.5, 2 + 4.303 / 3**0.5])
    assert r["verdict"] == "not resolved"
    assert common.paired_interval([0.10, 0.12, 0.11, 0.09, 0.13])["verdict"] == "a above b"
    assert common.paired_interval([-0.10, -0.12, -0.11, -0.09, -0.13])["verdict"] == "a below b"
    assert common.paired_interval([0.5])["ci95"] is None  # one seed: no interval, no verdict


def test_claims_pair_each_seed_against_the_best_other_method(load_benchmark):
    quality = load_benchmark("quality")

    def method(per_seed):  # seed -> (overall, short, long)
        runs = {str(k): scores(o, {"short": sh, "long": lg}) for k, (o, sh, lg) in per_seed.items()}
        return {"seeds": runs}

    small = {"kd": method({0: (0.30, 0.40, 0.10), 1: (0.32, 0.42, 0.12), 2: (0.31, 0.41, 0.11)}),
             "sgo": method({0: (0.20, 0.35, 0.05), 1: (0.22, 0.36, 0.06), 2: (0.21, 0.34, 0.07)}),
             "switch": method({0: (0.25, 0.30, 0.20), 1: (0.27, 0.31, 0.21), 2: (0.26, 0.30, 0.23)}),
             "okd": method({0: (0.22, 0.30, 0.10), 1: (0.30, 0.30, 0.10), 2: (0.20, 0.30, 0.10)})}
    large = {m: method({k: (o - 0.1, sh, lg) for k, (o, sh, lg) in
                        ((int(k), (v["overall"]["rouge_l"], v["by_length"]["short"]["rouge_l"], v["by_length"]["long"]["rouge_l"]))
                         for k, v in r["seeds"].items())}) for m, r in small.items()}
    large["switch"] = method({0: (0.10, 0.2, 0.2), 1: (0.12, 0.2, 0.2), 2: (0.11, 0.2, 0.2)})
    c = quality.claims({"small": {"methods": small}, "large": {"methods": large}})
    okd = c["okd_vs_best_sgo"]["small"]
    assert okd["against"] == "switch"  # the better of sgo (0.21) and switch (0.26) by mean
    assert okd["per_seed"] == pytest.approx([0.22 - 0.25, 0.30 - 0.27, 0.20 - 0.26]) and okd["verdict"] == "not resolved"
    short, long = c["switch_vs_best_other"]["small"]["short"], c["switch_vs_best_other"]["small"]["long"]
    assert short["against"] == "kd" and short["verdict"] == "a below b"
    assert long["against"] == "kd" and long["per_seed"] == pytest.approx([0.10, 0.09, 0.12]) and long["verdict"] == "a above b"
    growth = c["switch_gain_long_minus_short"]["small"]
    assert growth["per_seed"] == pytest.approx([0.10 - (-0.10), 0.09 - (-0.11), 0.12 - (-0.11)]) and growth["verdict"] == "a above b"
    # overall gains: small switch - kd = (-0.05, -0.05, -0.05); large switch - kd = (0.10-0.20, 0.12-0.22, 0.11-0.21)
    gap = c["switch_gain_small_minus_large"]
    assert gap["per_seed"] == pytest.approx([0.05, 0.05, 0.05]) and gap["n"] == 3
    assert any("okd - switch (small)" == name for name, _ in quality.claim_rows(c))



def test_resume_keeps_a_partial_run_only_with_the_same_settings_and_teacher(tmp_path, load_benchmark):
    import argparse

    quality = load_benchmark("quality")
    settings = {"steps": 400, "test_examples": 200, "max_new_tokens": 200, "quick": False, "bench_settings": ["a=1"]}
    teacher = {"overall": {"rouge_l": 0.99}}
    sizes = {"small": {"warmup": {"overall": {"rouge_l": 0.5}}, "methods": {"kd": {"seeds": {"0": {}, "1": {}}}}}}
    partial = tmp_path / "quality.partial.json"
    assert quality.resumable(partial, {"settings": settings, "teacher": teacher}, argparse.ArgumentParser()) == {}
    partial.write_text(json.dumps({"settings": settings, "teacher": teacher, "sizes": sizes}))
    assert quality.resumable(partial, {"settings": settings, "teacher": teacher}, argparse.ArgumentParser()) == sizes
    for changed in ({"settings": {**settings, "steps": 200}, "teacher": teacher},
                    {"settings": settings, "teacher": {"overall": {"rouge_l": 0.98}}}):
        with pytest.raises(SystemExit) as e:
            quality.resumable(partial, changed, argparse.ArgumentParser())
        assert e.value.code == 2  # argparse's usage error: refused, nothing kept

@pytest.mark.slow
def test_quality_quick_two_sizes_two_seeds_and_its_plots(ray_local, tmp_path, load_benchmark):
    quality = load_benchmark("quality")
    out = tmp_path / "quality.json"
    assert quality.main(["--quick", "--methods", "okd", "--seeds", "0,1", "--out", str(out)]) == 0
    assert not out.with_suffix(".partial.json").exists()  # the partial file is gone once the whole is written
    result = json.loads(out.read_text())
    assert set(result["sizes"]) == {"small", "large"}
    small, large = result["sizes"]["small"], result["sizes"]["large"]
    assert large["parameters"] > small["parameters"] and small["gap"] > large["gap"] > 1
    for entry in (small, large):
        for method in ("okd",):
            r = entry["methods"][method]
            assert set(r["seeds"]) == {"0", "1"}
            rouge = [s["overall"]["rouge_l"] for s in r["seeds"].values()]
            assert r["aggregate"]["overall"]["rouge_l"]["mean"] == pytest.approx(sum(rouge) / 2)
            assert all(0.0 <= x <= 1.0 for x in rouge)
            nonempty = {b for b, s in entry["warmup"]["by_length"].items() if s["n"]}
            assert set(r["aggregate"]["by_length"]) == nonempty
    assert 0.0 <= result["teacher"]["overall"]["rouge_l"] <= 1.0
    assert set(result["claims"]) >= {"okd_vs_best_sgo", "switch_vs_best_other"}
    assert set(r["seeds"]["0"]) >= {"by_task", "by_task_length"}

    plots = load_benchmark("plots")
    assert plots.main(["--results", str(tmp_path)]) == 0  # quality.json only: the okd_vs_sgo plots are skipped
    png = tmp_path / "quality_by_length.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert not (tmp_path / "quality_vs_time.png").exists()


def test_benchmark_results_are_written_whole_or_not_at_all(tmp_path, load_benchmark):
    """Every benchmark writes its JSON through `_common.write_result`: a result that cannot be
    written leaves the previous file as it was, and no temp file behind."""
    common = load_benchmark("_common")
    out = tmp_path / "results" / "bench.json"
    common.write_result(out, {"speedup": 1.5})
    with pytest.raises(TypeError):
        common.write_result(out, {"speedup": object()})  # not JSON: fails before anything is written
    assert json.loads(out.read_text()) == {"speedup": 1.5}
    assert sorted(p.name for p in out.parent.iterdir()) == ["bench.json"]
