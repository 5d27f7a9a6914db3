"""ARCHITECTURE.md's layers, checked: a module of distill_ray imports only from its own layer or
the layers below it (module-level and function-level imports alike)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "distill_ray"

# top to bottom, as in ARCHITECTURE.md's table; a module takes the layer of its longest matching prefix
LAYERS = [
    ("entry points", ["cli", "quickstart", "testbed", "serve"]),
    ("orchestration", ["pipeline.driver", "pipeline.in_process", "pipeline.run_log", "data.instructions"]),
    ("distributed parts", ["trainer.group", "trainer.rank", "trainer.options", "trainer.checkpoints",
                           "trainer.deepspeed_config", "pipeline.rollout_loop", "pipeline.teachers",
                           "pipeline.placement", "pipeline.sources", "rollout.workers", "serve.client"]),
    ("compute", ["trainer", "eval", "losses", "rollout", "models"]),
    ("data", ["data", "batch"]),
    ("rules", ["config", "methods", "resources", "errors", "fsutil", "progress", ""]),
]


def layer_of(module: str) -> int:
    """Index into LAYERS of a dotted module name relative to distill_ray ("" for the package itself)."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".") or prefix == "") and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distill_ray"):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("distill_ray")]
    return found


def test_no_import_runs_up_a_layer():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix("__init__").rstrip(".")
        here = layer_of(module)
        for line, imported in imports_of(path):
            target = imported.removeprefix("distill_ray").lstrip(".")
            if layer_of(target) < here:
                upward.append(f"distill_ray/{path.relative_to(PACKAGE)}:{line} ({LAYERS[here][0]}) imports "
                              f"{imported} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "\n".join(upward)


def test_every_module_has_a_layer_and_the_architecture_page_names_the_layers():
    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    for name, _ in LAYERS:
        assert f"| {name} |" in text, name
