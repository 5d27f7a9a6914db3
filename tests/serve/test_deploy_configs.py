"""deploy/*.yaml: each is a valid Serve config whose import path builds its app from its args,
with autoscaling set; bad args are refused when the app is built, before any replica starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distill_ray.serve.apps import load_app_spec

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "deploy").glob("*.yaml"))


def test_every_service_has_a_config():
    assert {p.name for p in CONFIGS} >= {"teacher.yaml", "teacher_vllm.yaml", "student.yaml", "serve_all.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_builds_its_apps(path, tmp_path):
    from ray.serve._private.utils import import_attr
    from ray.serve.deployment import Application

    model = tmp_path / "model"
    model.mkdir()  # the builder only checks the directory; replicas load it
    for app in yaml.safe_load(path.read_text())["applications"]:
        spec = load_app_spec(path, app["name"])
        assert spec.deployment_options["autoscaling_config"]["max_replicas"] >= 1
        assert spec.deployment_options["ray_actor_options"]["num_cpus"] > 0
        built = import_attr(spec.import_path)({**spec.args, "model": str(model)})  # what `serve run` calls
        assert isinstance(built, Application)
        assert isinstance(spec.build({"model": str(model)}, {"num_replicas": 1}), Application)


def test_bad_args_are_refused_at_build_time(tmp_path):
    spec = load_app_spec(ROOT / "deploy/teacher.yaml")
    with pytest.raises(ValueError, match="no model directory at /nonexistent"):
        spec.build({"model": "/nonexistent"})
    with pytest.raises(ValueError, match="backend"):
        spec.build({"model": str(tmp_path), "backend": "tensorrt"})
    with pytest.raises(ValueError, match="max_topk"):  # a typo: unknown keys are refused
        spec.build({"model": str(tmp_path), "max_topk": 8})
    with pytest.raises(ValueError, match=r"engine: unknown EngineConfig field\(s\) \['kv_cache'\]"):
        spec.build({"model": str(tmp_path), "engine": {"kv_cache": 1}})
    with pytest.raises(ValueError, match="expected one application"):
        load_app_spec(ROOT / "deploy/serve_all.yaml")
