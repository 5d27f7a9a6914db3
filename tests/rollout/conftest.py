"""Session fixtures of the rollout tests: one tiny teacher/student pair and 64 prompts."""

from __future__ import annotations

import pytest
import torch

from rollout_models import EOS, STUDENT_SHAPE, TEACHER_SHAPE, ModelPair, make_model, random_prompts


@pytest.fixture(scope="session")
def model_pair(tmp_path_factory) -> ModelPair:
    torch.manual_seed(0)
    common_token = 124  # one of the most frequent tokens of these random models; EOS copies its row
    teacher = make_model(TEACHER_SHAPE, seed=0, eos_like=common_token)
    student = make_model(STUDENT_SHAPE, seed=1, eos_like=common_token)
    root = tmp_path_factory.mktemp("rollout_models")
    teacher.save_pretrained(root / "teacher")
    student.save_pretrained(root / "student")
    return ModelPair(teacher, student, root / "teacher", root / "student", EOS)


@pytest.fixture(scope="session")
def prompts64() -> list[list[int]]:
    return random_prompts(64, seed=0)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models decode fastest on one thread, and far faster than on two contended ones
    (the CI machine is shared); restored afterwards for the other test packages."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
