"""The cluster files are valid: the launcher YAML passes Ray's own validation, the KubeRay
manifests give the rollout and trainer groups their custom resources, and the run the
RayJob submits is a config distill-ray accepts."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import yaml

from distill_ray.config import load_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
REPO = CLUSTER.parent


def test_launcher_yaml_passes_ray_validation_with_rollout_and_trainer_node_types():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((CLUSTER / "aws.yaml").read_text()))
    validate_config(config)  # Ray's JSON schema for cluster launcher configs
    types = config["available_node_types"]
    assert types["rollout_gpu"]["resources"]["rollout"] >= 1 and "trainer" not in types["rollout_gpu"]["resources"]
    assert types["trainer_gpu"]["resources"]["trainer"] >= 1 and "rollout" not in types["trainer_gpu"]["resources"]
    assert types[config["head_node_type"]]["resources"].get("CPU") == 0  # no actor on the head


def _groups(spec: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in spec["workerGroupSpecs"]}


def _custom_resources(group: dict) -> dict:
    return json.loads(json.loads(group["rayStartParams"]["resources"]))  # KubeRay's quoted JSON string


def _env_names(pod_spec: dict) -> set[str]:
    return {e["name"] for c in pod_spec["containers"] for e in c.get("env", [])}


def test_kuberay_manifests_have_separate_rollout_and_trainer_groups_with_token_auth():
    cluster = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    job = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    assert (cluster["kind"], job["kind"]) == ("RayCluster", "RayJob")
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        groups = _groups(spec)
        assert set(_custom_resources(groups["rollout"])) == {"rollout"}
        assert set(_custom_resources(groups["trainer"])) == {"trainer"}
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        pods = [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in groups.values()]
        assert all({"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= _env_names(p) for p in pods)
    assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= _env_names(job["spec"]["submitterPodTemplate"]["spec"])


def test_rayjob_entrypoint_is_a_valid_run_config():
    job = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["distill-ray", "train"]
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    cfg = load_config(REPO / argv[2], overrides)
    assert cfg.cluster.rollout_resources == {"rollout": 1.0} and cfg.cluster.trainer_resources == {"trainer": 1.0}
    assert cfg.cluster.trainer_placement == "STRICT_PACK"
    # the trainer group's pod holds every rank of this run (STRICT_PACK: one node)
    trainer = _groups(job["spec"]["rayClusterSpec"])["trainer"]
    assert _custom_resources(trainer)["trainer"] >= cfg.trainer.num_workers * cfg.cluster.trainer_resources["trainer"]
