"""Property-based fuzzing of both services' request schemas over real HTTP (hypothesis).

Any JSON body (random values, or the right field names holding random values, NaN and huge
integers included) gets an answer below 500 with a JSON error message; bodies drawn from the
valid space get 200 and an answer of the right shape.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow

VOCAB = 700  # the session models' vocabulary (tests/conftest.py tiny_local)
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats() | st.text(max_size=12))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12
)


def some_fields(fields: dict) -> st.SearchStrategy:
    """Dicts with any subset of `fields`, each holding its plausible value or random JSON, plus maybe a stray key."""
    return st.fixed_dictionaries({}, optional={k: v | json_values for k, v in fields.items()} | {"stray": json_values})


@pytest.fixture(scope="module")
def http(services):
    with httpx.Client(base_url=services["url"], timeout=120) as client:
        yield client


def post(http: httpx.Client, path: str, body) -> httpx.Response:
    # json.dumps writes NaN / Infinity, which Python's JSON reader (the server's) accepts
    return http.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def assert_refused_cleanly(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert isinstance(r.json()["error"]["message"], str)


# ---------------------------------------------------------------- teacher /score

token_ids = st.integers(0, VOCAB - 1)
valid_sequences = st.lists(st.lists(token_ids, min_size=2, max_size=24), min_size=1, max_size=4)
teacher_fields = {"sequences": valid_sequences, "response_start": st.integers(-3, 30) | st.lists(st.integers(-3, 30)),
                  "top_k": st.integers(-2, 80)}


@FUZZ
@given(body=json_values | some_fields(teacher_fields))
def test_teacher_never_answers_5xx(http, body):
    assert_refused_cleanly(post(http, "/teacher/score", body))


@FUZZ
@given(data=st.data(), sequences=valid_sequences, top_k=st.integers(1, 64))
def test_teacher_valid_requests_get_200(http, data, sequences, top_k):
    starts = [data.draw(st.integers(1, len(s))) for s in sequences]
    r = post(http, "/teacher/score", {"sequences": sequences, "response_start": starts, "top_k": top_k})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["response_lengths"] == [len(s) - p for s, p in zip(sequences, starts)]
    assert all(len(pos) == top_k for seq in body["topk_ids"] for pos in seq)
    assert all(v <= 0.0 for seq in body["topk_logprobs"] for pos in seq for v in pos)


# ---------------------------------------------------------------- student /v1/completions, /v1/chat/completions

text = st.text(alphabet="abc xyz:\n", max_size=30)
sampling_fields = {"max_tokens": st.integers(-2, 600), "temperature": st.floats(-1, 3), "top_p": st.floats(-0.5, 1.5),
                   "n": st.integers(-1, 40), "seed": st.integers(), "stop": st.text(max_size=3) | st.lists(st.text(max_size=3)),
                   "stream": st.booleans(), "model": st.just("student") | st.text(max_size=5)}
completion_fields = {**sampling_fields, "prompt": text | st.lists(token_ids, max_size=8) | st.lists(text, max_size=3)}
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool"]), "content": text})
chat_fields = {**sampling_fields, "messages": st.lists(message, max_size=3)}


@FUZZ
@given(body=json_values | some_fields(completion_fields))
def test_completions_never_answer_5xx(http, body):
    assert_refused_cleanly(post(http, "/v1/completions", body))


@FUZZ
@given(body=json_values | some_fields(chat_fields))
def test_chat_never_answers_5xx(http, body):
    assert_refused_cleanly(post(http, "/v1/chat/completions", body))


@FUZZ
@given(prompt=text | st.lists(token_ids, min_size=1, max_size=8), max_tokens=st.integers(1, 6),
       temperature=st.floats(0, 2), n=st.integers(1, 2), seed=st.integers(0, 2**63 - 1), chat=st.booleans())
def test_student_valid_requests_get_200(http, prompt, max_tokens, temperature, n, seed, chat):
    common = {"model": "student", "max_tokens": max_tokens, "temperature": temperature, "n": n, "seed": seed}
    if chat:
        content = prompt if isinstance(prompt, str) else "count"
        r = post(http, "/v1/chat/completions", {**common, "messages": [{"role": "user", "content": content}]})
    else:
        r = post(http, "/v1/completions", {**common, "prompt": prompt})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["choices"]) == n and 1 <= body["usage"]["completion_tokens"] <= n * max_tokens


EDGE = [
    # bodies hypothesis rarely draws, each once found to give a 500 or worth pinning down
    ("/v1/completions", '{"prompt": "\\ud800 abc", "max_tokens": 2}', "prompt: not valid Unicode"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "\\udfff"}], "max_tokens": 2}', "messages: not valid"),
    ("/v1/completions", '{"prompt": "hi", "max_tokens": 1' + "0" * 5000 + "}", "error parsing the body"),
    ("/teacher/score", '{"sequences": [[1, 2, 3' + "0" * 5000 + ']], "response_start": 1, "top_k": 2}', "error parsing"),
    ("/v1/completions", '{"prompt": "hi", "max_tokens": 2, "seed": 99999999999999999999999}', "seed"),
    ("/v1/completions", '{"prompt": "hi", "max_tokens": 2, "temperature": NaN}', "temperature"),
    ("/teacher/score", '{"sequences": [[1, 2, 3]], "response_start": 1, "top_k": Infinity}', "top_k"),
    ("/v1/completions", b"\xff\xfe{", "error parsing the body"),  # not UTF-8
    ("/v1/completions", '{"prompt": "' + "word " * 3000 + '", "max_tokens": 2}', "leave no room"),
]


@pytest.mark.parametrize("path,body,fragment", EDGE, ids=[str(i) for i in range(len(EDGE))])
def test_edge_bodies_get_400(http, path, body, fragment):
    content = body if isinstance(body, bytes) else body.encode()
    r = http.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]["message"]
