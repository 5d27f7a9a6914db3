"""Student serving: an OpenAI-compatible API for a distilled student directory (Ray Serve + FastAPI).

    serve run deploy/student.yaml
    curl -s localhost:8000/v1/completions -H 'content-type: application/json' \\
         -d '{"model": "student", "prompt": "Instruction: reverse a b c\\nResponse:", "max_tokens": 16}'

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused-or-the-token")
    client.chat.completions.create(model="student", messages=[{"role": "user", "content": "count to 3"}])

Routes: POST /v1/completions (prompt: text, token ids, or lists of either), POST
/v1/chat/completions, GET /v1/models, GET /health (no token). `stream: true` answers
server-sent events in OpenAI's chunk format; the chunks are sent once the whole completion is
generated (the engines generate a batch at a time), so streaming here is for client
compatibility, not for a faster first token.

Generation is the project's rollout engine (`rollout.workers.build_engine`: torch or vLLM) with
its position-keyed sampling: the same seed and prompt give the same completion. Chat prompts use
the tokenizer's chat template when it has one; otherwise the prompt template the student was
trained with (`data.template`, "Instruction: {prompt}\\nResponse:"), earlier turns before it.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from pathlib import Path
from typing import Literal

from fastapi import Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray import serve

from distill_ray.config import DataConfig
from distill_ray.serve.common import (
    AuthMode, ServiceError, bind_app, check_bearer, model_context, replica_engine_config, service_app,
)
from distill_ray.serve.openai_schema import ChatMessage, ChatRequest, CompletionRequest, refuse_unsupported


class StudentAppArgs(BaseModel):
    """`args` of a student application in deploy/*.yaml (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")

    model: str  # the student: HF model directory (e.g. runs/kd/student, what a training run exports)
    tokenizer: str | None = None  # tokenizer directory; None: the model directory's
    name: str | None = None  # the model id clients name; None: the directory's name
    backend: Literal["torch", "vllm"] = "torch"  # generation engine
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # weights and compute dtype
    max_model_len: int | None = Field(None, ge=2)  # context (prompt + completion); None: max_position_embeddings
    max_tokens_limit: int = Field(512, ge=1)  # largest max_tokens a request may ask
    max_sequences: int = Field(32, ge=1)  # most completions (prompts x n) in one request
    prompt_template: str = DataConfig().template  # chat without a chat template: the training prompt template
    system_prompt: str | None = None  # chat with a chat template: the system turn when a request has none (the run's data.system_prompt); None: the template's default
    engine: dict = Field(default_factory=dict)  # further `EngineConfig` fields, e.g. {vllm_kv_cache_gib: 0.25}
    auth: AuthMode = "auto"  # token: clients must send a bearer token (refuses to start without one); none: open; auto: token when one is set (see serve.common.resolve_auth)
    auth_token: str | None = None  # the bearer token; None: $DISTILL_RAY_SERVE_TOKEN where the app is built

    @field_validator("prompt_template")
    @classmethod
    def _has_prompt(cls, template: str) -> str:
        if "{prompt}" not in template:
            raise ValueError(f"must contain {{prompt}}, got {template!r}")
        return template


def _check_ids(prompts: list[list[int]], vocab_size: int) -> None:
    for i, ids in enumerate(prompts):
        if not ids:
            raise ServiceError(400, f"prompt[{i}]: empty (give at least one token)", "prompt")
        bad = next((t for t in ids if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise ServiceError(400, f"prompt[{i}]: token id {bad} is outside the vocabulary [0, {vocab_size})", "prompt")


def encode_text(tokenizer, text: str, field: str = "prompt") -> list[int]:
    """BOS + the text's tokens, as the training data encodes a prompt (`data.encoding.encode_prompt`)."""
    from distill_ray.data.encoding import encode_prompt

    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # JSON allows lone surrogates ("\ud800"); the tokenizer does not
        raise ServiceError(400, f"{field}: not valid Unicode text (a lone surrogate escape)", field) from None
    return encode_prompt(tokenizer, "{prompt}", text)


def chat_prompt(tokenizer, template: str, messages: list[ChatMessage], system: str | None = None) -> list[int]:
    """Prompt ids of a conversation: the chat template (with `system` as the system turn when the
    conversation has none, as training rendered it: `data.system_prompt`), or each user turn in
    `template` with the assistant's answer after it and the last user turn left open."""
    if getattr(tokenizer, "chat_template", None):
        encode_text(tokenizer, "".join(m.text() for m in messages), "messages")  # refuses what cannot be tokenized
        turns = [{"role": m.role, "content": m.text()} for m in messages]
        if system is not None and not any(t["role"] == "system" for t in turns):
            turns.insert(0, {"role": "system", "content": system})
        text = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    if messages[-1].role == "assistant":
        raise ServiceError(400, "messages: the last message must not be the assistant's", "messages")
    text, pending = "", []
    for m in messages:
        if m.role == "assistant":
            text += template.replace("{prompt}", "\n".join(pending)) + " " + m.text() + "\n"
            pending = []
        else:
            pending.append(m.text())
    return encode_text(tokenizer, text + template.replace("{prompt}", "\n".join(pending)), "messages")


def finish(tokens: list[int], eos_id: int, stops: list[str], tokenizer) -> tuple[str, str, list[int]]:
    """(text, finish_reason, tokens behind the text) of one completion: EOS dropped, cut at the first stop string."""
    body = tokens[:-1] if tokens and tokens[-1] == eos_id else tokens
    reason = "stop" if len(body) < len(tokens) else "length"
    text = tokenizer.decode(body, skip_special_tokens=True)
    cuts = [text.find(s) for s in stops if s in text]
    if cuts:
        text, reason = text[: min(cuts)], "stop"
    return text, reason, body


def text_pieces(text: str, tokens: list[int], tokenizer) -> list[str]:
    """What each token adds to `text` (incremental decoding), for streaming; together they are `text`."""
    pieces, prev = [], ""
    for i in range(1, len(tokens) + 1):
        if len(prev) >= len(text):
            break
        now = tokenizer.decode(tokens[:i], skip_special_tokens=True)[: len(text)]
        pieces.append(now[len(prev):])
        prev = now
    # a tokenizer whose decoding of a prefix is not a prefix of the whole: send the text in one piece
    return pieces if "".join(pieces) == text else [text]


def sse_chunks(head: dict, choices: list[tuple[str, str, list[int]]], pieces: list[list[str]], usage: dict | None,
                chat: bool):
    """OpenAI's streaming format: a chunk per token piece per choice, a closing chunk per choice, [DONE]."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choice: dict | None, **extra) -> str:
        return "data: " + json.dumps({**head, "object": kind, "choices": [choice] if choice else [], **extra}) + "\n\n"

    for i, ((_, reason, _), choice_pieces) in enumerate(zip(choices, pieces)):
        if chat:
            yield event({"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
        for piece in choice_pieces:
            delta = {"delta": {"content": piece}} if chat else {"text": piece}
            yield event({"index": i, **delta, "finish_reason": None, "logprobs": None})
        yield event({"index": i, **({"delta": {}} if chat else {"text": ""}), "finish_reason": reason, "logprobs": None})
    if usage is not None:
        yield event(None, usage=usage)
    yield "data: [DONE]\n\n"


app = service_app("distill-ray student (OpenAI-compatible)", __doc__)


@serve.deployment(max_ongoing_requests=16, ray_actor_options={"num_cpus": 1})
@serve.ingress(app)
class StudentService:
    """One replica: the student's rollout engine behind /v1/completions and /v1/chat/completions."""

    def __init__(self, args: StudentAppArgs, auth_token: str | None):
        from distill_ray.models.tokenizer import load_tokenizer
        from distill_ray.rollout.workers import build_engine

        self.tokenizer = load_tokenizer(args.tokenizer or args.model)
        engine = replica_engine_config(args.backend, args.dtype, args.engine, pad_token_id=self.tokenizer.pad_token_id,
                                       vllm_max_model_len=args.max_model_len)
        self.engine = build_engine(args.model, engine)
        self.args = args
        self.name = args.name or Path(args.model).name
        self.context = model_context(args.model, args.max_model_len)
        self.busy = asyncio.Lock()  # one generate call at a time: vLLM's LLM is not thread-safe
        app.state.auth_token = auth_token

    # ------------------------------------------------------------------ routes

    @app.get("/health")
    def health(self) -> dict:
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=[Depends(check_bearer)])
    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "created": 0, "owned_by": "distill-ray",
                                            "max_model_len": self.context}]}

    @app.post("/v1/completions", dependencies=[Depends(check_bearer)])
    async def completions(self, req: CompletionRequest):
        prompt = req.prompt
        if isinstance(prompt, str):
            prompts = [encode_text(self.tokenizer, prompt)]
        elif prompt and isinstance(prompt[0], str):
            prompts = [encode_text(self.tokenizer, p) for p in prompt]
        elif prompt and isinstance(prompt[0], list):
            prompts = [list(p) for p in prompt]
        else:
            prompts = [list(prompt)]
        return await self._respond(req, prompts, chat=False)

    @app.post("/v1/chat/completions", dependencies=[Depends(check_bearer)])
    async def chat_completions(self, req: ChatRequest):
        if req.max_completion_tokens is not None:
            req.max_tokens = req.max_completion_tokens
        return await self._respond(req, [chat_prompt(self.tokenizer, self.args.prompt_template, req.messages,
                                                  self.args.system_prompt)], chat=True)

    # ------------------------------------------------------------------ generation

    def _max_tokens(self, req, prompts: list[list[int]], chat: bool) -> int:
        """The request's max_tokens, checked against the server's limit and the context left after the prompt."""
        longest = max(len(p) for p in prompts)
        room = self.context - longest
        if room < 1:
            raise ServiceError(400, f"prompt: {longest} tokens leave no room in the model's context of {self.context}",
                               "prompt" if not chat else "messages")
        if req.max_tokens is None:  # OpenAI's defaults: 16 for completions, as long as fits for chat
            return min(16 if not chat else self.args.max_tokens_limit, room)
        if not 1 <= req.max_tokens <= self.args.max_tokens_limit:
            raise ServiceError(400, f"max_tokens: must be in [1, {self.args.max_tokens_limit}], got {req.max_tokens}",
                               "max_tokens")
        if req.max_tokens > room:
            raise ServiceError(400, f"this model's maximum context length is {self.context} tokens; the prompt has "
                                    f"{longest} and max_tokens asks {req.max_tokens} more", "max_tokens")
        return req.max_tokens

    async def _respond(self, req, prompts: list[list[int]], chat: bool):
        from distill_ray.rollout.sampling import SamplingConfig

        if req.model is not None and req.model != self.name:
            raise ServiceError(404, f"model '{req.model}' not found; this server serves '{self.name}'", "model",
                               "not_found_error")
        refuse_unsupported(req)
        stops = req.stop_strings()
        _check_ids(prompts, self.engine.vocab_size)
        if len(prompts) * req.n > self.args.max_sequences:
            raise ServiceError(400, f"n: {len(prompts)} prompt(s) x n={req.n} completions exceed {self.args.max_sequences} "
                                    f"per request", "n")
        max_tokens = self._max_tokens(req, prompts, chat)
        seed = req.seed if req.seed is not None else random.getrandbits(63)
        sampling = SamplingConfig(temperature=req.temperature, top_p=req.top_p, max_new_tokens=max_tokens,
                                  samples_per_prompt=req.n, seed=seed)
        async with self.busy:
            batch = await asyncio.to_thread(self.engine.generate, prompts, sampling, list(range(len(prompts))))
        choices = [finish(tokens, self.engine.eos_token_id, stops, self.tokenizer) for tokens in batch.responses()]
        completion_tokens = batch.num_response_tokens
        usage = {"prompt_tokens": sum(len(p) for p in prompts), "completion_tokens": completion_tokens,
                 "total_tokens": sum(len(p) for p in prompts) + completion_tokens}
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.name}
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            pieces = [text_pieces(text, tokens, self.tokenizer) for text, _, tokens in choices]
            return StreamingResponse(sse_chunks(head, choices, pieces, usage if include_usage else None, chat),
                                     media_type="text/event-stream")
        if chat:
            body = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason, "logprobs": None}
                    for i, (text, reason, _) in enumerate(choices)]
            return {**head, "object": "chat.completion", "choices": body, "usage": usage}
        body = [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                for i, (text, reason, _) in enumerate(choices)]
        return {**head, "object": "text_completion", "choices": body, "usage": usage}


def application(args: dict, **deployment_options) -> serve.Application:
    """The student application for `args` (StudentAppArgs fields); `deployment_options` as in `common.bind_app`."""
    return bind_app(StudentService, StudentAppArgs.model_validate(args), **deployment_options)


def build_app(args: dict) -> serve.Application:
    """`import_path: distill_ray.serve.student:build_app` in deploy/*.yaml."""
    return application(args)
