"""The student Serve app (deploy/student.yaml's) with a real chat model: a student pruned from
SmolLM2-135M-Instruct, asked through the `openai` client over HTTP. The reply must be what the
project's torch engine generates greedily from the chat template's rendering of the same
conversation (the rendering training used: data.chat_template=auto), with the app's
system_prompt in it when the request has no system turn."""

from __future__ import annotations

from pathlib import Path

import pytest
from openai import OpenAI

from distill_ray.data.encoding import ChatFormat, encode_prompt
from distill_ray.rollout.engines import TorchEngine
from distill_ray.rollout.sampling import SamplingConfig

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SYSTEM = "You answer in one short sentence."


@pytest.fixture(scope="module")
def real_app(serve_url, pruned_student):
    from ray import serve

    from distill_ray.serve.apps import load_app_spec

    spec = load_app_spec(ROOT / "deploy/student.yaml")
    app = spec.build({"model": str(pruned_student), "name": "pruned", "system_prompt": SYSTEM, "auth": "none"},
                     {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25}})
    serve.run(app, name="real-student", route_prefix="/real")
    yield OpenAI(base_url=f"{serve_url}/real/v1", api_key="unused", max_retries=0)
    serve.delete("real-student")


def test_chat_request_is_answered_through_the_chat_template(real_app, pruned_student, real_tokenizer):
    question = "What is the capital of France?"
    out = real_app.chat.completions.create(model="pruned", messages=[{"role": "user", "content": question}],
                                           max_tokens=12, temperature=0)
    engine = TorchEngine(str(pruned_student), pad_token_id=real_tokenizer.pad_token_id)
    ids = encode_prompt(real_tokenizer, "{prompt}", question, ChatFormat(SYSTEM))
    assert real_tokenizer.decode(ids).startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>")
    tokens = engine.generate([ids], SamplingConfig(temperature=0.0, max_new_tokens=12)).responses()[0]
    stopped = bool(tokens) and tokens[-1] == real_tokenizer.eos_token_id
    text = real_tokenizer.decode(tokens[:-1] if stopped else tokens, skip_special_tokens=True)
    assert out.choices[0].message.content == text
    assert out.usage.prompt_tokens == len(ids)
    # a system turn of the client's own replaces the app's
    own = real_app.chat.completions.create(model="pruned", max_tokens=4, temperature=0, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": question}])
    theirs = encode_prompt(real_tokenizer, "{prompt}", question, ChatFormat("Be brief."))
    assert own.usage.prompt_tokens == len(theirs)
