"""What an actor asks Ray for, and whether the cluster can ever hold it.

    check_fits({"CPU": 1, "rollout": 1}, "a rollout worker (rollout.*, cluster.rollout_resources)")
    check_bundles_fit([{"CPU": 1, "trainer": 1}] * 2, "PACK", "the trainer ranks")

Ray waits forever for resources no node has (it expects an autoscaler to add such a node), so
a run checks its requests against the nodes that exist before it creates an actor and fails
with one line instead. `cluster.check_resources=false` turns that off for autoscaling clusters
whose nodes start on demand. Where the actors then went: `pipeline/placement.py`.
"""

from __future__ import annotations

from distill_ray.errors import DistillError

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def actor_request(num_cpus: float, num_gpus: float, resources: dict[str, float] | None) -> dict[str, float]:
    """The Ray resources one actor asks for, as one dict (zero amounts left out)."""
    request = {"CPU": num_cpus, "GPU": num_gpus, **(resources or {})}
    return {k: float(v) for k, v in request.items() if v}


def alive_nodes() -> list[dict]:
    """Every alive node: id, ip, total resources and labels (from the GCS)."""
    import ray

    return [
        {"node_id": n["NodeID"], "node_ip": n["NodeManagerAddress"], "labels": dict(n.get("Labels") or {}),
         "resources": {k: v for k, v in n["Resources"].items() if not k.startswith("node:")}}
        for n in ray.nodes() if n["Alive"]
    ]


def _fits(request: dict[str, float], capacity: dict[str, float]) -> bool:
    return all(capacity.get(k, 0.0) + 1e-9 >= v for k, v in request.items())


def _sum(dicts: list[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0.0) + v
    return total


def _describe(nodes: list[dict]) -> str:
    shown = []
    for n in nodes:
        res = {k: v for k, v in n["resources"].items() if k not in ("memory", "object_store_memory")}
        shown.append(f"{n['node_id'][:8]} {res}")
    return "; ".join(shown) or "no alive nodes"


def unplaceable(bundles: list[dict[str, float]], strategy: str, nodes: list[dict]) -> str | None:
    """Why a placement group of `bundles` under `strategy` can never be placed on `nodes` (their
    total resources, as from `alive_nodes`), or None when it can. One bundle: one actor."""
    if strategy not in STRATEGIES:
        return f"unknown placement strategy {strategy!r} (expected one of {', '.join(STRATEGIES)})"
    where = f"(nodes: {_describe(nodes)})"
    if strategy == "STRICT_PACK":  # every bundle on one node
        total = _sum(bundles)
        if not any(_fits(total, n["resources"]) for n in nodes):
            return f"STRICT_PACK needs {total} on one node, which no node has {where}"
        return None
    if not any(_fits(bundles[0], n["resources"]) for n in nodes):
        return f"asks for {bundles[0]}, which no node of the cluster has {where}"
    if strategy == "STRICT_SPREAD":  # every bundle on its own node
        fitting = sum(1 for n in nodes if _fits(bundles[0], n["resources"]))
        if fitting < len(bundles):
            return f"STRICT_SPREAD needs {len(bundles)} nodes with {bundles[0]} each, the cluster has {fitting} {where}"
        return None
    # PACK / SPREAD are best effort: each bundle must fit somewhere, and all of them in total
    need, capacity = _sum(bundles), _sum([n["resources"] for n in nodes])
    if not _fits(need, capacity):
        return f"{len(bundles)} x {bundles[0]} needs {need}, the whole cluster has {({k: capacity.get(k, 0.0) for k in need})}"
    return None


def check_fits(request: dict[str, float], what: str) -> None:
    """Fail at once when no alive node has `request` in total (Ray would wait for it forever)."""
    check_bundles_fit([request], "PACK", what)


def rollout_actor_request(cfg) -> dict[str, float]:
    """What each rollout-side actor (rollout worker, teacher scorer, seqkd teacher) asks Ray for."""
    rc = cfg.rollout
    return actor_request(rc.num_cpus_per_worker, rc.num_gpus_per_worker, cfg.cluster.rollout_resources)


def check_rollout_actor_fits(cfg, what: str) -> None:
    """Unless `cluster.check_resources` is off: fail at once when no node can hold one rollout-side actor."""
    if cfg.cluster.check_resources:
        check_fits(rollout_actor_request(cfg), f"{what} (rollout.num_*_per_worker, cluster.rollout_resources)")


def check_bundles_fit(bundles: list[dict[str, float]], strategy: str, what: str) -> None:
    """Fail at once when a placement group of `bundles` under `strategy` can never be placed."""
    reason = unplaceable(bundles, strategy, alive_nodes())
    if reason:
        raise DistillError(f"{what}: {reason}")
