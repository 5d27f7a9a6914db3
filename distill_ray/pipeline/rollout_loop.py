"""Rollout workers feeding the trainer through a bounded Ray queue, with bounded staleness.

    driver --prompts--> RolloutWorker.generate_into --RolloutBatch--> ray.util.queue.Queue --> driver/trainer

Staleness is bounded by construction: at most `ahead` generation requests are in flight
beyond the one being consumed, and weight updates are submitted to every worker before any
later request, so a batch consumed at trainer version V was generated with weights of version
>= V - ahead - (sync_every - 1) (`RolloutConfig.max_staleness`). Every batch is checked on
receipt all the same, and one that is too old is dropped and the same prompts generated again.

No prompt is lost: a request whose worker died is sent again, with the same prompts and the
same sampling seed, to a replacement worker that first loads the latest weights.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import time
from dataclasses import dataclass

import ray
from ray.util.queue import Empty, Queue

from distill_ray.batch import RolloutBatch
from distill_ray.config import Config, RolloutAutoscaleConfig
from distill_ray.data.encoding import Encoded
from distill_ray.errors import DistillError
from distill_ray.resources import check_rollout_actor_fits
from distill_ray.pipeline.sources import DataPosition, PromptStream
from distill_ray.rollout.sampling import SamplingConfig
from distill_ray.rollout.workers import EngineConfig, SwitchParams, create_rollout_worker, create_teacher_scorer


@dataclass
class GenerationFailed:
    """A request whose worker raised or died (seen through the ObjectRef its call returned)."""

    request_id: int
    error: str


@dataclass
class _Request:
    rows: list[Encoded]
    position: DataPosition  # the prompt stream's position before these rows were taken
    seed: int
    worker: int  # index into RolloutPipeline.workers
    attempts: int = 1
    ref: ray.ObjectRef | None = None  # the worker call's result: its request id, or its error


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

    MAX_ATTEMPTS = 3  # a request that fails this often stops the run (a bug, not a lost node)

    def __init__(self, cfg: Config, stream: PromptStream, pad_id: int, eos_id: int, switch: bool, wait: bool = True):
        """Starts the workers; with `wait=False` it returns while they build (see `wait_ready`)."""
        self.cfg, self.stream, self.switch = cfg, stream, switch
        self.ahead = requests_ahead(cfg)
        self.queue = Queue(maxsize=max(cfg.rollout.queue_size, self.ahead + 1), actor_options={"num_cpus": 0})
        self._engine = EngineConfig.of_run(cfg, eos_id, pad_id)
        self._switch_params = SwitchParams(
            tau0=cfg.method.switch.tau0, decay=cfg.method.switch.decay, draft_tokens=cfg.method.switch.draft_tokens,
            adaptive=cfg.method.switch.adaptive_draft, topk=cfg.method.switch.topk,
        )
        rc = cfg.rollout
        check_rollout_actor_fits(cfg, "a rollout worker")  # Ray would wait forever for a worker no node can hold
        # SWITCH on vLLM: the student drafts in each worker, one vLLM teacher scorer checks the drafts'
        # top-k (rollout/switch_topk.py); on torch each worker holds the teacher itself (exact SWITCH)
        self.teacher_scorers = []
        if switch and rc.backend == "vllm":
            check_rollout_actor_fits(cfg, "SWITCH's teacher scorer")
            self.teacher_scorers = [create_teacher_scorer(
                cfg.model.teacher, engine=self._engine, num_cpus=rc.num_cpus_per_worker,
                num_gpus=rc.num_gpus_per_worker, resources=cfg.cluster.rollout_resources or None,
            )]
        # rollout.fault_exit_on_call (TEST ONLY) arms worker 0 alone; replacements never carry it
        self.workers = [self._new_worker(cfg.rollout.fault_exit_on_call if i == 0 else 0) for i in range(cfg.rollout.num_workers)]
        self._ready = [w.ready.remote() for w in self.workers]
        self._scorers_ready = [t.ready.remote() for t in self.teacher_scorers]
        self.scorer_placement: list = []  # what each teacher scorer runs (after wait_ready)
        self._placement: list | None = None
        self._next_worker = itertools.cycle(range(len(self.workers)))
        self._requests: dict[int, _Request] = {}  # in flight, by id
        self._next_id = 0
        self.dropped = 0  # batches too stale to train on (their prompts were generated again)
        self.restarts = 0  # workers replaced after dying
        self.duplicates = 0  # batches dropped because their request had already been answered
        self._weights: tuple[ray.ObjectRef, int] | None = None  # latest student weights, for replacements
        self._teacher_weights: ray.ObjectRef | None = None  # latest OKD-adapted teacher layers
        # requests beyond ahead + 1 are never in flight, so more workers than that would idle
        self.autoscaler = QueueDepthAutoscaler(rc.autoscale, busy_cap=self.ahead + 1) if rc.autoscale.enabled else None
        self._retiring: int | None = None  # index of the worker being removed (the last one)
        if wait:
            self.wait_ready()

    def wait_ready(self) -> list:
        """Block until every worker has built its engine (a build error is raised here); where each one runs."""
        if self._placement is None:
            self.scorer_placement = ray.get(self._scorers_ready)
            self._placement = ray.get(self._ready)
        return self._placement

    @property
    def placement(self) -> list:
        return self.wait_ready()

    def _new_worker(self, exit_on_call: int = 0):
        rc = self.cfg.rollout
        return create_rollout_worker(
            self.cfg.model.student,
            engine=self._engine,
            teacher=self.cfg.model.teacher if self.switch and not self.teacher_scorers else None,
            teacher_scorer=self.teacher_scorers[0] if self.teacher_scorers else None,
            switch=self._switch_params if self.switch else None,
            num_cpus=rc.num_cpus_per_worker,
            num_gpus=rc.num_gpus_per_worker,
            resources=self.cfg.cluster.rollout_resources or None,
            exit_on_call=exit_on_call,
        )

    @property
    def in_flight(self) -> int:
        return len(self._requests)

    def _submit(self, request_id: int) -> None:
        req = self._requests[request_id]
        rc = self.cfg.rollout
        sampling = SamplingConfig(
            temperature=rc.temperature, top_p=rc.top_p, max_new_tokens=rc.max_new_tokens,
            samples_per_prompt=rc.samples_per_prompt, seed=req.seed,
        )
        # the worker puts the batch into the queue itself: one hop, and FIFO per worker
        req.ref = self.workers[req.worker].generate_into.remote(
            self.queue, request_id, [r.prompt_ids for r in req.rows], [r.index for r in req.rows], sampling, self.switch
        )

    def _failures(self) -> list[GenerationFailed]:
        """Requests whose worker call ended in an error (raised, or the actor died)."""
        refs = [r.ref for r in self._requests.values()]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        failed = []
        for request_id, req in list(self._requests.items()):
            if req.ref in done:
                try:
                    ray.get(req.ref)
                except Exception as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    failed.append(GenerationFailed(request_id, f"{type(exc).__name__}: {first}"))
        return failed

    def _issue(self, again: _Request | None = None) -> None:
        request_id = self._next_id
        self._next_id += 1
        position = again.position if again else dataclasses.replace(self.stream.position)
        self._requests[request_id] = _Request(
            rows=again.rows if again else self.stream.next_rows(),
            position=position,
            # keyed by where the prompts sit in the stream, not by request count, so a resumed run
            # draws the same samples for the same prompts as an uninterrupted one
            seed=(self.cfg.trainer.seed * 1_000_003 + position.epoch * 10_007) * 100_003 + position.offset,
            worker=next(self._next_worker),
        )
        self._submit(request_id)

    def _recover(self, failure: GenerationFailed) -> None:
        """The request's worker failed: replace it if it died, then send the same request again."""
        req = self._requests[failure.request_id]
        if req.attempts >= self.MAX_ATTEMPTS:
            raise DistillError(f"rollout: request {failure.request_id} failed {req.attempts} times; last: {failure.error}")
        print(f"[rollout] request {failure.request_id} failed on worker {req.worker}: {failure.error}", flush=True)
        worker = self.workers[req.worker]
        try:
            ray.get(worker.ready.remote(), timeout=60)
        except Exception:
            print(f"[rollout] worker {req.worker} died ({failure.error}); starting a replacement", flush=True)
            replacement = self._new_worker()
            if self._weights is not None:
                ray.get(replacement.load_weights.remote(*self._weights))
            if self._teacher_weights is not None:
                ray.get(replacement.load_teacher_weights.remote(self._teacher_weights))
            self.workers[req.worker] = replacement
            self.restarts += 1
        req.attempts += 1
        self._submit(failure.request_id)

    def next_batch(self, version: int) -> tuple[RolloutBatch, dict[str, float]]:
        """The next generated batch for the trainer at `version`; blocks until one is ready."""
        t0 = time.perf_counter()
        while True:
            while self.in_flight < self.ahead + 1:
                self._issue()
            depth = self.queue.qsize()
            try:
                item = self.queue.get(timeout=1.0)
            except Empty:
                for failure in self._failures():
                    self._recover(failure)
                continue
            batch: RolloutBatch = item
            request = self._requests.pop(batch.request_id, None)
            if request is None:
                # a worker that queued this batch and then died had its request sent again, and the
                # copy already arrived: train on one of the two only
                self.duplicates += 1
                continue
            staleness = version - batch.policy_version
            if staleness <= self.cfg.rollout.max_staleness:
                break
            self.dropped += 1  # too old: the same prompts are generated again, with current weights
            self._issue(again=request)
        wait = time.perf_counter() - t0
        if self.autoscaler is not None:
            self._resize(self.autoscaler.decide(self.active_workers, depth, wait))
        return batch, {
            "queue/depth": float(depth),
            "rollout/workers": float(self.active_workers),
            "staleness": float(staleness),
            "staleness/dropped": float(self.dropped),
            "rollout/restarts": float(self.restarts),
            "timing/rollout_wait": wait,
        }

    def _resize(self, delta: int) -> None:
        """Add a worker (it loads the latest weights before its first request: an actor runs one
        caller's calls in order), or retire the newest: it gets no new request and is removed
        once the ones it is generating have arrived."""
        if delta > 0 and self._retiring is not None:
            self._retiring = None  # still alive: take it back instead of starting another
        elif delta > 0:
            worker = self._new_worker()
            if self._weights is not None:
                worker.load_weights.remote(*self._weights)
            if self._teacher_weights is not None:
                worker.load_teacher_weights.remote(self._teacher_weights)
            self.workers.append(worker)
        elif delta < 0 and self._retiring is None:
            self._retiring = len(self.workers) - 1
        if self._retiring is not None and not any(r.worker == self._retiring for r in self._requests.values()):
            ray.kill(self.workers.pop())
            self._retiring = None
        if delta:
            self._next_worker = itertools.cycle(range(self.active_workers))

    @property
    def active_workers(self) -> int:
        """Workers that get new requests (a retiring one does not)."""
        return len(self.workers) - (self._retiring is not None)

    def resume_position(self) -> DataPosition:
        """Where a resumed run must start the prompt stream: before the oldest prompt not yet
        trained on (in-flight requests are generated again after a resume)."""
        if not self._requests:
            return dataclasses.replace(self.stream.position)
        oldest = min(self._requests.values(), key=lambda r: (r.position.epoch, r.position.offset))
        return dataclasses.replace(oldest.position)

    def sync_weights(self, blob: bytes, version: int, teacher_blob: bytes | None = None) -> float:
        """Queue new student weights (and OKD-adapted teacher layers) on every worker without
        waiting: a worker still generating finishes its batch first, and every later request
        sees the new weights (an actor runs one caller's calls in order). Returns the seconds
        spent here (putting the blobs in the object store)."""
        t0 = time.perf_counter()
        ref = ray.put(blob)
        self._weights = (ref, version)
        for w in self.workers:
            w.load_weights.remote(ref, version)
        if teacher_blob is not None and self.switch:
            self._teacher_weights = ray.put(teacher_blob)
            for w in self.workers:
                w.load_teacher_weights.remote(self._teacher_weights)
        return time.perf_counter() - t0

    def shutdown(self) -> None:
        # let in-flight requests finish first, so no call is cut off by the kill
        refs = [r.ref for r in self._requests.values() if r.ref is not None]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=30)
        for w in self.workers + self.teacher_scorers:
            ray.kill(w)
        self.queue.shutdown()


class QueueDepthAutoscaler:
    """How many rollout workers to add (+1) or remove (-1) after each batch the trainer takes.

    Generation is behind when the trainer found the queue empty and waited longer than
    `wait_threshold_s`; it is ahead when a batch was already waiting in the queue. After
    `patience` consecutive steps with the same signal, one worker is added or removed, within
    [min_workers, min(max_workers, busy_cap)], and the count starts again.
    """

    def __init__(self, cfg: RolloutAutoscaleConfig, busy_cap: int):
        self.cfg, self.cap = cfg, max(cfg.min_workers, min(cfg.max_workers, busy_cap))
        self._signal, self._streak = 0, 0

    def decide(self, workers: int, depth: int, waited_s: float) -> int:
        signal = 1 if depth == 0 and waited_s > self.cfg.wait_threshold_s else (-1 if depth > 0 else 0)
        self._streak = self._streak + 1 if signal == self._signal else 1
        self._signal = signal
        if signal == 0 or self._streak < self.cfg.patience:
            return 0
        self._streak = 0
        return min(max(workers + signal, self.cfg.min_workers), self.cap) - workers


def lambda_on_rng(seed: int) -> random.Random:
    """The RNG deciding, per step, whether sgo trains on student outputs or on dataset rows."""
    return random.Random(seed * 7919 + 1)
