"""Building small causal LMs from a config (no download) and loading any HF causal LM.

The local teacher and student are ordinary Llama or Qwen2 models, so transformers,
PEFT and vLLM all load the directories we save.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from distill_ray.errors import DistillError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # model.dtype's names


@dataclass(frozen=True)
class ModelShape:
    """The few numbers that size a decoder-only transformer."""

    hidden_size: int  # width of the residual stream
    num_layers: int  # transformer blocks
    num_heads: int  # attention heads; hidden_size / num_heads must be a vLLM-supported head size (32, 64, ...)
    intermediate_size: int  # MLP width
    num_kv_heads: int | None = None  # grouped-query attention; None means num_heads
    max_position_embeddings: int = 512  # longest prompt + response the model is built for


ARCHITECTURES = ("llama", "qwen2")


def build_causal_lm(
    arch: str,
    shape: ModelShape,
    vocab_size: int,
    *,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    seed: int = 0,
    tie_word_embeddings: bool = False,
) -> PreTrainedModel:
    """A randomly initialised Llama or Qwen2 causal LM of the given shape, in float32."""
    if arch not in ARCHITECTURES:
        raise DistillError(f"model.arch: unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    if shape.hidden_size % shape.num_heads:
        raise DistillError(
            f"model shape: hidden_size {shape.hidden_size} is not divisible by num_heads {shape.num_heads}"
        )
    common = dict(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads or shape.num_heads,
        max_position_embeddings=shape.max_position_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
        rms_norm_eps=1e-5,
        torch_dtype="float32",
    )
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        config, cls = LlamaConfig(**common), LlamaForCausalLM
    else:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        config, cls = Qwen2Config(**common), Qwen2ForCausalLM
    torch.manual_seed(seed)
    return cls(config)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def load_causal_lm(name_or_dir: str | Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained` with a one-line error for a missing directory."""
    path = Path(name_or_dir)
    if not path.exists() and ("/" not in str(name_or_dir) or str(name_or_dir).startswith((".", "/"))):
        raise DistillError(f"model: no model directory at {name_or_dir}")
    try:
        return AutoModelForCausalLM.from_pretrained(str(name_or_dir), dtype=dtype)
    except OSError as exc:
        raise DistillError(f"model: cannot load {name_or_dir}: {str(exc).splitlines()[0]}") from exc
