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
    # length within a task: count's one row is long, copy's two are short
    assert s["by_task_length"]["count"]["long (>64)"]["n"] == 1 and s["by_task_length"]["count"]["short (<=16)"]["n"] == 0
    assert s["by_task_length"]["copy"]["short (<=16)"]["rouge_l"] == pytest.approx((1.0 + 2 / 3) / 2)


def test_the_share_of_responses_cut_at_the_generation_cap_is_counted_per_bucket():
    items = [Scored("a", "a", 1, 1, "t"), Scored("a a a a", "a", 1, 4, "t", hit_cap=True),
             Scored("b", "b " * 30, 30, 1, "t")]
    s = summarize(items)
    assert s["overall"]["hit_cap"] == pytest.approx(1 / 3)
    assert s["by_length"]["short (<=16)"]["hit_cap"] == pytest.approx(0.5)
    assert s["by_length"]["medium (17-64)"]["hit_cap"] == 0.0 and s["by_length"]["long (>64)"]["hit_cap"] is None
