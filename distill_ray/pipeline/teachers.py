"""Teacher sources: where a run's teacher top-k log-probabilities come from when the trainer
ranks hold no teacher (`trainer.teacher_mode=remote`). One small interface, two sources:

    TeacherScorers          TeacherScorer Ray actors of this run (rollout/workers.py), round robin
    TeacherEndpointClient   a running teacher scoring service over HTTP (serve/client.py,
                            `model.teacher_endpoint`); Serve owns its replicas, so it places no actors

`open_teacher_source(cfg)` picks the one the config names. The driver calls `score` on every
batch, lists `actors` in the placement report and calls `shutdown` at the end.
"""

from __future__ import annotations

from typing import Protocol

from distill_ray.batch import RolloutBatch
from distill_ray.config import Config
from distill_ray.resources import check_rollout_actor_fits


class TeacherSource(Protocol):
    actors: list  # the Ray actors it placed, for the run's placement report ([] when it placed none)

    def score(self, batch: RolloutBatch) -> RolloutBatch:
        """`batch` with the teacher's top-`loss.topk` ids and log-probabilities at every response position."""

    def shutdown(self) -> None:
        """Release what it holds (actors, connections)."""


class TeacherScorers:
    """TeacherScorer actors that attach the teacher's top-k log-probabilities to every batch,
    round robin, so the trainer ranks hold no teacher."""

    def __init__(self, cfg: Config):
        import ray

        from distill_ray.rollout.workers import EngineConfig, create_teacher_scorer

        self.k = cfg.loss.topk
        engine = EngineConfig.of_run(cfg)
        check_rollout_actor_fits(cfg, "a teacher scorer")
        self.actors = [
            create_teacher_scorer(cfg.model.teacher, engine=engine, num_cpus=cfg.rollout.num_cpus_per_worker,
                                  num_gpus=cfg.rollout.num_gpus_per_worker, resources=cfg.cluster.rollout_resources or None)
            for _ in range(cfg.trainer.num_teacher_scorers)
        ]
        ray.get([a.ready.remote() for a in self.actors])
        self._turn = 0

    def score(self, batch: RolloutBatch) -> RolloutBatch:
        import ray

        actor = self.actors[self._turn % len(self.actors)]
        self._turn += 1
        return ray.get(actor.score_batch.remote(batch, self.k))

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)


def open_teacher_source(cfg: Config) -> TeacherSource:
    """The teacher service at `model.teacher_endpoint` when set, else this run's TeacherScorer actors."""
    if cfg.model.teacher_endpoint:
        from distill_ray.serve.client import TeacherEndpointClient

        return TeacherEndpointClient.from_config(cfg)
    return TeacherScorers(cfg)
