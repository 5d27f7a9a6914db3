"""Quality metrics: ROUGE-L (the papers' metric), exact match, response length, by length bucket."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Reference-response length buckets, in tokens of the evaluated tokenizer.
LENGTH_BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("short (<=16)", 0, 16),
    ("medium (17-64)", 17, 64),
    ("long (>64)", 65, 10**9),
)


def bucket_of(num_tokens: int) -> str:
    for name, lo, hi in LENGTH_BUCKETS:
        if lo <= num_tokens <= hi:
            return name
    raise ValueError(num_tokens)


def normalize(text: str) -> str:
    return " ".join(text.split())


def exact_match(prediction: str, reference: str, form: Callable[[str], str] = normalize) -> float:
    """1.0 when both texts have the same `form` (default: whitespace collapsed)."""
    return float(form(prediction) == form(reference))


_scorer = None


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (rouge_score's implementation and tokenizer), in [0, 1]."""
    global _scorer
    if _scorer is None:
        from rouge_score import rouge_scorer

        _scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return _scorer.score(reference, prediction)["rougeL"].fmeasure


@dataclass
class Scored:
    prediction: str
    reference: str
    reference_tokens: int
    prediction_tokens: int
    task: str | None = None
    form: Callable[[str], str] = normalize  # what exact match compares: the tokenizer's normal form in eval (NFKC, ...)
    hit_cap: bool = False  # generation stopped at max_new_tokens, not at EOS

    @property
    def em(self) -> float:
        return exact_match(self.prediction, self.reference, self.form)

    @property
    def rouge(self) -> float:
        return rouge_l(self.prediction, self.reference)


def summarize(items: list[Scored]) -> dict:
    """Exact match, ROUGE-L, mean response length (in tokens) and the share of responses cut at the
    generation cap: overall, per length bucket, per task, and per length bucket within each task
    (`by_task_length`: length and task told apart)."""

    def agg(rows: list[Scored]) -> dict:
        if not rows:
            return {"n": 0, "exact_match": None, "rouge_l": None, "mean_length": None, "hit_cap": None}
        return {
            "n": len(rows),
            "exact_match": sum(r.em for r in rows) / len(rows),
            "rouge_l": sum(r.rouge for r in rows) / len(rows),
            "mean_length": sum(r.prediction_tokens for r in rows) / len(rows),
            "hit_cap": sum(r.hit_cap for r in rows) / len(rows),
        }

    def by_length(rows: list[Scored]) -> dict:
        return {name: agg([r for r in rows if bucket_of(r.reference_tokens) == name]) for name, _, _ in LENGTH_BUCKETS}

    tasks = sorted({r.task for r in items if r.task})
    return {"overall": agg(items), "by_length": by_length(items),
            "by_task": {t: agg([r for r in items if r.task == t]) for t in tasks},
            "by_task_length": {t: by_length([r for r in items if r.task == t]) for t in tasks}}
