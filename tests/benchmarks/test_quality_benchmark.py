"""benchmarks/quality.py: its aggregation and claim arithmetic on known numbers, a --quick smoke
run (two student sizes, two seeds, through the real driver) with valid JSON, and the plots made
from that JSON. No timing assertions."""

from __future__ import annotations

import json

import pytest


def scores(rouge: float, by_length: dict[str, float], em: float = 0.0) -> dict:
    return {"overall": {"exact_match": em, "rouge_l": rouge, "mean_length": 10.0},
            "by_length": {b: {"n": 5, "exact_match": em, "rouge_l": r, "mean_length": 10.0} for b, r in by_length.items()}
            | {"empty": {"n": 0, "exact_match": None, "rouge_l": None, "mean_length": None}}}


def test_aggregate_gives_mean_and_sample_std_and_drops_empty_buckets(load_benchmark):
    quality = load_benchmark("quality")
    agg = quality.aggregate([scores(0.2, {"short": 0.3, "long": 0.1}), scores(0.4, {"short": 0.5, "long": 0.1})])
    assert agg["overall"]["rouge_l"]["mean"] == pytest.approx(0.3)
    assert agg["overall"]["rouge_l"]["std"] == pytest.approx(0.1414213, rel=1e-5)  # sample std of 0.2, 0.4
    assert agg["by_length"]["long"]["rouge_l"] == {"mean": pytest.approx(0.1), "std": pytest.approx(0.0)}
    assert set(agg["by_length"]) == {"short", "long"}  # the empty bucket has no mean to give


def test_claims_compare_switch_with_the_best_other_method_and_okd_with_the_better_sgo_method(load_benchmark):
    quality = load_benchmark("quality")
    methods = {m: {"aggregate": quality.aggregate([scores(r, {"short": s, "long": lg})])}
               for m, r, s, lg in (("kd", 0.30, 0.40, 0.10), ("sgo", 0.20, 0.35, 0.05), ("switch", 0.25, 0.30, 0.20),
                                   ("okd", 0.22, 0.30, 0.10))}
    claims = quality.claims({"small": {"methods": methods}})
    gains = claims["switch_minus_best_other_by_length"]["small"]
    assert gains["short"] == pytest.approx(0.30 - 0.40) and gains["long"] == pytest.approx(0.20 - 0.10)
    assert claims["okd_minus_best_sgo"]["small"] == pytest.approx(0.22 - 0.25)


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
    assert "okd_minus_best_sgo" in result["claims"]

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
