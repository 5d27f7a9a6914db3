"""Reading prompt/response rows from JSONL, JSON, Parquet or a `datasets` name or directory.

Every row becomes an `Example(prompt, response, meta)`. Field names are configurable
(plain prompt/response, or Dolly's instruction/context/response). Bad input is reported as a
one-line `DistillError` naming the file, the line or row, and the field; with
`bad_rows="skip"` such rows are skipped and counted instead (`LoadReport`).
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
    location: str = ""  # where the row is: "file:line" (JSONL) or "file: row N", for messages about it


@dataclass(frozen=True)
class FieldMap:
    prompt: str = "prompt"  # field holding the prompt / instruction
    response: str = "response"  # field holding the reference response
    context: str | None = "context"  # optional extra input appended to the prompt

    @classmethod
    def dolly(cls) -> "FieldMap":
        return cls(prompt="instruction", response="response", context="context")


@dataclass
class LoadReport:
    """What loading found: rows read, and the bad ones skipped (`bad_rows="skip"`)."""

    rows: int = 0  # rows read, good and bad
    bad: int = 0  # rows skipped as malformed, oversized or invalid
    first_bad: str = ""  # the first skipped row's "file:line: reason"

    def __str__(self) -> str:
        return f"{self.rows} rows, {self.bad} bad skipped" + (f" (first: {self.first_bad})" if self.bad else "")


BAD_ROWS = ("error", "skip")

# A row is (location, parsed object) or (location, the DistillError saying why it is bad): readers
# report every row, and the caller's policy (`bad_rows`) decides whether a bad one stops the load.
Row = tuple[str, dict | DistillError]


def _skip_rest_of_line(f) -> None:
    while True:
        chunk = f.readline(1 << 20)
        if not chunk or chunk.endswith(b"\n"):
            return


def _parse_jsonl_line(location: str, raw: bytes) -> dict | DistillError:
    try:
        row = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, and int literals over Python's digit limit
        msg = getattr(exc, "msg", None) or str(exc).split(":")[0]
        return DistillError(f"{location}: malformed JSON line ({msg})")
    except RecursionError:
        return DistillError(f"{location}: malformed JSON line (nested too deeply)")
    if not isinstance(row, dict):
        return DistillError(f"{location}: expected a JSON object, got {type(row).__name__}")
    return row


def _read_jsonl(path: Path, max_row_bytes: int | None = None) -> list[Row]:
    rows: list[Row] = []
    with path.open("rb") as f:
        lineno = 0
        while True:
            # a bounded read: an oversized line (or a file without newlines) never sits in memory whole
            raw = f.readline(max_row_bytes + 1) if max_row_bytes else f.readline()
            if not raw:
                break
            lineno += 1
            location = f"{path}:{lineno}"
            if max_row_bytes and len(raw.rstrip(b"\r\n")) > max_row_bytes:
                if not raw.endswith(b"\n"):
                    _skip_rest_of_line(f)
                rows.append((location, DistillError(f"{location}: row longer than data.max_row_bytes={max_row_bytes}")))
                continue
            if raw.strip():
                rows.append((location, _parse_jsonl_line(location, raw)))
    return rows


def _read_json(path: Path) -> list[Row]:
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        line = getattr(exc, "lineno", None)
        at = f":{line}" if line else ""
        raise DistillError(f"{path}{at}: malformed JSON ({getattr(exc, 'msg', None) or type(exc).__name__})") from None
    if isinstance(data, dict):  # {"data": [...]} or {"train": [...]} style
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DistillError(f"{path}: expected a JSON list of rows (or an object holding one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise DistillError(f"{path}: expected a JSON list of rows")
    out: list[Row] = []
    for i, row in enumerate(data):
        location = f"{path}: row {i}"
        if not isinstance(row, dict):
            row = DistillError(f"{location}: expected a JSON object, got {type(row).__name__}")
        out.append((location, row))
    return out


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DistillError(f"{path}: cannot read Parquet ({str(exc).splitlines()[0]})") from None
    return [(f"{path}: row {i}", row) for i, row in enumerate(table.to_pylist())]


def _read_datasets(source: str, split: str) -> list[Row]:
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


def _read_any(source: str | Path, split: str, max_row_bytes: int | None) -> list[Row]:
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".parquet"):
        if not path.is_file():
            raise DistillError(f"{source}: data file not found")
        if suffix == ".jsonl":
            return _read_jsonl(path, max_row_bytes)
        if suffix == ".json":
            return _read_json(path)
        return _read_parquet(path)
    if path.is_dir() or "/" in str(source) and not str(source).startswith((".", "/")):
        return _read_datasets(str(source), split)
    raise DistillError(f"{source}: data file not found (expected .jsonl, .json, .parquet, or a datasets directory)")


def read_rows(source: str | Path, split: str = "train", max_row_bytes: int | None = None) -> list[tuple[str, dict]]:
    """Raw rows with a location string each, from a file, a directory or a `datasets` name;
    the first malformed or oversized row raises its DistillError."""
    rows = _read_any(source, split, max_row_bytes)
    for _, row in rows:
        if isinstance(row, DistillError):
            raise row
    return rows


def _text_field(location: str, row: dict, name: str) -> str:
    value = row[name]
    if not isinstance(value, str):
        raise DistillError(f"{location}: field {name!r} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") that JSON allows but no tokenizer takes
        raise DistillError(f"{location}: field {name!r} is not valid Unicode text (unpaired surrogate)") from None
    return value


def to_example(location: str, row: dict, fields: FieldMap, index: int) -> Example:
    """Validate one raw row and turn it into an Example."""
    for name in (fields.prompt, fields.response):
        if name not in row:
            raise DistillError(f"{location}: missing field {name!r} (row has {', '.join(sorted(map(str, row))) or 'no fields'})")
        _text_field(location, row, name)
    prompt, response = row[fields.prompt].strip(), row[fields.response].strip()
    if not prompt:
        raise DistillError(f"{location}: empty field {fields.prompt!r}")
    if not response:
        raise DistillError(f"{location}: empty field {fields.response!r}")
    if fields.context and row.get(fields.context):
        context = _text_field(location, row, fields.context)
        prompt = f"{prompt}\n{context.strip()}"
    skip = {fields.prompt, fields.response, fields.context}
    meta = {k: v for k, v in row.items() if k not in skip}
    meta["row"] = index
    return Example(prompt=prompt, response=response, meta=meta, location=location)


def load_examples_with_report(
    source: str | Path,
    fields: FieldMap = FieldMap(),
    split: str = "train",
    *,
    max_row_bytes: int | None = None,
    bad_rows: str = "error",
) -> tuple[list[Example], LoadReport]:
    """Examples of `source` and what loading found. A malformed, oversized (over `max_row_bytes`,
    JSONL) or invalid row stops the load with its one-line error (`bad_rows="error"`), or is
    skipped and counted (`bad_rows="skip"`); a source with no valid row at all is an error."""
    if bad_rows not in BAD_ROWS:
        raise DistillError(f"data.bad_rows: expected one of {BAD_ROWS}, got {bad_rows!r}")
    rows = _read_any(source, split, max_row_bytes)
    if not rows:
        raise DistillError(f"{source}: no rows")
    report = LoadReport(rows=len(rows))
    examples = []
    for i, (location, row) in enumerate(rows):
        try:
            if isinstance(row, DistillError):
                raise row
            examples.append(to_example(location, row, fields, i))
        except DistillError as exc:
            if bad_rows == "error":
                raise exc from None
            report.bad += 1
            report.first_bad = report.first_bad or str(exc)
    if not examples:
        raise DistillError(f"{source}: no valid rows ({report.bad} of {report.rows} bad; first: {report.first_bad})")
    return examples, report


def load_examples(
    source: str | Path,
    fields: FieldMap = FieldMap(),
    split: str = "train",
    *,
    max_row_bytes: int | None = None,
    bad_rows: str = "error",
) -> list[Example]:
    """Examples of `source` (see `load_examples_with_report`)."""
    return load_examples_with_report(source, fields, split, max_row_bytes=max_row_bytes, bad_rows=bad_rows)[0]


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
