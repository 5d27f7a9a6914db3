import json

import pytest

from distill_ray.data.loading import FieldMap, load_examples, shuffled, split_examples
from distill_ray.errors import DistillError

ROWS = [{"prompt": f"say {i}", "response": f"{i}", "task": "t"} for i in range(10)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_json_parquet_and_datasets_dir_agree(tmp_path):
    import datasets

    jsonl = write_jsonl(tmp_path / "d.jsonl", ROWS)
    js = tmp_path / "d.json"
    js.write_text(json.dumps(ROWS))
    parquet = tmp_path / "d.parquet"
    datasets.Dataset.from_list(ROWS).to_parquet(str(parquet))
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(saved))
    loaded = [load_examples(p) for p in (jsonl, js, parquet, saved)]
    for examples in loaded:
        assert [(e.prompt, e.response) for e in examples] == [(r["prompt"], r["response"]) for r in ROWS]
    assert loaded[0][3].meta == {"task": "t", "row": 3}


def test_datasets_load_dataset_on_a_directory_of_files(tmp_path):
    d = tmp_path / "hubstyle"
    d.mkdir()
    write_jsonl(d / "train.jsonl", ROWS)
    examples = load_examples(d, split="train")
    assert len(examples) == 10


def test_dolly_fields_with_context(tmp_path):
    rows = [
        {"instruction": "Summarize.", "context": "A long text.", "response": "Short.", "category": "summarization"},
        {"instruction": "Name a colour.", "context": "", "response": "Blue."},
    ]
    examples = load_examples(write_jsonl(tmp_path / "dolly.jsonl", rows), FieldMap.dolly())
    assert examples[0].prompt == "Summarize.\nA long text."
    assert examples[1].prompt == "Name a colour."
    assert examples[0].meta["category"] == "summarization"


def test_malformed_json_line_reports_its_line_number(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "c", "response": \n')
    with pytest.raises(DistillError, match=r"bad.jsonl:3: malformed JSON line"):
        load_examples(p)


def test_non_object_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('[1, 2]\n')
    with pytest.raises(DistillError, match=r"bad.jsonl:1: expected a JSON object, got list"):
        load_examples(p)


def test_empty_response_field(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "  "}])
    with pytest.raises(DistillError, match=r"d.jsonl:2: empty field 'response'"):
        load_examples(p)


def test_missing_field_and_wrong_type(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"question": "a", "response": "b"}])
    with pytest.raises(DistillError, match=r"d.jsonl:1: missing field 'prompt' \(row has question, response\)"):
        load_examples(p)
    p = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "a", "response": 3}])
    with pytest.raises(DistillError, match=r"e.jsonl:1: field 'response' must be a string, got int"):
        load_examples(p)


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(DistillError, match="data file not found"):
        load_examples(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DistillError, match="empty.jsonl: no rows"):
        load_examples(tmp_path / "empty.jsonl")


def test_deterministic_shuffle_and_splits(tmp_path):
    examples = load_examples(write_jsonl(tmp_path / "d.jsonl", ROWS))
    a, b = shuffled(examples, 7), shuffled(examples, 7)
    assert [e.response for e in a] == [e.response for e in b]
    assert [e.response for e in a] != [e.response for e in examples]
    splits = split_examples(examples, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=1)
    assert [len(v) for v in splits.values()] == [8, 1, 1]
    seen = [e.response for part in splits.values() for e in part]
    assert sorted(seen) == sorted(r["response"] for r in ROWS)
    with pytest.raises(DistillError, match="sum to 1"):
        split_examples(examples, {"train": 0.5}, seed=0)
