import pytest

from distill_ray.eval.scores import Scored, bucket_of, exact_match, rouge_l, summarize


def test_exact_match_and_rouge():
    assert exact_match("a  b c", "a b c") == 1.0
    assert exact_match("a b", "a b c") == 0.0
    assert rouge_l("a b c", "a b c") == pytest.approx(1.0)
    assert rouge_l("x y z", "a b c") == 0.0
    # LCS of "a b d" and "a b c" is 2 -> P = R = 2/3
    assert rouge_l("a b d", "a b c") == pytest.approx(2 / 3)


def test_buckets_and_summary():
    assert bucket_of(5) == "short (<=16)" and bucket_of(17) == "medium (17-64)" and bucket_of(200) == "long (>64)"
    items = [
        Scored("a b", "a b", 2, 2, "copy"),
        Scored("a", "a b", 2, 1, "copy"),
        Scored(" ".join("x" * 100), " ".join("x" * 100), 100, 100, "count"),
    ]
    s = summarize(items)
    assert s["overall"]["n"] == 3
    assert s["overall"]["exact_match"] == pytest.approx(2 / 3)
    assert s["by_length"]["short (<=16)"]["exact_match"] == pytest.approx(0.5)
    assert s["by_length"]["long (>64)"]["exact_match"] == 1.0
    assert s["by_length"]["medium (17-64)"]["n"] == 0
    assert s["by_task"]["copy"]["mean_length"] == pytest.approx(1.5)
