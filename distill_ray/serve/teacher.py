"""Teacher scoring service: the teacher's top-k log-probabilities over HTTP (Ray Serve + FastAPI).

    serve run deploy/teacher.yaml            # torch backend; deploy/teacher_vllm.yaml for vLLM
    curl -s localhost:8000/teacher/score -H 'content-type: application/json' \\
         -d '{"sequences": [[1, 57, 9, 31, 2]], "response_start": 3, "top_k": 4}'

POST /score takes a batch of token-id sequences (prompt followed by response), the index where
each response starts, and top_k; it answers, for every response position t of every sequence,
the k most likely next tokens and their log-probabilities under the teacher (the distribution
that predicts token response_start + t), sorted by decreasing probability:

    {"model": "teacher", "top_k": 4, "response_lengths": [2],
     "topk_ids": [[[31, 8, 5, 77], [2, 31, 9, 4]]], "topk_logprobs": [[[-0.4, ...], [...]]]}

This is `TeacherScorer.score_topk` (distill_ray/rollout/workers.py) behind HTTP: each replica
holds one TeacherScorer and its engine (torch or vLLM), and concurrent requests are merged into
one engine call (`serve.batch`). `distill_ray.serve.client.TeacherEndpointClient` turns the answer
back into the [N, R, k] tensors a training run attaches to its batches. GET /info tells the
limits (vocabulary, context length, largest top_k, batch bounds); GET /health needs no token.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

from fastapi import Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from distill_ray.serve.common import (
    AuthMode, ServiceError, bind_app, check_bearer, model_context, replica_engine_config, service_app,
)


class TeacherAppArgs(BaseModel):
    """`args` of a teacher application in deploy/*.yaml (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")

    model: str  # teacher: HF model directory (tokenizer not needed: requests carry token ids)
    backend: Literal["torch", "vllm"] = "torch"  # torch: exact, best for tiny models on CPU; vllm: larger models, GPUs
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # weights and compute dtype
    name: str | None = None  # model name in answers; None: the directory's name
    max_top_k: int = Field(64, ge=1)  # largest top_k a request may ask (vLLM: its max_logprobs)
    max_sequences: int = Field(64, ge=1)  # most sequences in one request
    max_batch_tokens: int = Field(32768, ge=1)  # most tokens (all sequences together) in one request
    max_model_len: int | None = Field(None, ge=2)  # longest sequence; None: the model's max_position_embeddings
    engine: dict = Field(default_factory=dict)  # further `EngineConfig` fields, e.g. {vllm_kv_cache_gib: 0.25}
    auth: AuthMode = "auto"  # token: clients must send a bearer token (refuses to start without one); none: open; auto: token when one is set (see serve.common.resolve_auth)
    auth_token: str | None = None  # the bearer token; None: $DISTILL_RAY_SERVE_TOKEN where the app is built


class ScoreRequest(BaseModel):
    """POST /score. Strict JSON types: token ids are integers, not strings or floats."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    sequences: list[list[int]] = Field(min_length=1)  # token ids of prompt + response, one list per sequence
    response_start: int | list[int]  # index of each sequence's first response token (one for all, or one each)
    top_k: int  # how many of the most likely tokens to return per position


class ScoreResponse(BaseModel):
    model: str
    top_k: int
    response_lengths: list[int]  # R_n = len(sequence n) - response_start n
    topk_ids: list[list[list[int]]]  # [N][R_n][k] token ids, most likely first
    topk_logprobs: list[list[list[float]]]  # [N][R_n][k] natural-log probabilities


class ServiceLimits(BaseModel):
    """What GET /info reports and every request is checked against."""

    model: str
    backend: str
    vocab_size: int
    max_model_len: int
    max_top_k: int
    max_sequences: int
    max_batch_tokens: int


def check_score_request(req: ScoreRequest, limits: ServiceLimits) -> list[int]:
    """Refuse what the engine cannot score, with a one-line 400; returns the response start of every sequence."""
    n = len(req.sequences)
    if n > limits.max_sequences:
        raise ServiceError(400, f"sequences: at most {limits.max_sequences} per request, got {n}", "sequences")
    starts = req.response_start if isinstance(req.response_start, list) else [req.response_start] * n
    if len(starts) != n:
        raise ServiceError(400, f"response_start: {len(starts)} values for {n} sequences", "response_start")
    if not 1 <= req.top_k <= min(limits.max_top_k, limits.vocab_size):
        raise ServiceError(400, f"top_k: must be in [1, {min(limits.max_top_k, limits.vocab_size)}], got {req.top_k}", "top_k")
    total = 0
    for i, (seq, start) in enumerate(zip(req.sequences, starts)):
        if len(seq) > limits.max_model_len:
            raise ServiceError(400, f"sequences[{i}]: {len(seq)} tokens exceed the model's context of "
                                    f"{limits.max_model_len}", "sequences")
        if not 1 <= start <= len(seq):
            raise ServiceError(400, f"response_start[{i}]: must be in [1, {len(seq)}] (the sequence has "
                                    f"{len(seq)} tokens and the first one is never scored), got {start}", "response_start")
        bad = next((t for t in seq if not 0 <= t < limits.vocab_size), None)
        if bad is not None:
            raise ServiceError(400, f"sequences[{i}]: token id {bad} is outside the vocabulary [0, {limits.vocab_size})",
                               "sequences")
        total += len(seq)
    if total > limits.max_batch_tokens:
        raise ServiceError(400, f"sequences: {total} tokens in all, more than {limits.max_batch_tokens} per request",
                           "sequences")
    return starts


app = service_app("distill-ray teacher scoring", __doc__)


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
@serve.ingress(app)
class TeacherScoringService:
    """One replica: a `TeacherScorer` (its torch or vLLM engine) answering /score, /info and /health."""

    def __init__(self, args: TeacherAppArgs, auth_token: str | None):
        from distill_ray.rollout.workers import TeacherScorer

        engine = replica_engine_config(args.backend, args.dtype, args.engine, vllm_max_logprobs=args.max_top_k,
                                       vllm_max_model_len=args.max_model_len)
        self.scorer = TeacherScorer(args.model, engine)
        context = model_context(args.model, args.max_model_len)
        self.limits = ServiceLimits(
            model=args.name or Path(args.model).name, backend=args.backend, vocab_size=self.scorer.engine.vocab_size,
            max_model_len=context, max_top_k=args.max_top_k, max_sequences=args.max_sequences,
            max_batch_tokens=args.max_batch_tokens,
        )
        self._score_merged.set_max_batch_size(args.max_sequences)  # so one valid request always fits
        app.state.auth_token = auth_token

    @app.get("/health")
    def health(self) -> dict:
        return {"status": "ok"}

    @app.get("/info", dependencies=[Depends(check_bearer)])
    def info(self) -> ServiceLimits:
        return self.limits

    @app.post("/score", dependencies=[Depends(check_bearer)], response_model=ScoreResponse)
    async def score(self, req: ScoreRequest) -> JSONResponse:
        starts = check_score_request(req, self.limits)
        ids, logprobs = await self._score_merged((req.sequences, starts, req.top_k))
        # built directly: validating tens of thousands of floats again against ScoreResponse costs more than scoring
        return JSONResponse({"model": self.limits.model, "top_k": req.top_k,
                             "response_lengths": [len(s) - p for s, p in zip(req.sequences, starts)],
                             "topk_ids": ids, "topk_logprobs": logprobs})

    # merges up to max_sequences sequences (set in __init__) from requests arriving within 5 ms
    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005, batch_size_fn=lambda items: sum(len(i[0]) for i in items))
    async def _score_merged(self, items: list[tuple[list[list[int]], list[int], int]]) -> list[tuple[list, list]]:
        """Concurrent requests (sequences, starts, k) scored in one engine call at the largest k,
        then cut back to each request's rows, response lengths and k."""
        sequences = [s for seqs, _, _ in items for s in seqs]
        starts = [p for _, ps, _ in items for p in ps]
        k = max(item[2] for item in items)
        # the engine is not thread-safe (vLLM) and saturates the replica's cores: one call at a time,
        # off the event loop so requests keep arriving and merging meanwhile
        ids, logprobs = await asyncio.to_thread(self.scorer.score_topk, sequences, starts, k)  # [N, R, k] each
        out, row = [], 0
        for seqs, ps, kk in items:
            ids_n, lp_n = [], []
            for seq, p in zip(seqs, ps):
                r = len(seq) - p
                ids_n.append(ids[row, :r, :kk].tolist())
                lp_n.append(logprobs[row, :r, :kk].tolist())
                row += 1
            out.append((ids_n, lp_n))
        return out


def application(args: dict, **deployment_options) -> serve.Application:
    """The teacher application for `args` (TeacherAppArgs fields); `deployment_options` as in `common.bind_app`."""
    return bind_app(TeacherScoringService, TeacherAppArgs.model_validate(args), **deployment_options)


def build_app(args: dict) -> serve.Application:
    """`import_path: distill_ray.serve.teacher:build_app` in deploy/*.yaml."""
    return application(args)
