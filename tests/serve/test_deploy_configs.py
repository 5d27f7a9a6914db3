"""deploy/*.yaml: each is a valid Serve config whose import path builds its app from its args,
with autoscaling set and a bearer token required; bad args, and a token asked for but absent, are
refused when the app is built, before any replica starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distill_ray.errors import DistillError
from distill_ray.serve.apps import load_app_spec
from distill_ray.serve.common import TOKEN_ENV

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "deploy").glob("*.yaml"))


def test_every_service_has_a_config():
    assert {p.name for p in CONFIGS} >= {"teacher.yaml", "teacher_vllm.yaml", "student.yaml", "serve_all.yaml"}


def bound_token(app) -> str | None:
    """The bearer token a built app's deployment was bound to (None: open)."""
    return app._bound_deployment.init_args[1]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_builds_its_apps_and_requires_a_token(path, tmp_path, monkeypatch):
    from ray.serve._private.utils import import_attr
    from ray.serve.deployment import Application

    model = tmp_path / "model"
    model.mkdir()  # the builder only checks the directory; replicas load it
    for app in yaml.safe_load(path.read_text())["applications"]:
        spec = load_app_spec(path, app["name"])
        assert spec.deployment_options["autoscaling_config"]["max_replicas"] >= 1
        assert spec.deployment_options["ray_actor_options"]["num_cpus"] > 0
        assert spec.args["auth"] == "token"
        monkeypatch.delenv(TOKEN_ENV, raising=False)
        with pytest.raises(DistillError, match=f"auth: token, but neither auth_token nor \\${TOKEN_ENV} is set"):
            import_attr(spec.import_path)({**spec.args, "model": str(model)})
        monkeypatch.setenv(TOKEN_ENV, "s3cret")
        built = import_attr(spec.import_path)({**spec.args, "model": str(model)})  # what `serve run` calls
        assert isinstance(built, Application) and bound_token(built) == "s3cret"
        assert isinstance(spec.build({"model": str(model)}, {"num_replicas": 1}), Application)


def test_auth_modes(tmp_path, monkeypatch):
    spec = load_app_spec(ROOT / "deploy/teacher.yaml")
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert bound_token(spec.build({"model": str(tmp_path), "auth": "none"})) is None
    assert bound_token(spec.build({"model": str(tmp_path), "auth": "auto"})) is None  # built here, nothing asked
    assert bound_token(spec.build({"model": str(tmp_path), "auth_token": "abc"})) == "abc"
    with pytest.raises(DistillError, match="auth: none, but auth_token sets a token"):
        spec.build({"model": str(tmp_path), "auth": "none", "auth_token": "abc"})
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    assert bound_token(spec.build({"model": str(tmp_path), "auth": "auto"})) == "s3cret"
    with pytest.raises(DistillError, match=f"auth: none, but \\${TOKEN_ENV} where the app is built sets a token"):
        spec.build({"model": str(tmp_path), "auth": "none"})
    with pytest.raises(ValueError, match="auth"):
        spec.build({"model": str(tmp_path), "auth": "bearer"})


@pytest.mark.slow
def test_auto_without_a_token_refuses_to_start_where_a_config_is_built(ray_local, tmp_path):
    """A config file's apps are built in a Ray task (see tests/cluster/test_local_cluster.py for the real
    `serve run --address`): there `auth: auto` cannot know what the shell that ran `serve run` held."""
    spec = load_app_spec(ROOT / "deploy/teacher.yaml")

    @ray_local.remote(num_cpus=0)
    def build(args):  # refers to nothing of this test module, which a Ray worker cannot import
        return spec.build(args)._bound_deployment.init_args[1]

    with pytest.raises(DistillError, match="auth: auto .*, and no token where the app is built: a Serve config's apps "
                                           "are built on the Ray cluster"):
        ray_local.get(build.remote({"model": str(tmp_path), "auth": "auto"}))
    assert ray_local.get(build.remote({"model": str(tmp_path), "auth": "auto", "auth_token": "abc"})) == "abc"
    assert ray_local.get(build.remote({"model": str(tmp_path), "auth": "none"})) is None


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
