"""Serve fixtures: one Serve instance on the session's Ray for the whole tests/serve package.

The apps are the ones in deploy/*.yaml (same import paths, args and deployment options) with
the tiny session models swapped in, one replica each and a quarter of a CPU, so they fit beside
the training run of test_training_endpoint on the session's 4 logical CPUs:

    /teacher   teacher scoring service, torch backend, no auth (`auth: none` over the YAML's `auth: token`)
    /          student, OpenAI API, torch backend, no auth (likewise)
    /secure    the same student as the YAML has it, `auth: token`, the token taken from
               $DISTILL_RAY_SERVE_TOKEN at build time (in this process)
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token-3f9c"
SMALL = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25}}
OPEN = {"auth": "none"}  # the deploy YAMLs require a token; the tests' open apps say so explicitly


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="package")
def serve_url(ray_local):
    """Serve's HTTP proxy on a free loopback port (other people's Serve may hold 8000); shut down after the package."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="package")
def services(serve_url, tiny_local):
    """The teacher, student and token-protected student apps, started together."""
    from ray import serve

    from distill_ray.serve.apps import load_app_spec
    from distill_ray.serve.common import TOKEN_ENV

    teacher = load_app_spec(ROOT / "deploy/teacher.yaml")
    student = load_app_spec(ROOT / "deploy/student.yaml")
    before = os.environ.get(TOKEN_ENV)
    try:
        os.environ.pop(TOKEN_ENV, None)
        targets = [
            serve.RunTarget(teacher.build({"model": tiny_local["teacher"], **OPEN}, SMALL), name="teacher",
                            route_prefix=teacher.route_prefix),
            serve.RunTarget(student.build({"model": tiny_local["student"], **OPEN}, SMALL), name="student",
                            route_prefix=student.route_prefix),
        ]
        assert student.args["auth"] == "token"
        os.environ[TOKEN_ENV] = TOKEN  # read where the app is built: here
        targets.append(serve.RunTarget(student.build({"model": tiny_local["student"]}, SMALL), name="secure",
                                       route_prefix="/secure"))
    finally:
        os.environ.pop(TOKEN_ENV, None)
        if before is not None:
            os.environ[TOKEN_ENV] = before
    serve.run_many(targets)
    return {
        "url": serve_url,
        "teacher": f"{serve_url}/teacher",
        "student": serve_url,
        "secure": f"{serve_url}/secure",
        "token": TOKEN,
        "student_name": student.args["name"],
        "local": tiny_local,
    }
