"""The docs' code runs: every ```python block of the Markdown docs is executed (those that talk to
a running service: tests/serve/test_docs_snippets.py), and every `distill-ray ...` command in their
```bash blocks parses with the CLI's own parser, its config and `--set` overrides loading."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_python_block_of_the_docs_runs(doc_blocks):
    blocks = [b for b in doc_blocks if b["lang"] == "python" and "http://" not in b["text"]]
    assert blocks, "no python blocks found: the extraction is broken"
    for b in blocks:
        try:
            exec(compile(b["text"], f"{b['file']}:{b['line']}", "exec"), {"__name__": "__docs__"})
        except Exception as exc:  # noqa: BLE001 - report which block, then fail
            pytest.fail(f"{b['file']}:{b['line']}: the python block raises {type(exc).__name__}: {exc}")


def distill_ray_commands(text: str) -> list[list[str]]:
    """The `distill-ray ...` invocations of a shell block, continuation lines joined, comments and
    prompts dropped, split at && ; | (shell variables are left as they are)."""
    joined = text.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        line = line.strip().removeprefix("$ ")
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        segment: list[str] = []
        for word in [*words, ";"]:
            if word in ("&&", ";", "|", "||", "&"):
                if segment and segment[0] == "distill-ray":
                    commands.append(segment)
                segment = []
            else:
                segment.append(word)
    return commands


def test_every_distill_ray_command_of_the_docs_parses(doc_blocks):
    from distill_ray.cli import build_parser
    from distill_ray.config import load_config

    parser = build_parser()
    seen = 0
    for b in doc_blocks:
        if b["lang"] not in ("bash", "sh", ""):
            continue
        for argv in distill_ray_commands(b["text"]):
            where = f"{b['file']}:{b['line']}: {' '.join(argv)}"
            try:
                args = parser.parse_args(argv[1:])
            except SystemExit:
                pytest.fail(f"{where}: the CLI's parser refuses it")
            seen += 1
            if args.command == "train" and (ROOT / args.config).is_file():
                try:
                    load_config(ROOT / args.config, args.set or [])
                except Exception as exc:  # noqa: BLE001
                    pytest.fail(f"{where}: {exc}")
    assert seen >= 10, f"only {seen} distill-ray commands found in the docs: the extraction is broken"


def test_the_command_extraction():
    text = "distill-ray train a.yaml \\\n    --set x=1  # comment\n$ make x && distill-ray eval --run r | tee o\n"
    assert distill_ray_commands(text) == [["distill-ray", "train", "a.yaml", "--set", "x=1"],
                                          ["distill-ray", "eval", "--run", "r"]]
