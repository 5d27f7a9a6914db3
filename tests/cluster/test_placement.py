"""Placement checks without a cluster: which requests can never be placed, and the config fields."""

from __future__ import annotations

import pytest

from distill_ray.config import load_config
from distill_ray.errors import DistillError
from distill_ray.resources import actor_request, unplaceable

# the layout `cluster/local.sh up` starts: a head without CPUs, a rollout node, a trainer node
NODES = [
    {"node_id": "head0000", "resources": {"memory": 1e9}},
    {"node_id": "rollout0", "resources": {"CPU": 2.0, "rollout": 2.0}},
    {"node_id": "trainer0", "resources": {"CPU": 2.0, "trainer": 2.0}},
]
RANK = {"CPU": 1.0, "trainer": 1.0}


def test_actor_request_merges_cpus_gpus_and_custom_resources_without_zeros():
    assert actor_request(1.0, 0.0, {"trainer": 1}) == {"CPU": 1.0, "trainer": 1.0}
    assert actor_request(2.0, 1.0, None) == {"CPU": 2.0, "GPU": 1.0}


@pytest.mark.parametrize("strategy", ["PACK", "SPREAD", "STRICT_PACK"])
def test_ranks_that_fit_on_the_trainer_node_are_placeable(strategy):
    assert unplaceable([RANK, RANK], strategy, NODES) is None


@pytest.mark.parametrize(
    "bundles, strategy, says",
    [
        ([{"CPU": 1.0, "GPU": 1.0}], "PACK", "no node of the cluster has"),  # no GPU anywhere
        ([{"CPU": 1.0, "rollout": 1.0, "trainer": 1.0}], "PACK", "no node of the cluster has"),  # on no single node
        ([RANK] * 3, "SPREAD", "the whole cluster has {'CPU': 4.0, 'trainer': 2.0}"),
        ([RANK] * 2, "STRICT_SPREAD", "needs 2 nodes"),  # one trainer node only
        ([{"CPU": 1.0}] * 3, "STRICT_PACK", "on one node"),
        ([RANK], "BALANCED", "unknown placement strategy"),
    ],
)
def test_requests_no_node_can_hold_are_named(bundles, strategy, says):
    reason = unplaceable(bundles, strategy, NODES)
    assert reason is not None and says in reason, reason


def test_placement_fields_are_validated_at_load(tmp_path):
    cfg = load_config(None, ["cluster.trainer_placement=STRICT_SPREAD", "cluster.trainer_resources={trainer: 1}"])
    assert cfg.cluster.trainer_placement == "STRICT_SPREAD" and cfg.cluster.trainer_resources == {"trainer": 1.0}
    with pytest.raises(DistillError, match=r"cluster.trainer_placement: expected one of 'PACK'"):
        load_config(None, ["cluster.trainer_placement=pack"])
    with pytest.raises(DistillError, match="cluster.placement_timeout_s: must be positive"):
        load_config(None, ["cluster.placement_timeout_s=0"])
