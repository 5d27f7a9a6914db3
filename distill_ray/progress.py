"""Progress of long work (teacher SFT, teacher answers, evaluation): a tqdm bar with rate and ETA
in a terminal, and in a log file (anything that is not a terminal) one plain line every `every`
percent, without carriage returns.

    with progress_bar(len(prompts), "generated", unit="prompt") as bar:
        for batch in batches:
            ...
            bar.update(len(batch))

`bar_class()` is the same choice as a tqdm class, for libraries that take one (vLLM's
`LLM.generate(use_tqdm=...)`).
"""

from __future__ import annotations

import io
import math
import sys
from functools import partial
from typing import TextIO

from tqdm import tqdm


class _Discard(io.TextIOBase):
    """tqdm's own output (carriage returns and bar redraws) goes nowhere."""

    def write(self, text: str) -> int:
        return len(text)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


class LogLines(tqdm):
    """A tqdm whose display is one plain line each time another `every` percent is done, and one at
    the end: "generated 40/100 (40%) 2.1 prompt/s, 0:12 so far, ETA 0:28"."""

    def __init__(self, *args, every: float = 10.0, stream: TextIO | None = None, **kwargs):
        self._every, self._stream = every, stream or sys.stderr
        self._next_percent, self._ended = every, False
        kwargs.update(file=_Discard(), mininterval=0.0, dynamic_ncols=False)
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):  # tqdm calls this to redraw
        total, n = self.total, self.n
        if not total or self._ended or n <= 0:
            return True
        percent = 100.0 * n / total
        if percent + 1e-9 < self._next_percent and n < total:
            return True
        while self._next_percent <= percent + 1e-9:
            self._next_percent += self._every
        self._ended = n >= total
        elapsed = self.format_dict["elapsed"]
        rate = n / elapsed if elapsed > 0 else float("inf")
        eta = (total - n) / rate if rate > 0 and math.isfinite(rate) else 0.0
        head = f"{self.desc.rstrip(': ')} " if self.desc else ""
        postfix = f", {self.postfix}" if self.postfix else ""
        rate_text = f"{rate:.2f} {self.unit}/s" if math.isfinite(rate) else "-"
        tail = "done" if self._ended else f"ETA {_duration(eta)}"
        print(f"  {head}{n}/{total} ({percent:.0f}%) {rate_text}, {_duration(elapsed)} so far, {tail}{postfix}",
              file=self._stream, flush=True)
        return True


def bar_class(stream: TextIO | None = None):
    """tqdm on a terminal, LogLines otherwise (for a library that takes a tqdm class)."""
    stream = stream or sys.stderr
    return partial(tqdm, file=stream, dynamic_ncols=True) if stream.isatty() else partial(LogLines, stream=stream)


def progress_bar(total: int, desc: str, *, unit: str = "it", enabled: bool = True, stream: TextIO | None = None) -> tqdm:
    """A progress bar over `total` units (`enabled=False`: one that shows nothing)."""
    if not enabled:
        return tqdm(total=total, disable=True)
    return bar_class(stream)(total=total, desc=desc, unit=unit)
