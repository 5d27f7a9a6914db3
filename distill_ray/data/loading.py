"""Reading prompt/response rows from JSONL, JSON, Parquet or a `datasets` name or directory.

Every row becomes an `Example(prompt, response, meta)`. Field names are configurable
(plain prompt/response, or Dolly's instruction/context/response). Bad input is reported as a
one-line `DistillError` naming the file, the line or row, and the field.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from distill_ray.errors import DistillError


@dataclass
class Example:
    prompt: str  # the instruction, with the context appended when there is one
    response: str  # the reference response
    meta: dict = field(default_factory=dict)  # other fields of the row (e.g. "task"), and "row": its index


@dataclass(frozen=True)
class FieldMap:
    prompt: str = "prompt"  # field holding the prompt / instruction
    response: str = "response"  # field holding the reference response
    context: str | None = "context"  # optional extra input appended to the prompt

    @classmethod
    def dolly(cls) -> "FieldMap":
        return cls(prompt="instruction", response="response", context="context")


def _read_jsonl(path: Path) -> list[tuple[str, dict]]:
    rows = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                msg = getattr(exc, "msg", None) or str(exc).split(":")[0]
                raise DistillError(f"{path}:{lineno}: malformed JSON line ({msg})") from None
            if not isinstance(row, dict):
                raise DistillError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append((f"{path}:{lineno}", row))
    return rows


def _read_json(path: Path) -> list[tuple[str, dict]]:
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        at = f":{line}" if line else ""
        raise DistillError(f"{path}{at}: malformed JSON ({getattr(exc, 'msg', exc)})") from None
    if isinstance(data, dict):  # {"data": [...]} or {"train": [...]} style
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DistillError(f"{path}: expected a JSON list of rows (or an object holding one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise DistillError(f"{path}: expected a JSON list of rows")
    out = []
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DistillError(f"{path}: row {i}: expected a JSON object, got {type(row).__name__}")
        out.append((f"{path}: row {i}", row))
    return out


def _read_parquet(path: Path) -> list[tuple[str, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DistillError(f"{path}: cannot read Parquet ({str(exc).splitlines()[0]})") from None
    return [(f"{path}: row {i}", row) for i, row in enumerate(table.to_pylist())]


def _read_datasets(source: str, split: str) -> list[tuple[str, dict]]:
    import datasets

    path = Path(source)
    try:
        if path.is_dir() and any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(str(source), split=split)
    except Exception as exc:  # datasets raises many types; the user needs the first line only
        raise DistillError(f"{source}: cannot load dataset ({str(exc).splitlines()[0]})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DistillError(f"{source}: no split {split!r} (has {', '.join(ds)})")
        ds = ds[split]
    return [(f"{source}[{split}] row {i}", row) for i, row in enumerate(ds)]


def read_rows(source: str | Path, split: str = "train") -> list[tuple[str, dict]]:
    """Raw rows with a location string each, from a file, a directory or a `datasets` name."""
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".parquet"):
        if not path.is_file():
            raise DistillError(f"{source}: data file not found")
        if suffix == ".jsonl":
            return _read_jsonl(path)
        if suffix == ".json":
            return _read_json(path)
        return _read_parquet(path)
    if path.is_dir() or "/" in str(source) and not str(source).startswith((".", "/")):
        return _read_datasets(str(source), split)
    raise DistillError(f"{source}: data file not found (expected .jsonl, .json, .parquet, or a datasets directory)")


def to_example(location: str, row: dict, fields: FieldMap, index: int) -> Example:
    """Validate one raw row and turn it into an Example."""
    for name in (fields.prompt, fields.response):
        if name not in row:
            raise DistillError(f"{location}: missing field {name!r} (row has {', '.join(sorted(row)) or 'no fields'})")
        if not isinstance(row[name], str):
            raise DistillError(f"{location}: field {name!r} must be a string, got {type(row[name]).__name__}")
    prompt, response = row[fields.prompt].strip(), row[fields.response].strip()
    if not prompt:
        raise DistillError(f"{location}: empty field {fields.prompt!r}")
    if not response:
        raise DistillError(f"{location}: empty field {fields.response!r}")
    if fields.context and row.get(fields.context):
        context = row[fields.context]
        if not isinstance(context, str):
            raise DistillError(f"{location}: field {fields.context!r} must be a string")
        prompt = f"{prompt}\n{context.strip()}"
    skip = {fields.prompt, fields.response, fields.context}
    meta = {k: v for k, v in row.items() if k not in skip}
    meta["row"] = index
    return Example(prompt=prompt, response=response, meta=meta)


def load_examples(source: str | Path, fields: FieldMap = FieldMap(), split: str = "train") -> list[Example]:
    rows = read_rows(source, split)
    if not rows:
        raise DistillError(f"{source}: no rows")
    return [to_example(loc, row, fields, i) for i, (loc, row) in enumerate(rows)]


def shuffled(examples: list[Example], seed: int) -> list[Example]:
    """A deterministic shuffle (same seed, same order, on every machine)."""
    out = list(examples)
    random.Random(seed).shuffle(out)
    return out


def split_examples(examples: list[Example], fractions: dict[str, float], seed: int) -> dict[str, list[Example]]:
    """Deterministic splits by fraction, e.g. {"train": 0.9, "validation": 0.05, "test": 0.05}."""
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise DistillError(f"split fractions must sum to 1, got {total}")
    rows = shuffled(examples, seed)
    out, start = {}, 0
    names = list(fractions)
    for i, name in enumerate(names):
        end = len(rows) if i == len(names) - 1 else start + round(fractions[name] * len(rows))
        out[name] = rows[start:end]
        start = end
    return out
