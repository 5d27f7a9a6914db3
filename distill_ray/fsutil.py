"""Directories that appear whole or not at all: written aside, then renamed into place.

    with written_dir(Path("local/models/student")) as tmp:
        model.save_pretrained(tmp)          # an exception here leaves no trace and the old directory as it was

A reader of the final path sees the old directory or the new one, never half of either (the old
one is renamed aside before the new one is renamed in, then removed).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def staging_dir(final: Path) -> Path:
    """Where `final` is written before its rename: hidden, so a glob such as the driver's
    `step_*` never picks up a half-written directory left by a crash."""
    return final.with_name(f".{final.name}.tmp")


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished `tmp` to `final`, replacing an older `final`; readers never see half of one."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def written_dir(final: Path) -> Iterator[Path]:
    """A fresh staging directory to write `final` into; renamed into place when the block ends
    without an exception, removed when it raises (Ctrl-C included)."""
    final = Path(final)
    tmp = staging_dir(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)
