"""From a DataConfig to tokenized rows: load, map fields, shuffle, tokenize, filter by length."""

from __future__ import annotations

from distill_ray.config import DataConfig
from distill_ray.data.encoding import Encoded, LengthReport, encode_examples
from distill_ray.data.loading import FieldMap, load_examples, shuffled


def field_map(cfg: DataConfig) -> FieldMap:
    return FieldMap(prompt=cfg.prompt_field, response=cfg.response_field, context=cfg.context_field)


def prepare_split(
    cfg: DataConfig, tokenizer, source: str, *, shuffle: bool, max_rows: int | None = None
) -> tuple[list[Encoded], LengthReport]:
    """Tokenized rows of `source`; training rows are shuffled deterministically (cfg.shuffle_seed)."""
    examples = load_examples(source, field_map(cfg), split=cfg.split)
    if shuffle:
        examples = shuffled(examples, cfg.shuffle_seed)
    if max_rows:
        examples = examples[:max_rows]
    return encode_examples(
        examples, tokenizer, cfg.template, cfg.max_prompt_tokens, cfg.max_response_tokens, cfg.too_long
    )
