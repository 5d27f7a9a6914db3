"""Progress of long work: plain lines every few percent in a log (no carriage returns), a tqdm
bar in a terminal, and the same choice handed to vLLM as its tqdm class."""

from __future__ import annotations

import io
import re

from distill_ray.progress import LogLines, bar_class, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_plain_line_every_ten_percent_and_one_at_the_end():
    log = io.StringIO()
    with progress_bar(200, "generated", unit="prompt", stream=log) as bar:
        for _ in range(100):
            bar.update(2)
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    percents = [int(re.search(r"\((\d+)%\)", line).group(1)) for line in lines]
    assert percents == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100], lines
    assert re.fullmatch(r"  generated 20/200 \(10%\) [\d.]+ prompt/s, \d+ s so far, ETA \d+ s", lines[0]), lines[0]
    assert lines[-1].startswith("  generated 200/200 (100%)") and lines[-1].endswith("done")


def test_a_terminal_gets_a_tqdm_bar_with_rate_and_eta():
    term = Terminal()
    with progress_bar(10, "scored", unit="row", stream=term) as bar:
        assert not isinstance(bar, LogLines)
        bar.update(10)
    assert "\r" in term.getvalue() and "10/10" in term.getvalue() and "row/s" in term.getvalue()


def test_disabled_shows_nothing_and_postfix_reaches_the_log():
    log = io.StringIO()
    with progress_bar(4, "x", enabled=False, stream=log) as bar:
        bar.update(4)
    assert log.getvalue() == ""
    with progress_bar(2, "teacher sft", unit="step", stream=log) as bar:
        bar.set_postfix_str("loss 1.234", refresh=False)
        bar.update(2)
    assert log.getvalue().strip().endswith("done, loss 1.234")


def test_the_tqdm_class_for_vllm_behaves_as_vllm_uses_it():
    """vLLM's LLM.generate(use_tqdm=cls) builds cls(total=, desc=, dynamic_ncols=, postfix=), reads
    format_dict["elapsed"], assigns postfix, updates and closes (vllm/entrypoints/common/offline.py)."""
    log = io.StringIO()
    pbar = bar_class(log)(total=5, desc="Processed prompts", dynamic_ncols=True, postfix="est. speed input: 0.00 toks/s")
    for _ in range(5):
        assert pbar.format_dict["elapsed"] >= 0
        pbar.postfix = "est. speed input: 1.00 toks/s"
        pbar.update(1)
    pbar.close()
    assert "\r" not in log.getvalue()
    assert log.getvalue().splitlines()[-1].startswith("  Processed prompts 5/5 (100%)")
