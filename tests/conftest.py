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
    from distill_ray.models.local import LocalModelsSpec, init_local_models

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
