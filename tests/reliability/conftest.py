"""Fault and bad-input tests (RELIABILITY.md). They reuse the driver tests' run config
(`make_cfg`) and metrics reader, and the CLI tests' one-line-error check."""

from __future__ import annotations

import sys
from pathlib import Path

# tests/ has no packages: make the sibling test modules importable by name
for folder in (Path(__file__).parents[1], Path(__file__).parents[1] / "pipeline"):
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
