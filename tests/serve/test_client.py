"""TeacherEndpointClient against the session's teacher service: the same tensors and batch as a
local TeacherScorer; the config field that selects it; one-line errors when it cannot be used."""

from __future__ import annotations

import pytest
import torch

from distill_ray.config import load_config
from distill_ray.errors import DistillError
from distill_ray.serve.client import TeacherEndpointClient


def test_config_needs_remote_mode_and_a_url():
    cfg = load_config(None, ["model.teacher_endpoint=http://127.0.0.1:8000/teacher", "trainer.teacher_mode=remote"])
    assert cfg.model.teacher_endpoint == "http://127.0.0.1:8000/teacher"
    with pytest.raises(DistillError, match="model.teacher_endpoint: .*needs trainer.teacher_mode=remote"):
        load_config(None, ["model.teacher_endpoint=http://127.0.0.1:8000/teacher"])
    with pytest.raises(DistillError, match="expected an http:// or https:// URL"):
        load_config(None, ["model.teacher_endpoint=localhost:8000", "trainer.teacher_mode=remote"])


def test_unreachable_endpoint_is_one_line_error():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/teacher"  # bound, not listening: refused
    with pytest.raises(DistillError, match=r"teacher endpoint .*/info: ConnectError") as err:
        TeacherEndpointClient(url, retries=0)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_scores_equal_a_local_teacher_scorer(services):
    from distill_ray.data.encoding import Encoded
    from distill_ray.pipeline.sources import dataset_batch
    from distill_ray.rollout.workers import TeacherScorer

    g = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(3, 700, (n,), generator=g).tolist()

    rows = [Encoded(ids(p), ids(r), i) for i, (p, r) in enumerate(zip([1, 5, 19, 7, 3, 12, 9, 2, 15, 4],
                                                                      [1, 29, 3, 17, 8, 22, 5, 11, 2, 26]))]
    batch = dataset_batch(rows, pad_id=0)
    local = TeacherScorer(services["local"]["teacher"]).score_batch(batch, 16)
    with pytest.raises(DistillError, match="loss.topk=100 exceeds the service's max_top_k=64"):
        TeacherEndpointClient(services["teacher"], topk=100)
    client = TeacherEndpointClient(services["teacher"], topk=16)
    client.info["max_sequences"] = 3  # several pieces, sent concurrently, put back in order
    remote = client.score(batch)
    client.shutdown()
    assert remote.teacher_topk_ids.shape == local.teacher_topk_ids.shape == (10, batch.response_ids.shape[1], 16)
    torch.testing.assert_close(remote.teacher_topk_logprobs, local.teacher_topk_logprobs, atol=1e-4, rtol=0)
    assert (remote.teacher_topk_ids == local.teacher_topk_ids).float().mean() > 0.99  # ids may swap only at ties
    assert remote.metrics["teacher/topk_mass"] == pytest.approx(local.metrics["teacher/topk_mass"], abs=1e-5)
    assert 0 < remote.metrics["teacher/topk_mass"] <= 1.0 + 1e-6
