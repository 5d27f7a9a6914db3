"""From a DataConfig to tokenized rows: load, map fields, shuffle, tokenize, filter by length."""

from __future__ import annotations

import json
from pathlib import Path

from distill_ray.config import Config, DataConfig
from distill_ray.data.encoding import Encoded, LengthReport, chat_format, encode_examples
from distill_ray.data.loading import FieldMap, load_examples_with_report, shuffled
from distill_ray.methods import METHODS


def field_map(cfg: DataConfig) -> FieldMap:
    return FieldMap(prompt=cfg.prompt_field, response=cfg.response_field, context=cfg.context_field)


def model_context_length(model: str) -> int | None:
    """The longest sequence `model` (a directory or hub name) is built for, from its config
    (max_position_embeddings, or GPT-2's n_positions); None when the config does not say."""
    path = Path(model) / "config.json"
    try:
        if path.is_file():
            config = json.loads(path.read_text())
        else:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(model).to_dict()
    except Exception:  # an unreadable config fails later, where the model is loaded, with its own message
        return None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(config.get(key), int) and config[key] > 0:
            return config[key]
    return None


def run_context_length(cfg: Config) -> int | None:
    """The context every training sequence must fit: the student's, and the teacher's when the loss uses it."""
    models = [cfg.model.student] + ([cfg.model.teacher] if METHODS[cfg.method.name].needs_teacher else [])
    lengths = [n for n in map(model_context_length, models) if n is not None]
    return min(lengths) if lengths else None


def prepare_split(
    cfg: DataConfig, tokenizer, source: str, *, shuffle: bool, max_rows: int | None = None,
    max_total_tokens: int | None = None,
) -> tuple[list[Encoded], LengthReport]:
    """Tokenized rows of `source`; training rows are shuffled deterministically (cfg.shuffle_seed).

    Bad rows stop the load or are skipped (cfg.bad_rows); rows whose text the tokenizer cannot
    represent stop the load, are skipped or kept (cfg.unrepresentable); rows longer than cfg's
    limits, or than `max_total_tokens` (the model's context, `run_context_length`), are skipped or
    truncated (cfg.too_long). The report counts all three.
    """
    examples, loaded = load_examples_with_report(
        source, field_map(cfg), split=cfg.split, max_row_bytes=cfg.max_row_bytes, bad_rows=cfg.bad_rows
    )
    if shuffle:
        examples = shuffled(examples, cfg.shuffle_seed)
    if max_rows:
        examples = examples[:max_rows]
    rows, report = encode_examples(
        examples, tokenizer, cfg.template, cfg.max_prompt_tokens, cfg.max_response_tokens, cfg.too_long,
        max_total_tokens=max_total_tokens, chat=chat_format(tokenizer, cfg.chat_template, cfg.system_prompt),
        unrepresentable=cfg.unrepresentable,
    )
    report.skipped_bad, report.first_bad = loaded.bad, loaded.first_bad
    return rows, report
