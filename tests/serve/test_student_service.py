"""Student serving over real HTTP: the `openai` client and curl against deploy/student.yaml's app.

Greedy completions must be exactly what the project's torch engine generates in this process for
the same prompt ids; bad requests get a 4xx with a one-line message; with a token set, requests
without it (or with a wrong one) get 401.
"""

from __future__ import annotations

import json
import subprocess

import httpx
import openai
import pytest
from openai import OpenAI

from distill_ray.data.encoding import encode_prompt
from distill_ray.models.tokenizer import load_tokenizer
from distill_ray.rollout.engines import TorchEngine
from distill_ray.rollout.sampling import SamplingConfig

pytestmark = pytest.mark.slow

TEMPLATE = "Instruction: {prompt}\nResponse:"


@pytest.fixture(scope="module")
def local(services):
    """The session student and tokenizer in this process, and an openai client of the service."""
    tokenizer = load_tokenizer(services["local"]["student"])
    engine = TorchEngine(services["local"]["student"], pad_token_id=tokenizer.pad_token_id)
    client = OpenAI(base_url=f"{services['student']}/v1", api_key="unused", max_retries=0)
    return {"tokenizer": tokenizer, "engine": engine, "client": client, "name": services["student_name"]}


def greedy_text(local, prompt_ids: list[int], max_tokens: int) -> tuple[str, str]:
    """(text, finish_reason) the torch engine gives greedily, decoded as the service decodes."""
    batch = local["engine"].generate([prompt_ids], SamplingConfig(temperature=0.0, max_new_tokens=max_tokens))
    tokens = batch.responses()[0]
    eos = local["engine"].eos_token_id
    stopped = bool(tokens) and tokens[-1] == eos
    body = tokens[:-1] if stopped else tokens
    return local["tokenizer"].decode(body, skip_special_tokens=True), "stop" if stopped else "length"


def test_openai_completions_are_the_engines_greedy_output(local):
    prompt = "Instruction: reverse the words: red green blue\nResponse:"
    out = local["client"].completions.create(model=local["name"], prompt=prompt, max_tokens=12, temperature=0)
    ids = encode_prompt(local["tokenizer"], "{prompt}", prompt)
    text, reason = greedy_text(local, ids, 12)
    assert out.object == "text_completion" and out.model == local["name"]
    assert out.choices[0].text == text and out.choices[0].finish_reason == reason
    assert out.usage.prompt_tokens == len(ids) and 1 <= out.usage.completion_tokens <= 12
    # token-id prompts and several prompts in one request; choices in prompt order
    out = local["client"].completions.create(model=local["name"], prompt=[ids, ids[:5]], max_tokens=6, temperature=0)
    assert [c.index for c in out.choices] == [0, 1]
    assert out.choices[0].text == greedy_text(local, ids, 6)[0]
    assert out.choices[1].text == greedy_text(local, ids[:5], 6)[0]


def test_sampling_is_seeded_and_n_gives_distinct_choices(local):
    kwargs = dict(model=local["name"], prompt="Instruction: count to five\nResponse:", max_tokens=10, n=3, seed=7)
    a = local["client"].completions.create(**kwargs)
    b = local["client"].completions.create(**kwargs)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len(a.choices) == 3 and len({c.text for c in a.choices}) > 1


def test_openai_chat_completions(local):
    messages = [{"role": "user", "content": "sort the letters: d b a c"}]
    out = local["client"].chat.completions.create(model=local["name"], messages=messages, max_tokens=10, temperature=0)
    # no chat template in the tiny tokenizer: the training prompt template is used
    text, reason = greedy_text(local, encode_prompt(local["tokenizer"], TEMPLATE, messages[0]["content"]), 10)
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant" and out.choices[0].message.content == text
    assert out.choices[0].finish_reason == reason
    # a multi-turn conversation with a system message and content parts
    turns = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "copy: a b"},
             {"role": "assistant", "content": "a b"}, {"role": "user", "content": [{"type": "text", "text": "copy: c d"}]}]
    out = local["client"].chat.completions.create(model=local["name"], messages=turns, max_completion_tokens=5)
    assert out.usage.completion_tokens <= 5 and out.usage.prompt_tokens > 20


def test_streaming_gives_the_same_text(local):
    kwargs = dict(model=local["name"], prompt="Instruction: copy: one two three\nResponse:", max_tokens=12,
                  temperature=0)
    whole = local["client"].completions.create(**kwargs).choices[0].text
    chunks = list(local["client"].completions.create(stream=True, **kwargs))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    chat = list(local["client"].chat.completions.create(
        model=local["name"], messages=[{"role": "user", "content": "copy: one two three"}], max_tokens=8,
        temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chat[-1].usage is not None and chat[-1].usage.completion_tokens >= 1
    assert "".join(c.choices[0].delta.content or "" for c in chat if c.choices)  # text arrived


def test_stop_strings_cut_the_text(local):
    kwargs = dict(model=local["name"], prompt="Instruction: copy: x y z x y z\nResponse:", max_tokens=16, temperature=0)
    whole = local["client"].completions.create(**kwargs).choices[0].text
    assert len(whole) > 2
    stop = whole[len(whole) // 2:len(whole) // 2 + 2]
    cut = local["client"].completions.create(stop=[stop], **kwargs).choices[0]
    assert cut.text == whole[: whole.find(stop)] and cut.finish_reason == "stop"


def test_curl(services, local):
    body = json.dumps({"model": local["name"], "prompt": "Instruction: count to three\nResponse:", "max_tokens": 8,
                       "temperature": 0})
    out = subprocess.run(["curl", "-sS", "--max-time", "60", f"{services['student']}/v1/completions",
                          "-H", "content-type: application/json", "-d", body], capture_output=True, text=True, check=True)
    answer = json.loads(out.stdout)
    assert answer["object"] == "text_completion" and isinstance(answer["choices"][0]["text"], str)
    out = subprocess.run(["curl", "-sS", f"{services['student']}/v1/models"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["data"][0]["id"] == local["name"]


BAD = [
    # (endpoint, body, status, fragment of the message)
    ("completions", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens: must be in [1, 256]"),
    ("completions", {"prompt": "hi", "max_tokens": 257}, 400, "max_tokens: must be in [1, 256]"),
    ("completions", {"prompt": "hi", "max_tokens": "16"}, 400, "max_tokens"),
    ("completions", {"prompt": [1] * 500, "max_tokens": 100}, 400, "maximum context length is 512"),
    ("completions", {"prompt": [1] * 512}, 400, "leave no room in the model's context of 512"),
    ("completions", {"prompt": [5, 700]}, 400, "token id 700 is outside the vocabulary"),
    ("completions", {"prompt": []}, 400, "prompt[0]: empty"),
    ("completions", {"prompt": 12}, 400, "prompt"),
    ("completions", {"max_tokens": 4}, 400, "prompt: Field required"),
    ("completions", {"prompt": "hi", "model": "gpt-4"}, 404, "model 'gpt-4' not found"),
    ("completions", {"prompt": "hi", "temperature": -1}, 400, "temperature"),
    ("completions", {"prompt": "hi", "temperature": 2.5}, 400, "temperature"),
    ("completions", {"prompt": "hi", "top_p": 0}, 400, "top_p"),
    ("completions", {"prompt": "hi", "n": 40}, 400, "exceed 32 per request"),
    ("completions", {"prompt": "hi", "echo": True}, 400, "echo: not supported"),
    ("completions", {"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop: at most 4"),
    ("chat/completions", {"messages": []}, 400, "messages"),
    ("chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
    ("chat/completions", {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}, 400,
     "the last message must not be the assistant's"),
    ("chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400,
     "messages[0].content"),
    ("chat/completions", {"messages": "hello"}, 400, "messages"),
    ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 10_000}, 400,
     "max_tokens"),
]


@pytest.mark.parametrize("endpoint,body,status,fragment", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_requests_get_4xx_with_a_message(services, endpoint, body, status, fragment):
    r = httpx.post(f"{services['student']}/v1/{endpoint}", json=body, timeout=60)
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert fragment in message and "\n" not in message


def test_the_openai_client_sees_the_message(local):
    with pytest.raises(openai.BadRequestError, match="max_tokens: must be in"):
        local["client"].completions.create(model=local["name"], prompt="hi", max_tokens=100_000)


def test_auth_on(services, local):
    secure = services["secure"]
    body = {"model": local["name"], "prompt": "Instruction: copy: a\nResponse:", "max_tokens": 4}
    r = httpx.post(f"{secure}/v1/completions", json=body, timeout=60)
    assert r.status_code == 401 and "missing bearer token" in r.json()["error"]["message"]
    assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(f"{secure}/v1/completions", json=body, headers={"Authorization": "Bearer wrong"}, timeout=60)
    assert r.status_code == 401 and r.json()["error"]["message"] == "wrong bearer token"
    assert httpx.get(f"{secure}/v1/models").status_code == 401
    assert httpx.get(f"{secure}/health").status_code == 200  # liveness needs no token
    for path in ("/docs", "/redoc", "/openapi.json"):  # FastAPI's docs routes are not served, token or not
        assert httpx.get(f"{secure}{path}").status_code == 404
        assert httpx.get(f"{secure}{path}", headers={"Authorization": f"Bearer {services['token']}"}).status_code == 404
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{secure}/v1", api_key="wrong", max_retries=0).completions.create(**body)
    out = OpenAI(base_url=f"{secure}/v1", api_key=services["token"], max_retries=0).completions.create(**body)
    assert out.choices[0].finish_reason in ("stop", "length")


def test_auth_off(services, local):
    """The open app ignores any Authorization header."""
    body = {"prompt": "Instruction: copy: a\nResponse:", "max_tokens": 2}
    assert httpx.post(f"{services['student']}/v1/completions", json=body, timeout=60).status_code == 200
    r = httpx.post(f"{services['student']}/v1/completions", json=body, headers={"Authorization": "Bearer x"}, timeout=60)
    assert r.status_code == 200
