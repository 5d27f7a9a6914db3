"""Teacher scoring service over real HTTP: top-k equal to the torch engine's, limits, bad input as 400.

Requests go through Serve's HTTP proxy to a replica of deploy/teacher.yaml's app (torch backend,
tiny session teacher); the reference is the project's own `TorchEngine.score_topk` in this process.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from distill_ray.rollout.engines import TorchEngine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(services):
    return TorchEngine(services["local"]["teacher"])


def random_sequences(n: int, vocab: int, seed: int) -> tuple[list[list[int]], list[int]]:
    rng = random.Random(seed)
    seqs, starts = [], []
    for _ in range(n):
        length = rng.randint(2, 40)
        seqs.append([rng.randrange(vocab) for _ in range(length)])
        starts.append(rng.randint(1, length))
    return seqs, starts


def assert_topk_matches(answer: dict, reference: TorchEngine, seqs, starts, k: int) -> None:
    """Per response position: the service's log-probs equal the engine's top-k within 1e-4, and
    its ids are the engine's (or carry the same log-prob, where two tokens tie)."""
    ids, values = reference.score_topk(seqs, starts, k)
    full = reference.score_logprobs(seqs, starts)
    assert answer["response_lengths"] == [len(s) - p for s, p in zip(seqs, starts)]
    for n, r in enumerate(answer["response_lengths"]):
        got_ids = torch.tensor(answer["topk_ids"][n], dtype=torch.long).reshape(r, k)
        got_lp = torch.tensor(answer["topk_logprobs"][n]).reshape(r, k)
        torch.testing.assert_close(got_lp, values[n, :r], atol=1e-4, rtol=0)
        torch.testing.assert_close(full[n, :r].gather(1, got_ids), values[n, :r], atol=1e-4, rtol=0)
        if r:
            assert (got_ids == ids[n, :r]).float().mean() > 0.99


def test_scores_match_the_torch_engine(services, reference):
    seqs, starts = random_sequences(12, 700, seed=0)
    starts[0] = len(seqs[0])  # an empty response: no positions
    r = httpx.post(f"{services['teacher']}/score", json={"sequences": seqs, "response_start": starts, "top_k": 8}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["top_k"] == 8 and body["response_lengths"][0] == 0
    assert_topk_matches(body, reference, seqs, starts, 8)
    # one response_start for every sequence
    r = httpx.post(f"{services['teacher']}/score", json={"sequences": [s[:10] for s in seqs if len(s) >= 10],
                                                         "response_start": 4, "top_k": 3}, timeout=60)
    assert r.status_code == 200, r.text
    short = [s[:10] for s in seqs if len(s) >= 10]
    assert_topk_matches(r.json(), reference, short, [4] * len(short), 3)


def test_concurrent_requests_are_merged_and_split_back(services, reference):
    """Requests with different k and sizes arriving together (one engine call) each get their own answer."""
    jobs = [(random_sequences(1 + i % 4, 700, seed=100 + i), 1 + i % 6) for i in range(16)]

    def call(job):
        (seqs, starts), k = job
        return httpx.post(f"{services['teacher']}/score", json={"sequences": seqs, "response_start": starts, "top_k": k},
                          timeout=60)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, jobs))
    for ((seqs, starts), k), r in zip(jobs, answers):
        assert r.status_code == 200, r.text
        assert_topk_matches(r.json(), reference, seqs, starts, k)


def test_info_and_health(services):
    info = httpx.get(f"{services['teacher']}/info").json()
    assert info["vocab_size"] == 700 and info["max_model_len"] == 512 and info["backend"] == "torch"
    assert info["max_top_k"] == 64 and info["max_sequences"] == 64
    assert httpx.get(f"{services['teacher']}/health").json() == {"status": "ok"}


BAD = [
    # (body, status, fragment of the message)
    ({"sequences": [], "response_start": 1, "top_k": 2}, 400, "sequences"),
    ({"sequences": [[1, 2, 3]], "response_start": 0, "top_k": 2}, 400, "response_start[0]: must be in [1, 3]"),
    ({"sequences": [[1, 2, 3]], "response_start": 4, "top_k": 2}, 400, "response_start[0]"),
    ({"sequences": [[1, 2, 3], [4, 5]], "response_start": [1], "top_k": 2}, 400, "1 values for 2 sequences"),
    ({"sequences": [[1, 2, 700]], "response_start": 1, "top_k": 2}, 400, "token id 700 is outside the vocabulary"),
    ({"sequences": [[1, -3, 7]], "response_start": 1, "top_k": 2}, 400, "token id -3"),
    ({"sequences": [[1, 2, 3]], "response_start": 1, "top_k": 0}, 400, "top_k: must be in [1, 64]"),
    ({"sequences": [[1, 2, 3]], "response_start": 1, "top_k": 65}, 400, "top_k"),
    ({"sequences": [[1] * 513], "response_start": 1, "top_k": 2}, 400, "513 tokens exceed the model's context of 512"),
    ({"sequences": [[1, 2]] * 65, "response_start": 1, "top_k": 2}, 400, "at most 64 per request"),
    ({"sequences": [[1, "2", 3]], "response_start": 1, "top_k": 2}, 400, "sequences[0][1]"),
    ({"sequences": [[1, 2.0, 3]], "response_start": 1, "top_k": 2}, 400, "sequences[0][1]"),
    ({"sequences": [[1, 2, 3]], "response_start": 1, "top_k": "5"}, 400, "top_k"),
    ({"sequences": [[1, 2, 3]], "response_start": 1, "top_k": True}, 400, "top_k"),
    ({"sequences": [[1, 2, 3]], "response_start": 1}, 400, "top_k: Field required"),
    ({"sequences": [[1, 2, 3]], "response_start": 1, "top_k": 2, "k": 3}, 400, "k: unknown field"),
    ([1, 2, 3], 400, "must be a JSON object"),
    ("not json", 400, "not valid JSON"),
]


@pytest.mark.parametrize("body,status,fragment", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_requests_get_4xx_with_a_message(services, body, status, fragment):
    if isinstance(body, str):
        r = httpx.post(f"{services['teacher']}/score", content=body, headers={"content-type": "application/json"})
    else:
        r = httpx.post(f"{services['teacher']}/score", json=body)
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert fragment in message and "\n" not in message


def test_wrong_route_and_method(services):
    assert httpx.get(f"{services['teacher']}/score").status_code == 405
    r = httpx.post(f"{services['teacher']}/nope", json={})
    assert r.status_code == 404 and "error" in r.json()
