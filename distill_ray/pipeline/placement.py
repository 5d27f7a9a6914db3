"""Where a run's actors went (what they may ask for, and whether it fits: `distill_ray/resources.py`).

    report = placement_report({"trainer": trainer.ranks, "rollout": rollout.workers}, requests)
    write_placement(out_dir, report); print(format_placement(report))
"""

from __future__ import annotations

import json
from pathlib import Path

from distill_ray.resources import alive_nodes


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
