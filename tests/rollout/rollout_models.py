"""Tiny random teacher/student pairs for the rollout tests, built once per session.

The models are random Llamas with a shared 128-token vocabulary. Their output layers are scaled
up so the distributions are peaked and the teacher/student JSD spreads over roughly 0.2-0.3
nats (random init alone gives near-uniform distributions and JSDs near 0.005), which makes
the SWITCH rule pick both writers. EOS is made as likely as a common token, so
about a third of 32-token responses end early.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from distill_ray.models.build import ModelShape, build_causal_lm

VOCAB = 128
BOS, EOS, PAD = 1, 2, 0


@dataclass
class ModelPair:
    teacher: torch.nn.Module
    student: torch.nn.Module
    teacher_dir: Path
    student_dir: Path
    eos_token_id: int


def make_model(shape: ModelShape, seed: int, scale: float = 6.0, eos_like: int | None = None):
    model = build_causal_lm(
        "llama", shape, vocab_size=VOCAB, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, seed=seed
    ).eval()
    with torch.no_grad():
        model.lm_head.weight *= scale
        if eos_like is not None:
            # EOS gets the output row of a token the models often produce (about 2% per step)
            model.lm_head.weight[EOS] = model.lm_head.weight[eos_like]
    return model


TEACHER_SHAPE = ModelShape(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=256)
STUDENT_SHAPE = ModelShape(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)


def random_prompts(n: int, seed: int = 0, max_len: int = 12) -> list[list[int]]:
    """n prompts of 1..max_len tokens, each starting with BOS."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (n,), generator=g).tolist()
    return [[BOS] + torch.randint(3, VOCAB, (n_tok - 1,), generator=g).tolist() for n_tok in lengths]


