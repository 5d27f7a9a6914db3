"""`serve run --address` of deploy/teacher.yaml against a running cluster (`cluster/local.sh`: a head
and a worker node on this machine, Ray's token authentication on), as a user deploys to a cluster.

A config file's apps are built in a task on the cluster, which never sees the environment of the
shell that ran `serve run`: with DISTILL_RAY_SERVE_TOKEN only there, the app must refuse to start
(it used to start open). With the token where the cluster builds the app (the application's
runtime_env), every route but /health needs it, and FastAPI's docs routes are not served.

Real raylets, the real `serve` CLI, real HTTP on loopback; a random tiny teacher (the service only
needs its weights). The cluster is started once for the module and stopped by `local.sh down`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
TOKEN_ENV = "DISTILL_RAY_SERVE_TOKEN"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """local.sh up (head + one 2-CPU node) in its own short temp dir and ports, started without
    DISTILL_RAY_SERVE_TOKEN; down at the end."""
    state = tempfile.mkdtemp(prefix="drl-s", dir="/tmp")  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != TOKEN_ENV}
    env.update({"DISTILL_RAY_LOCAL_DIR": state, "DISTILL_RAY_GCS_PORT": str(free_port()),
                "DISTILL_RAY_DASHBOARD_PORT": str(free_port()), "DISTILL_RAY_ROLLOUT_NODES": "1",
                "DISTILL_RAY_ROLLOUT_CPUS": "2", "DISTILL_RAY_TRAINER_NODES": "0"})

    def local_sh(command: str, timeout: int = 900):
        return subprocess.run(["nice", "-n", "19", str(REPO / "cluster" / "local.sh"), command], env=env,
                              capture_output=True, text=True, timeout=timeout)

    up = local_sh("up")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield {"gcs": f"127.0.0.1:{env['DISTILL_RAY_GCS_PORT']}",
               "dashboard": f"http://127.0.0.1:{env['DISTILL_RAY_DASHBOARD_PORT']}",
               # Serve's HTTP port: the first `serve run` starts Serve with it, later ones keep it
               "http_port": free_port(),
               # what `cluster/local.sh env` tells a client: this cluster's Ray token
               "client_env": {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": f"{state}/auth_token"}}
    finally:
        local_sh("down", timeout=120)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def teacher_model(tmp_path_factory) -> str:
    from distill_ray.models.build import ModelShape, build_causal_lm

    path = tmp_path_factory.mktemp("teacher") / "model"
    build_causal_lm("llama", ModelShape(32, 1, 1, 64, max_position_embeddings=128), 100,
                    bos_token_id=1, eos_token_id=2, pad_token_id=0).save_pretrained(path)
    return str(path)


def teacher_config(model: str, port: int, **app_fields) -> dict:
    """deploy/teacher.yaml as shipped (its auth included), with the model, a free HTTP port and one small replica."""
    config = yaml.safe_load((REPO / "deploy" / "teacher.yaml").read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"]["model"] = model
    app["deployments"][0].update({"ray_actor_options": {"num_cpus": 0.5},
                                  "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}})
    app.update(app_fields)
    return config


def serve_run(cluster, config: dict, path: Path, **env: str) -> float:
    """`serve run --address <the cluster> --non-blocking CONFIG` from a shell with `env` added; when it started."""
    path.write_text(yaml.safe_dump(config))
    started = time.time()
    res = subprocess.run(["nice", "-n", "10", str(BIN / "serve"), "run", "--address", cluster["gcs"], "--non-blocking",
                          str(path)], env={**cluster["client_env"], **env}, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return started


def settled_status(cluster, app: str, since: float, timeout_s: float = 900) -> dict:
    """`serve status` of `app` deployed after `since`, once it is RUNNING or DEPLOY_FAILED (Serve tries
    a failing build four times)."""
    deadline = time.monotonic() + timeout_s
    while True:
        res = subprocess.run([str(BIN / "serve"), "status", "--address", cluster["dashboard"]], env=cluster["client_env"],
                             capture_output=True, text=True, timeout=120)
        status = (yaml.safe_load(res.stdout) or {}).get("applications", {}).get(app, {}) if res.returncode == 0 else {}
        settled = status.get("status") in ("RUNNING", "DEPLOY_FAILED") and status.get("last_deployed_time_s", 0) >= since
        if settled or time.monotonic() > deadline:
            return status
        time.sleep(5)


def test_a_token_only_in_the_shell_of_serve_run_address_makes_the_app_refuse_to_start(cluster, teacher_model,
                                                                                      tmp_path):
    port = cluster["http_port"]
    since = serve_run(cluster, teacher_config(teacher_model, port), tmp_path / "teacher.yaml",
                      **{TOKEN_ENV: "only-in-my-shell"})
    status = settled_status(cluster, "teacher", since)
    # the failure this guards against: the app up and answering without a token
    r = httpx.get(f"http://127.0.0.1:{port}/teacher/info", timeout=30)
    assert r.status_code != 200, f"answered without a token: {r.text[:200]}"
    assert status.get("status") == "DEPLOY_FAILED", status
    last = status["message"].strip().splitlines()[-1]
    assert last.startswith("distill_ray.errors.DistillError: TeacherScoringService: auth: token, and no token where "
                           "the app is built: a Serve config's apps are built on the Ray cluster"), last
    assert "runtime_env: {env_vars: {DISTILL_RAY_SERVE_TOKEN: ...}}" in last


def test_with_the_token_where_the_cluster_builds_the_app_every_route_but_health_needs_it(cluster, teacher_model,
                                                                                         tmp_path):
    port = cluster["http_port"]
    token = "cluster-side-token-7d1e"
    config = teacher_config(teacher_model, port, runtime_env={"env_vars": {TOKEN_ENV: token}})
    since = serve_run(cluster, config, tmp_path / "teacher.yaml")  # replaces the failed app of the test before
    status = settled_status(cluster, "teacher", since)
    assert status.get("status") == "RUNNING", status
    url, auth = f"http://127.0.0.1:{port}/teacher", {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200  # liveness needs no token
    for path in ("/info", "/docs", "/openapi.json", "/redoc"):
        r = httpx.get(f"{url}{path}", timeout=30)
        assert r.status_code in (401, 404), f"{path} answered {r.status_code} without a token"
    assert httpx.get(f"{url}/info", timeout=30).status_code == 401
    assert httpx.get(f"{url}/info", headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
    assert httpx.get(f"{url}/info", headers=auth, timeout=30).json()["vocab_size"] == 100
    body = {"sequences": [[1, 57, 9, 31, 2]], "response_start": 3, "top_k": 4}
    assert httpx.post(f"{url}/score", json=body, timeout=60).status_code == 401
    r = httpx.post(f"{url}/score", json=body, headers=auth, timeout=60)
    assert r.status_code == 200 and r.json()["response_lengths"] == [2], r.text[:300]
    for path in ("/docs", "/openapi.json", "/redoc"):  # not served at all
        assert httpx.get(f"{url}{path}", headers=auth, timeout=30).status_code == 404
