"""Rollout workers feeding the trainer through a bounded Ray queue, with bounded staleness.

    driver --prompts--> RolloutWorker.generate --RolloutBatch--> ray.util.queue.Queue --> driver/trainer

Staleness is bounded by construction: at most `ahead` generation requests are in flight
beyond the one being consumed, and weight updates are submitted to every worker before any
later request, so a batch consumed at trainer version V was generated with weights of version
>= V - ahead - (sync_every - 1) (`RolloutConfig.max_staleness`). Every batch is checked on
receipt all the same, and one that is too old is dropped and its prompts generated again.
"""

from __future__ import annotations

import itertools
import random
import time

import ray
from ray.util.queue import Queue

from distill_ray.batch import RolloutBatch
from distill_ray.config import Config
from distill_ray.errors import DistillError
from distill_ray.pipeline.sources import PromptStream
from distill_ray.rollout.sampling import SamplingConfig
from distill_ray.rollout.workers import EngineConfig, SwitchParams, create_rollout_worker


@ray.remote(num_cpus=0)
def _deliver(queue: Queue, batch: RolloutBatch) -> None:
    """Move a finished batch into the queue (Ray resolves `batch` once the worker is done)."""
    queue.put(batch)


def requests_ahead(cfg: Config) -> int:
    """How many generation requests may run ahead of the trainer for the staleness bound to hold."""
    ahead = cfg.rollout.max_staleness - (cfg.rollout.sync_every - 1)
    if ahead < 0:
        raise DistillError(
            f"rollout.max_staleness={cfg.rollout.max_staleness} cannot hold with rollout.sync_every="
            f"{cfg.rollout.sync_every}: weights reach the workers only every sync_every steps"
        )
    return ahead


class RolloutPipeline:
    """The rollout side of a run: N `RolloutWorker` actors, a bounded queue, the request schedule."""

    def __init__(self, cfg: Config, stream: PromptStream, pad_id: int, eos_id: int, switch: bool):
        self.cfg, self.stream, self.switch = cfg, stream, switch
        self.ahead = requests_ahead(cfg)
        self.queue = Queue(maxsize=max(cfg.rollout.queue_size, self.ahead + 1))
        engine = EngineConfig(
            backend=cfg.rollout.backend,
            dtype=cfg.model.dtype,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
            torch_threads=max(1, int(cfg.rollout.num_cpus_per_worker)),
        )
        switch_params = SwitchParams(
            tau0=cfg.method.switch.tau0, decay=cfg.method.switch.decay, draft_tokens=cfg.method.switch.draft_tokens
        )
        self.workers = [
            create_rollout_worker(
                cfg.model.student,
                engine=engine,
                teacher=cfg.model.teacher if switch else None,
                switch=switch_params if switch else None,
                num_cpus=cfg.rollout.num_cpus_per_worker,
                num_gpus=cfg.rollout.num_gpus_per_worker,
                resources=cfg.cluster.rollout_resources or None,
            )
            for _ in range(cfg.rollout.num_workers)
        ]
        self.placement = ray.get([w.ready.remote() for w in self.workers])
        self._next_worker = itertools.cycle(range(len(self.workers)))
        self._request_id = 0
        self.in_flight = 0
        self.dropped = 0
        self._pending_sync: list = []

    def _issue(self) -> None:
        rows = self.stream.next_rows()
        worker = self.workers[next(self._next_worker)]
        sampling = SamplingConfig(
            temperature=self.cfg.rollout.temperature,
            top_p=self.cfg.rollout.top_p,
            max_new_tokens=self.cfg.rollout.max_new_tokens,
            samples_per_prompt=self.cfg.rollout.samples_per_prompt,
            seed=self.cfg.trainer.seed * 1_000_003 + self._request_id,  # fresh, reproducible draws per request
        )
        prompts, index = [r.prompt_ids for r in rows], [r.index for r in rows]
        generate = worker.generate_switch if self.switch else worker.generate
        _deliver.remote(self.queue, generate.remote(prompts, index, sampling))
        self._request_id += 1
        self.in_flight += 1

    def next_batch(self, version: int) -> tuple[RolloutBatch, dict[str, float]]:
        """The next generated batch for the trainer at `version`; blocks until one is ready."""
        t0 = time.perf_counter()
        while True:
            while self.in_flight < self.ahead + 1:
                self._issue()
            depth = self.queue.qsize()
            batch: RolloutBatch = self.queue.get()
            self.in_flight -= 1
            staleness = version - batch.policy_version
            if staleness <= self.cfg.rollout.max_staleness:
                break
            self.dropped += 1  # too old: generate these prompts again
        wait = time.perf_counter() - t0
        return batch, {
            "queue/depth": float(depth),
            "staleness": float(staleness),
            "staleness/dropped": float(self.dropped),
            "timing/rollout_wait": wait,
        }

    def sync_weights(self, blob: bytes, version: int) -> float:
        """Queue new student weights on every worker without waiting: a worker still generating
        finishes its batch first, and every later request sees the new weights (an actor runs
        one caller's calls in order). Returns the seconds spent here (serialising the blob)."""
        t0 = time.perf_counter()
        ref = ray.put(blob)
        self._pending_sync = [w.load_weights.remote(ref, version) for w in self.workers]
        return time.perf_counter() - t0

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
        self.queue.shutdown()


def lambda_on_rng(seed: int) -> random.Random:
    """The RNG deciding, per step, whether sgo trains on student outputs or on dataset rows."""
    return random.Random(seed * 7919 + 1)
