"""The docs' ```python blocks that talk to a running service (tests/test_docs.py runs the others),
run against the session's Serve apps: the address the docs show (127.0.0.1:8000) becomes the
test's own loopback port."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_every_python_block_that_calls_a_service_runs(doc_blocks, services):
    blocks = [b for b in doc_blocks if b["lang"] == "python" and "http://127.0.0.1:8000" in b["text"]]
    assert blocks, "the README's openai client example is gone: update this test"
    for b in blocks:
        code = b["text"].replace("http://127.0.0.1:8000", services["url"])
        try:
            exec(compile(code, f"{b['file']}:{b['line']}", "exec"), {"__name__": "__docs__"})
        except Exception as exc:  # noqa: BLE001 - report which block, then fail
            pytest.fail(f"{b['file']}:{b['line']}: the python block raises {type(exc).__name__}: {exc}")
