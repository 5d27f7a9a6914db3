"""`cluster/local.sh` end to end: a head, a rollout node and a trainer node on this machine (real
raylets, token authentication on), a training run submitted with `ray job submit`, the run's own
placement report showing rollout workers and trainer ranks on different nodes, and
`serve run --address` of deploy/teacher.yaml on the same cluster (its token rules).

The cluster is started once for the module and stopped in a finalizer (`local.sh down`, which
stops only the processes it started). Tiny models, three steps.
"""

from __future__ import annotations

import json
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
LOCAL_SH = REPO / "cluster" / "local.sh"
RAY = REPO / ".venv" / "bin" / "ray"
BIN = REPO / ".venv" / "bin"
TOKEN_ENV = "DISTILL_RAY_SERVE_TOKEN"
STEPS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def listening_sockets(pids: set[int]) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket the processes `pids` listen on, from /proc."""
    owner = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owner[target[8:-1]] = pid
        except OSError:
            continue
    out = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in owner:  # 0A: LISTEN
                continue
            hex_addr, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_addr)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word is host order
            out.append((socket.inet_ntop(family, raw), int(hex_port, 16), owner[fields[9]]))
    return out


def http_status(host: str, port: int) -> int | None:
    """The status of `GET /` without any token, or None when the server does not speak HTTP/1 (gRPC)."""
    try:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            head = s.recv(64)
    except OSError:
        return None
    return int(head.split()[1]) if head.startswith(b"HTTP/1.") else None


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture(scope="module")
def cluster():
    """cluster/local.sh up in its own short temp dir and ports; down (and checked) at the end."""
    state = tempfile.mkdtemp(prefix="drl-t", dir="/tmp")  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != TOKEN_ENV}
    env.update({"DISTILL_RAY_LOCAL_DIR": state, "DISTILL_RAY_GCS_PORT": str(free_port()),
                "DISTILL_RAY_DASHBOARD_PORT": str(free_port()), "DISTILL_RAY_ROLLOUT_CPUS": "2",
                "DISTILL_RAY_TRAINER_CPUS": "2"})

    def local_sh(*args, timeout=1200):
        return subprocess.run(["nice", "-n", "19", str(LOCAL_SH), *args], env=env, capture_output=True, text=True, timeout=timeout)

    up = local_sh("up")
    info = {"state": Path(state), "env": env, "local_sh": local_sh, "up": up,
            "dashboard": f"http://127.0.0.1:{env['DISTILL_RAY_DASHBOARD_PORT']}",
            "gcs": f"127.0.0.1:{env['DISTILL_RAY_GCS_PORT']}",
            # Serve's HTTP port: the first `serve run` starts Serve with it, later ones keep it
            "http_port": free_port(),
            # what a client needs: the token of this cluster, found through RAY_AUTH_TOKEN_PATH
            "client_env": {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": f"{state}/auth_token"}}
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield info
    finally:
        local_sh("down", timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def submit(cluster, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    runtime_env = json.dumps({"env_vars": {"DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}})
    cmd = ["nice", "-n", "19", str(RAY), "job", "submit", "--address", cluster["dashboard"], "--working-dir", str(workdir),
           "--runtime-env-json", runtime_env, "--", "distill-ray", "train", "run.yaml", *args]
    return subprocess.run(cmd, env=cluster["client_env"], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def job_dir(tiny_local, tmp_path_factory):
    """A working directory holding the run config: sgo (rollout workers + trainer ranks) on the tiny models."""
    workdir = tmp_path_factory.mktemp("job")
    config = {
        "model": {"teacher": tiny_local["teacher"], "student": tiny_local["student"], "tokenizer": tiny_local["tokenizer"]},
        "data": {"train": f"{tiny_local['data']}/train.jsonl", "validation": None, "test": None, "max_rows": 64},
        "method": {"name": "sgo"},
        "trainer": {"num_workers": 2, "num_cpus_per_worker": 1, "batch_size": 8, "max_steps": STEPS, "warmup_steps": 0},
        "rollout": {"num_workers": 2, "num_cpus_per_worker": 1, "max_new_tokens": 16},
        # send each kind of actor to its own node kind (resources local.sh gives those nodes)
        "cluster": {"rollout_resources": {"rollout": 1}, "trainer_resources": {"trainer": 1}},
        "logging": {"tensorboard": False},
    }
    (workdir / "run.yaml").write_text(yaml.safe_dump(config))
    return workdir


def test_local_sh_starts_a_head_and_separate_rollout_and_trainer_nodes(cluster):
    assert "3 nodes" in cluster["up"].stdout, cluster["up"].stdout
    status = cluster["local_sh"]("status")
    assert status.returncode == 0, status.stdout + status.stderr
    for node in ("head", "rollout-0", "trainer-0"):
        assert f"{node}: running" in status.stdout, status.stdout
    # `ray status` of this cluster: both custom resources, 2 each (`up` waits until the
    # autoscaler's view, which lags registration by a few seconds, lists both)
    assert "0.0/2.0 rollout" in status.stdout and "0.0/2.0 trainer" in status.stdout, status.stdout + status.stderr
    again = cluster["local_sh"]("up")
    assert again.returncode != 0 and "already running" in again.stderr


def test_the_cluster_refuses_clients_without_its_token(cluster):
    wrong = {**cluster["client_env"], "RAY_AUTH_TOKEN": "0" * 64}  # RAY_AUTH_TOKEN takes precedence over the file
    res = subprocess.run([str(RAY), "job", "list", "--address", cluster["dashboard"]], env=wrong,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "authentication token" in (res.stdout + res.stderr).lower()


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def test_beyond_loopback_only_servers_that_check_the_token_listen(cluster):
    """cluster/README.md, "What the cluster exposes": the dashboard (job submission) on loopback only;
    on the machine's network address, where Ray registers the nodes, Ray's gRPC servers, which check
    the token, and HTTP servers that refuse a request without it (401). Ray's two fixed-port
    Prometheus servers of the head (autoscaler and dashboard metrics), which it binds to every
    interface on a multi-node cluster and cannot be moved, are the documented exceptions; the
    nodes' own metrics exporters, which used to answer anyone there, are off."""
    from ray.autoscaler._private.constants import AUTOSCALER_METRIC_PORT
    from ray.dashboard.consts import DASHBOARD_METRIC_PORT

    node_ip = next(line.split()[3] for line in cluster["up"].stdout.splitlines() if line.startswith("nodes registered on"))
    assert node_ip not in LOOPBACK  # what Ray does on Linux, and what `up` now says
    ours = set()
    for pid_file in (cluster["state"] / "pids").glob("*.pid"):
        pid = int(pid_file.read_text())
        ours |= {pid} | descendants(pid)
    sockets = listening_sockets(ours)
    dashboard = int(cluster["env"]["DISTILL_RAY_DASHBOARD_PORT"])
    assert {a for a, p, _ in sockets if p == dashboard} == {"127.0.0.1"}, sockets
    exposed = [(a, p) for a, p, _ in sockets if a not in LOOPBACK]
    assert any(p == int(cluster["env"]["DISTILL_RAY_GCS_PORT"]) for _, p in exposed)  # the GCS: Ray's doing
    answered = {}
    for address, port in exposed:
        if port in (AUTOSCALER_METRIC_PORT, DASHBOARD_METRIC_PORT):
            continue
        status = http_status(node_ip if address in ("0.0.0.0", "::") else address, port)
        if status is not None:
            answered[port] = status
    assert answered and all(s == 401 for s in answered.values()), answered  # the agents' HTTP: token required
    # and Ray's gRPC there (the GCS at the node's address) refuses a wrong token
    wrong = {**cluster["client_env"], "RAY_AUTH_TOKEN": "0" * 64}
    res = subprocess.run([str(RAY), "status", "--address", f"{node_ip}:{cluster['env']['DISTILL_RAY_GCS_PORT']}"],
                         env=wrong, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "token is missing or incorrect" in res.stdout + res.stderr, res.stderr[-2000:]


def test_job_submit_trains_with_rollout_and_trainer_on_different_nodes(cluster, job_dir, tmp_path):
    out = tmp_path / "run"
    res = submit(cluster, job_dir, "--set", f"trainer.output_dir={out}")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "succeeded" in res.stdout + res.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == STEPS
    placement = json.loads((out / "placement.json").read_text())
    nodes = {n["node_id"]: n for n in placement["nodes"]}
    assert len(nodes) == 3 and sorted(n["labels"]["role"] for n in nodes.values()) == ["head", "rollout", "trainer"]
    trainer_nodes = {r["node_id"] for r in placement["trainer"]}
    rollout_nodes = {r["node_id"] for r in placement["rollout"]}
    assert len(placement["trainer"]) == 2 and len(placement["rollout"]) == 2
    assert trainer_nodes.isdisjoint(rollout_nodes), placement
    assert {nodes[n]["labels"]["role"] for n in trainer_nodes} == {"trainer"}
    assert {nodes[n]["labels"]["role"] for n in rollout_nodes} == {"rollout"}
    assert all(r["resources"] == {"CPU": 1.0, "trainer": 1.0} for r in placement["trainer"])
    assert "[placement] rollout" in res.stdout  # the run prints the report too


def test_resources_no_node_has_fail_the_job_in_one_line_instead_of_hanging(cluster, job_dir, tmp_path):
    res = submit(cluster, job_dir, "--set", f"trainer.output_dir={tmp_path / 'run'}", "--set", "cluster.trainer_resources={gpu_node: 1}")
    text = res.stdout + res.stderr
    assert res.returncode != 0
    assert "error: trainer: 2 rank(s)" in text and "which no node of the cluster has" in text, text[-3000:]


def test_rollout_scaling_benchmark_runs_on_the_cluster(cluster, tmp_path):
    out = tmp_path / "scaling.json"
    gcs = f"127.0.0.1:{cluster['env']['DISTILL_RAY_GCS_PORT']}"
    res = subprocess.run(["nice", "-n", "19", str(REPO / ".venv" / "bin" / "python"), str(REPO / "benchmarks" / "rollout_scaling.py"),
                          "--quick", "--address", gcs, "--out", str(out)],
                         env=cluster["client_env"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["workers"] for r in rows] == [1, 2] and all(r["tokens_per_s"] > 0 and r["sequences_per_s"] > 0 for r in rows)


# ---------------------------------------------------------------- `serve run --address` on this cluster
# deploy/teacher.yaml as a user deploys it to a cluster. A config file's apps are built in a task on
# the cluster, which never sees the environment of the shell that ran `serve run`: with
# DISTILL_RAY_SERVE_TOKEN only there, the app must refuse to start (it used to start open). With the
# token where the cluster builds the app (the application's runtime_env), every route but /health
# needs it, and FastAPI's docs routes are not served. The real `serve` CLI, real HTTP on loopback; a
# random tiny teacher (the service only needs its weights). The cluster was started without the token.

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


def test_down_stops_every_process_the_cluster_started(cluster):
    pids = {int(p.read_text()) for p in (cluster["state"] / "pids").glob("*.pid")}
    assert len(pids) == 3
    ours = set(pids)
    for pid in pids:
        ours |= descendants(pid)  # raylets, GCS, dashboard, agents, workers
    bystander = subprocess.Popen(["sleep", "300"])  # not ours to stop
    try:
        down = cluster["local_sh"]("down", timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
        assert [pid for pid in ours if alive(pid)] == []
        assert bystander.poll() is None
    finally:
        bystander.kill()
