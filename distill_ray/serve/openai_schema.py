"""Request bodies of the OpenAI-compatible student service (/v1/completions, /v1/chat/completions).

Strict JSON types (no "16" for 16, no 1.5 for an integer), non-finite numbers refused. Fields a
client commonly sends but this server does not implement are declared so that a non-default
value is refused with a clear 400 (`unsupported`), not silently ignored; anything else unknown
is ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from distill_ray.serve.common import ServiceError

INT64 = 2**63


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False  # a last chunk with the usage and no choices


class _SamplingFields(_Strict):
    """What both endpoints share."""

    model: str | None = None  # must name the served model when given
    max_tokens: int | None = None  # longest completion (tokens, EOS included)
    temperature: float = Field(1.0, ge=0.0, le=2.0)  # 0: greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)  # nucleus sampling
    n: int = Field(1, ge=1)  # completions per prompt
    seed: int | None = Field(None, ge=-INT64, lt=INT64)  # same seed, same prompt: same completion
    stop: str | list[str] | None = None  # up to 4 strings that end a completion (not included)
    stream: bool = False  # server-sent events, one chunk per token
    stream_options: StreamOptions | None = None
    # declared only to refuse non-default values
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict | None = None

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ServiceError(400, "stop: at most 4 non-empty strings", "stop")
        return stops


class CompletionRequest(_SamplingFields):
    """POST /v1/completions: prompt text(s) or token ids."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    best_of: int | None = None
    logprobs: int | None = None
    suffix: str | None = None


class ContentPart(_Strict):
    type: Literal["text"]  # only text parts
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None  # newer clients' name for max_tokens
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list | None = None


# field -> the values that mean "not used"
UNSUPPORTED_DEFAULTS = {
    "presence_penalty": (0.0,), "frequency_penalty": (0.0,), "logit_bias": (None,), "echo": (False,),
    "best_of": (None, 1), "logprobs": (None, False, 0), "suffix": (None,), "top_logprobs": (None,), "tools": (None,),
}


def refuse_unsupported(req: _SamplingFields) -> None:
    """A 400 naming the first field set to something this server does not implement."""
    for name, unused in UNSUPPORTED_DEFAULTS.items():
        if name not in type(req).model_fields:
            continue
        value = getattr(req, name)
        if not any(value is u or (value == u and type(value) is type(u)) for u in unused):
            raise ServiceError(400, f"{name}: not supported by this server (leave it out)", name)
