"""Where a run's actors may go, and where they went.

    check_fits({"CPU": 1, "rollout": 1}, "a rollout worker (rollout.*, cluster.rollout_resources)")
    check_bundles_fit([{"CPU": 1, "trainer": 1}] * 2, "PACK", "the trainer ranks")
    report = placement_report({"trainer": trainer.ranks, "rollout": rollout.workers}, requests)
    write_placement(out_dir, report); print(format_placement(report))

Ray waits forever for resources no node has (it expects an autoscaler to add such a node), so
a run checks its requests against the nodes that exist before it creates an actor and fails
with one line instead. `cluster.check_resources=false` turns that off for autoscaling clusters
whose nodes start on demand.
"""

from __future__ import annotations

import json
from pathlib import Path

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


def actor_node_id(handle) -> str:
    """The id of the node an (already started) actor runs on, from the GCS actor table."""
    from ray._private import state  # the actor table: the one place Ray records where an actor lives

    return state.actors(handle._actor_id.hex())["Address"]["NodeID"]


def placement_report(groups: dict[str, list], requests: dict[str, dict[str, float]]) -> dict:
    """Where each actor of each group landed: {"nodes": [...], group: [{index, node_id, node_ip,
    node_labels, resources}]}; `requests[group]` is what each actor of the group asked for."""
    nodes = {n["node_id"]: n for n in alive_nodes()}
    report: dict = {"nodes": list(nodes.values())}
    for group, handles in groups.items():
        rows = []
        for i, handle in enumerate(handles):
            node = nodes.get(actor_node_id(handle), {"node_id": "?", "node_ip": "?", "labels": {}})
            rows.append({"index": i, "node_id": node["node_id"], "node_ip": node["node_ip"],
                         "node_labels": node["labels"], "resources": requests[group]})
        report[group] = rows
    return report


def write_placement(out_dir: str | Path, report: dict) -> Path:
    path = Path(out_dir) / "placement.json"
    path.write_text(json.dumps(report, indent=2))
    return path


def format_placement(report: dict) -> str:
    """One line per actor: group, index, node (id prefix, ip, role label) and resources."""
    lines = ["[placement] group    #  node      ip               role      resources"]
    for group, rows in report.items():
        if group == "nodes":
            continue
        for r in rows:
            role = r["node_labels"].get("role", "-")
            lines.append(f"[placement] {group:<8} {r['index']:<2} {r['node_id'][:8]:<9} {r['node_ip']:<16} {role:<9} {r['resources']}")
    return "\n".join(lines)
