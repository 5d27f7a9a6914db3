"""Client of the teacher scoring service: the teacher's top-k as tensors, for a training run.

    client = TeacherEndpointClient("http://127.0.0.1:8000/teacher", topk=64)
    ids, logprobs = client.score_topk(sequences, prompt_lens, k=8)   # [N, R, k] each, like TeacherScorer
    batch = client.score(batch)                                       # teacher_topk_* filled, like TeacherScorers

A run with `model.teacher_endpoint` set (and `trainer.teacher_mode: remote`) uses this in place
of TeacherScorer actors (`pipeline.driver`). A batch is sent as pieces of at most the service's
`max_sequences` rows, several at once so an autoscaled service scores them on several replicas;
failed connections and 5xx answers are tried again, a 4xx is reported at once.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from distill_ray.batch import RolloutBatch
from distill_ray.errors import DistillError

TOKEN_ENV = "DISTILL_RAY_SERVE_TOKEN"  # the bearer token: the client sends it, an app with `auth: token` checks it


class TeacherEndpointClient:
    """Top-k teacher log-probabilities from a teacher scoring service (deploy/teacher*.yaml) over HTTP."""

    def __init__(self, url: str, *, topk: int = 64, token: str | None = None, timeout_s: float = 300.0,
                 retries: int = 3, concurrency: int = 4):
        import httpx

        self.url = url.rstrip("/")
        self.topk, self.retries = topk, retries
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)
        self.pool = ThreadPoolExecutor(max_workers=concurrency)
        self.actors: list = []  # no Ray actors of its own (the run's placement report lists none): Serve owns the replicas
        self.info = self._call("GET", "/info")  # also: fail now, not at the first step, if it is unreachable
        if topk > self.info["max_top_k"]:
            raise DistillError(f"teacher endpoint {self.url}: loss.topk={topk} exceeds the service's "
                               f"max_top_k={self.info['max_top_k']}")

    @classmethod
    def from_config(cls, cfg) -> "TeacherEndpointClient":
        """For a run config: `model.teacher_endpoint`, `loss.topk`, the token from $DISTILL_RAY_SERVE_TOKEN."""
        return cls(cfg.model.teacher_endpoint, topk=cfg.loss.topk, token=os.environ.get(TOKEN_ENV))

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        """One request, tried again on failed connections and 5xx; a one-line DistillError otherwise."""
        import httpx

        for attempt in range(self.retries + 1):
            try:
                response = self.http.request(method, path, json=body)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return response.json()
                try:
                    problem = response.json()["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    problem = response.text[:200]
                problem = f"HTTP {response.status_code}: {problem}"
                if response.status_code < 500:
                    break
            if attempt < self.retries:
                time.sleep(0.5 * 2**attempt)
        raise DistillError(f"teacher endpoint {self.url}{path}: {problem}")

    def score_topk(self, sequences: list[list[int]], prompt_lens: list[int], k: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [N, R, k] int64, log-probs [N, R, k] float32) at every response position, most likely
        first, zeros on padding: the output of `TeacherScorer.score_topk`."""
        k = k or self.topk
        step = self.info["max_sequences"]
        pieces = [(sequences[i:i + step], prompt_lens[i:i + step]) for i in range(0, len(sequences), step)]
        answers = list(self.pool.map(
            lambda piece: self._call("POST", "/score", {"sequences": piece[0], "response_start": piece[1], "top_k": k}),
            pieces,
        ))
        lengths = [r for a in answers for r in a["response_lengths"]]
        R = max(lengths, default=0)
        ids = torch.zeros((len(sequences), R, k), dtype=torch.long)
        logprobs = torch.zeros((len(sequences), R, k), dtype=torch.float32)
        row = 0
        for answer in answers:
            for r, row_ids, row_lp in zip(answer["response_lengths"], answer["topk_ids"], answer["topk_logprobs"]):
                if r:
                    ids[row, :r] = torch.tensor(row_ids, dtype=torch.long)
                    logprobs[row, :r] = torch.tensor(row_lp, dtype=torch.float32)
                row += 1
        return ids, logprobs

    def score_batch(self, batch: RolloutBatch, k: int | None = None) -> RolloutBatch:
        """The batch with teacher_topk_ids / teacher_topk_logprobs filled ([B, R, k]), like `TeacherScorer.score_batch`."""
        start = time.perf_counter()
        ids, logprobs = self.score_topk(batch.sequences(), batch.prompt_lengths(), k)
        return batch.with_teacher_topk(ids, logprobs, {"timing/teacher_score": time.perf_counter() - start})

    def score(self, batch: RolloutBatch) -> RolloutBatch:
        """`pipeline.teachers.TeacherSource.score`'s contract: top-`topk` attached to the batch."""
        return self.score_batch(batch, self.topk)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False)
        self.http.close()
