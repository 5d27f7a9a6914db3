"""`TrainerGroup`: N Ray actors forming one torch.distributed group, each a DeepSpeed ZeRO rank.

    trainer = TrainerGroup(cfg)                      # placement group, N TrainerRank actors, engines built
    metrics = trainer.train_step(batch)              # one optimizer step on a RolloutBatch
    refs = trainer.async_train_step(batch)           # the same, as ObjectRefs (overlap with generation)
    metrics = merge_rank_metrics(ray.get(refs))
    blob = trainer.student_state_safetensors()       # full student weights for the rollout workers
    trainer.save_checkpoint(dir, {"step": 10, ...}); state = trainer.load_checkpoint(dir)
    trainer.export_student("runs/x/student")         # HF directory + tokenizer (transformers, vLLM)
    trainer.shutdown()

How a step's rows are split is plain: `batch.split(num_workers)` gives each rank a contiguous
shard; each rank cuts its shard into `grad_accum` micro-batches and takes one optimizer step.
Every micro-batch's loss is weighted by its share of the whole step's response tokens, so the
step's gradient is the token mean over the global batch, exactly as if one process had seen it
all (tests/trainer checks this against an in-process reference).

The ranks themselves (what each holds, its step, checkpoints): trainer/rank.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from distill_ray.batch import RolloutBatch
from distill_ray.config import Config, to_dict
from distill_ray.errors import DistillError
from distill_ray.fsutil import staging_dir
from distill_ray.trainer.options import RankOptions
from distill_ray.trainer.rank import RankReport, TrainerRank


# ====================================================================== the group


def merge_rank_metrics(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """One step's metrics from every rank's: loss shares and tokens add up, timings take the
    slowest rank (the step waits for it), and what every rank agrees on (lr, grad_norm, step)
    is rank 0's."""
    merged = dict(per_rank[0])
    for key in {k for m in per_rank for k in m}:
        values = [m[key] for m in per_rank if key in m]
        if key == "loss" or key.startswith("loss/") or key == "tokens":
            merged[key] = sum(values)
        elif key.startswith("timing/"):
            merged[key] = max(values)
    merged["tokens_per_s"] = merged["tokens"] / max(merged.get("timing/rank_step", 0.0), 1e-9)
    return merged


class TrainerGroup:
    """The trainer ranks as one object in the driver. Methods block, except `async_*` ones,
    which return ObjectRefs."""

    def __init__(self, cfg: Config, placement_timeout_s: float | None = None, wait: bool = True):
        """Places the ranks and starts building them. With `wait=False` it returns while they build
        (import, process group, engines): build something else meanwhile (the rollout workers), then
        `wait_ready()`; any other call waits for the build too."""
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from distill_ray.resources import actor_request, check_bundles_fit

        tc = cfg.trainer
        self.cfg, self.num_ranks = cfg, tc.num_workers
        self.options = options = RankOptions.from_config(cfg)  # a bad option fails here, in the driver, not in N actors
        bundle = actor_request(tc.num_cpus_per_worker, tc.num_gpus_per_worker, cfg.cluster.trainer_resources)
        self.rank_resources = bundle  # what each rank holds (its placement group bundle)
        strategy = cfg.cluster.trainer_placement  # default PACK: ranks on as few nodes as possible, fastest all-reduces
        if cfg.cluster.check_resources:  # Ray would wait forever for a group no node can hold
            check_bundles_fit([bundle] * self.num_ranks, strategy,
                              f"trainer: {self.num_ranks} rank(s) (trainer.*, cluster.trainer_resources)")
        placement_timeout_s = placement_timeout_s or cfg.cluster.placement_timeout_s
        self._placement = placement_group([dict(bundle) for _ in range(self.num_ranks)], strategy=strategy)
        ready, _ = ray.wait([self._placement.ready()], timeout=placement_timeout_s)
        if not ready:
            ray.util.remove_placement_group(self._placement)
            raise DistillError(
                f"trainer: {self.num_ranks} x {bundle} could not be placed within {placement_timeout_s:.0f}s; "
                f"the cluster has {ray.available_resources()} free (lower trainer.num_workers or the per-rank resources)"
            )
        env = {"TOKENIZERS_PARALLELISM": "false", "LOCAL_RANK": "0"}  # DeepSpeed requires LOCAL_RANK; each rank sees one device
        if tc.num_gpus_per_worker == 0:
            env["DS_ACCELERATOR"] = "cpu"  # otherwise DeepSpeed probes for CUDA and the like
        rank_actor = ray.remote(TrainerRank)
        self.ranks = [
            rank_actor.options(
                num_cpus=tc.num_cpus_per_worker,
                num_gpus=tc.num_gpus_per_worker,
                resources=dict(cfg.cluster.trainer_resources) or None,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self._placement, placement_group_bundle_index=i),
                runtime_env={"env_vars": env},
            ).remote(to_dict(cfg), options, i, self.num_ranks)
            for i in range(self.num_ranks)
        ]
        master = self.ranks[0].master_address.remote()  # an ObjectRef: Ray hands each setup its value
        self._setup = [r.setup.remote(master) for r in self.ranks]
        self._reports: list[RankReport] | None = None
        if wait:
            self.wait_ready()

    def wait_ready(self) -> list[RankReport]:
        """Block until every rank is built (a rank's build error is raised here); the ranks' reports."""
        import ray

        if self._reports is None:
            self._reports = ray.get(self._setup)
        return self._reports

    @property
    def reports(self) -> list[RankReport]:
        return self.wait_ready()

    # ------------------------------------------------------------------ training

    def async_train_step(self, batch: RolloutBatch) -> list:
        """Start one optimizer step on `batch`; returns one ObjectRef per rank (merge with merge_rank_metrics).

        Rows are split into contiguous shards, one per rank; every rank needs at least
        grad_accum rows. Calls made afterwards (weights, checkpoints) queue behind this step on
        every rank, so they see its result.
        """
        need = self.num_ranks * self.cfg.trainer.grad_accum
        if len(batch) < need:
            # checked here, not in the ranks: a rank failing alone would leave the others
            # waiting in a gradient all-reduce
            raise DistillError(
                f"trainer: a step needs at least num_workers * grad_accum = {need} rows, the batch has {len(batch)}"
            )
        shards = batch.split(self.num_ranks)
        global_tokens = batch.num_response_tokens
        return [rank.train_step.remote(shard, global_tokens) for rank, shard in zip(self.ranks, shards)]

    def train_step(self, batch: RolloutBatch) -> dict[str, float]:
        """One optimizer step on `batch`; returns the merged metrics (see merge_rank_metrics)."""
        import ray

        t0 = time.perf_counter()
        metrics = merge_rank_metrics(ray.get(self.async_train_step(batch)))
        metrics["timing/train_step"] = time.perf_counter() - t0  # includes shipping the shards
        return metrics

    # ------------------------------------------------------------------ weights

    def student_state_safetensors(self) -> bytes:
        """The full student (ZeRO-3: gathered) as safetensors bytes, for RolloutWorker.load_weights."""
        import ray

        return ray.get([r.student_state_safetensors.remote() for r in self.ranks])[0]

    def teacher_merged_safetensors(self) -> bytes | None:
        """The OKD-adapted teacher layers (module merged in, HF names) as safetensors bytes; None without okd."""
        import ray

        return ray.get(self.ranks[0].teacher_merged_safetensors.remote())

    def export_student(self, directory: str) -> str:
        """An HF directory (config, safetensors weights, tokenizer) that transformers and vLLM load."""
        import ray

        return ray.get([r.export_student.remote(directory) for r in self.ranks])[0]

    def fingerprints(self) -> list[dict[str, str]]:
        """Each rank's weight hashes (see TrainerRank.fingerprints): equal student hashes mean the ranks agree."""
        import ray

        return ray.get([r.fingerprints.remote() for r in self.ranks])

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, directory: str, client_state: dict) -> None:
        """DeepSpeed states + online module + RNG states + `client_state` (the driver's: data position,
        step, its own RNG), written to `.<name>.tmp` beside `directory`, sealed with MANIFEST.json
        (sizes and SHA-256, `checkpoints.write_manifest`) and renamed when every rank has finished. All ranks must see the same filesystem path (one node, or shared storage)."""
        import ray

        tmp = str(staging_dir(Path(directory)))
        ray.get([r.save_checkpoint.remote(tmp, directory, client_state) for r in self.ranks])

    def load_checkpoint(self, directory: str) -> dict:
        """Restore a checkpoint saved by a group of the same size and ZeRO stage; returns its client_state."""
        import ray

        return ray.get([r.load_checkpoint.remote(directory) for r in self.ranks])[0]

    def shutdown(self) -> None:
        import ray

        for rank in getattr(self, "ranks", []):
            ray.kill(rank)
        self.ranks = []
        if getattr(self, "_placement", None) is not None:
            ray.util.remove_placement_group(self._placement)
            self._placement = None
