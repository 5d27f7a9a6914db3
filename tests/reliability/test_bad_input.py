"""Bad input: malformed and oversized JSONL rows (stop with file:line, or skip and count), rows
longer than the model's context (skip or truncate, counted), no valid row at all, a teacher with
another tokenizer, an architecture vLLM cannot load (falls back to torch), and property-based
fuzzing of the loader: anything but a one-line DistillError naming file and line is a bug.

The tokenizer check itself is tested in tests/pipeline/test_driver.py
(`test_a_teacher_with_another_tokenizer_is_refused_before_anything_starts`, in process); here the
CLI's side of it: exit status 2 and one line."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill_ray.config import Config, DataConfig
from distill_ray.data.loading import load_examples, load_examples_with_report
from distill_ray.data.prepare import model_context_length, prepare_split, run_context_length
from distill_ray.errors import DistillError
from distill_ray.models.tokenizer import load_tokenizer

GOOD = {"prompt": "say hi", "response": "hi"}

# one line of each kind of bad row, and the start of the message it must produce
BAD_LINES = {
    "malformed": (b'{"prompt": "a", "response": ', "malformed JSON line"),
    "not an object": (b"[1, 2]", "expected a JSON object, got list"),
    "missing field": (b'{"prompt": "a"}', "missing field 'response'"),
    "wrong type": (b'{"prompt": "a", "response": 3}', "field 'response' must be a string, got int"),
    "empty": (b'{"prompt": "a", "response": "  "}', "empty field 'response'"),
    "unpaired surrogate": (b'{"prompt": "\\ud800", "response": "b"}', "field 'prompt' is not valid Unicode text"),
    "not UTF-8": (b'{"prompt": "\xff\xfe", "response": "b"}', "malformed JSON line"),
    "nested too deeply": (b"[" * 5000, "malformed JSON line"),
    "huge integer": (b'{"prompt": "a", "response": "b", "n": ' + b"9" * 5000 + b"}", "malformed JSON line"),
    "oversized": (b'{"prompt": "' + b"x" * 20_000 + b'", "response": "b"}', "row longer than data.max_row_bytes=10000"),
}
MAX_ROW_BYTES = 10_000


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


@pytest.mark.parametrize("kind", list(BAD_LINES))
def test_each_kind_of_bad_row_stops_the_load_with_file_and_line(tmp_path, kind):
    line, message = BAD_LINES[kind]
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD).encode(), line, json.dumps(GOOD).encode()])
    with pytest.raises(DistillError) as info:
        load_examples(path, max_row_bytes=MAX_ROW_BYTES)
    assert str(info.value).startswith(f"{path}:2: {message}"), str(info.value)
    assert "\n" not in str(info.value)


def test_skip_mode_skips_every_bad_row_counts_them_and_keeps_the_good_ones(tmp_path):
    good = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(3)]
    lines = [json.dumps(good[0]).encode()] + [line for line, _ in BAD_LINES.values()]
    lines += [json.dumps(g).encode() for g in good[1:]]
    path = write_lines(tmp_path / "d.jsonl", lines)
    examples, report = load_examples_with_report(path, max_row_bytes=MAX_ROW_BYTES, bad_rows="skip")
    assert [(e.prompt, e.response) for e in examples] == [(g["prompt"], g["response"]) for g in good]
    assert (report.rows, report.bad) == (len(lines), len(BAD_LINES))
    assert report.first_bad.startswith(f"{path}:2: malformed JSON line")


def test_an_oversized_line_is_never_read_whole(tmp_path):
    """A 50 MB line without a newline (a binary file renamed .jsonl): reported, not parsed."""
    path = tmp_path / "big.jsonl"
    with path.open("wb") as f:
        f.write(json.dumps(GOOD).encode() + b"\n")
        f.write(b"x" * (50 << 20))
    examples, report = load_examples_with_report(path, max_row_bytes=1 << 20, bad_rows="skip")
    assert len(examples) == 1 and report.bad == 1
    assert report.first_bad == f"{path}:2: row longer than data.max_row_bytes={1 << 20}"


def test_the_run_report_counts_skipped_rows(tmp_path, tiny_local):
    lines = [json.dumps(GOOD).encode(), b"not json", json.dumps(GOOD).encode()]
    path = write_lines(tmp_path / "d.jsonl", lines)
    cfg = DataConfig(bad_rows="skip")
    rows, report = prepare_split(cfg, load_tokenizer(tiny_local["tokenizer"]), str(path), shuffle=False)
    assert len(rows) == 2 and report.skipped_bad == 1
    assert f"skipped 1 bad row(s) (first: {path}:2: malformed JSON line" in str(report)


UNREPRESENTABLE = [GOOD, {"prompt": "name a fruit", "response": "APPLE"}, GOOD, {"prompt": "say LAMP", "response": "lamp"}]


def test_rows_the_tokenizer_cannot_represent_stop_the_load_or_are_skipped_or_kept_and_counted(tmp_path, tiny_local):
    """The local BPE has no A, P, L, E or M: 'APPLE' is five <unk> tokens, which decode to nothing."""
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(r).encode() for r in UNREPRESENTABLE])
    tokenizer = load_tokenizer(tiny_local["tokenizer"])
    with pytest.raises(DistillError) as info:
        prepare_split(DataConfig(), tokenizer, str(path), shuffle=False)  # data.unrepresentable=error, the default
    assert str(info.value) == (f"{path}:2: the tokenizer cannot represent the response: 'APPLE' decodes to '', "
                               "5 <unk> token(s); set data.unrepresentable=skip or keep to go on")

    rows, report = prepare_split(DataConfig(unrepresentable="skip"), tokenizer, str(path), shuffle=False)
    assert [r.reference for r in rows] == ["hi", "hi"] and (report.kept, report.unrepresentable) == (2, 2)
    assert f"skipped 2 row(s) the tokenizer cannot represent (first: {path}:2: the tokenizer cannot represent the response" in str(report)

    rows, report = prepare_split(DataConfig(unrepresentable="keep"), tokenizer, str(path), shuffle=False)
    assert [r.reference for r in rows] == [r["response"] for r in UNREPRESENTABLE]
    assert (report.kept, report.unrepresentable) == (4, 2) and report.unk_tokens == 9  # APPLE 5 + LAMP 4
    assert f"2 kept row(s) the tokenizer cannot represent (9 <unk> token(s); first: {path}:2: " in str(report)


def cli_error(capsys, *args: str) -> str:
    """`distill-ray ARGS` in this process (the subprocess contract is tests/test_cli.py's): exit
    status 2 and exactly one line on stderr, `error: ...`; returns that line."""
    from distill_ray.cli import main

    assert main(list(args)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_no_valid_rows_is_a_one_line_cli_error(tmp_path, tiny_local, capsys):
    from test_cli import _config_for

    data = write_lines(tmp_path / "d.jsonl", [b"{", b'{"prompt": ""}', b"[]"])
    config = _config_for(tmp_path, tiny_local, data)
    line = cli_error(capsys, "train", str(config), "--set", "data.bad_rows=skip")
    assert f"{data}: no valid rows (3 of 3 bad; first: {data}:1: malformed JSON line" in line
    assert not (tmp_path / "out" / "student").exists()


def test_eval_on_text_the_tokenizer_cannot_represent_is_a_one_line_cli_error(tmp_path, tiny_local, capsys):
    data = write_lines(tmp_path / "d.jsonl", [json.dumps(r).encode() for r in UNREPRESENTABLE])
    line = cli_error(capsys, "eval", "--model", tiny_local["student"], "--data", str(data), "--out", str(tmp_path / "e.json"))
    assert line == (f"error: {data}:2: the tokenizer cannot represent the response: 'APPLE' decodes to '', "
                    "5 <unk> token(s); set data.unrepresentable=skip or keep to go on")
    assert not (tmp_path / "e.json").exists()


def test_a_teacher_with_another_tokenizer_is_a_one_line_cli_error(tmp_path, tiny_local, capsys):
    from test_cli import _config_for

    from distill_ray.models.tokenizer import train_tokenizer

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_local["teacher"], teacher)
    train_tokenizer(["a different corpus entirely", "with other words"] * 50, vocab_size=300).save_pretrained(teacher)
    config = _config_for(tmp_path, tiny_local, f"{tiny_local['data']}/train.jsonl")
    line = cli_error(capsys, "train", str(config), "--set", "method.name=kd", "--set", f"model.teacher={teacher}")
    assert f"model.teacher={teacher}" in line and "tokenizers differ" in line


# ---------------------------------------------------------------- the model's context


@pytest.fixture
def short_context_student(tiny_local, tmp_path) -> str:
    """The tiny student, its config saying it was built for 40 positions (only the config is read)."""
    student = tmp_path / "student"
    shutil.copytree(tiny_local["student"], student)
    config = json.loads((student / "config.json").read_text())
    config["max_position_embeddings"] = 40
    (student / "config.json").write_text(json.dumps(config))
    return str(student)


def test_rows_longer_than_the_model_context_are_skipped_or_truncated_and_counted(tiny_local, tmp_path, short_context_student):
    cfg = Config()
    cfg.model.student, cfg.method.name = short_context_student, "sft"
    assert run_context_length(cfg) == 40 and model_context_length(tiny_local["student"]) == 512
    lines = [{"prompt": "count to 3", "response": "0 1 2"}, {"prompt": "count " * 30, "response": "0 1 2"},
             {"prompt": "count to 9", "response": " ".join(map(str, range(40)))}]
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(r).encode() for r in lines])
    tokenizer = load_tokenizer(tiny_local["tokenizer"])

    rows, report = prepare_split(cfg.data, tokenizer, str(path), shuffle=False, max_total_tokens=40)
    assert len(rows) == 1 and report.skipped_context == 2
    assert "2 (longer than the model's context of 40 tokens)" in str(report)

    cfg.data.too_long = "truncate"
    rows, report = prepare_split(cfg.data, tokenizer, str(path), shuffle=False, max_total_tokens=40)
    assert len(rows) == 3 and report.truncated == 2
    for row in rows:
        assert len(row.prompt_ids) + len(row.response_ids) <= 40
        assert row.prompt_ids[0] == tokenizer.bos_token_id and row.response_ids[-1] == tokenizer.eos_token_id
    assert rows[2].prompt_ids == prepare_split(cfg.data, tokenizer, str(path), shuffle=False)[0][2].prompt_ids  # prompt kept


# ---------------------------------------------------------------- vLLM fallback


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_an_architecture_vllm_lacks_falls_back_to_the_torch_backend(ray_local, tiny_local, tmp_path, capfd):
    import transformers

    from distill_ray.rollout.sampling import SamplingConfig
    from distill_ray.rollout.workers import EngineConfig, create_rollout_worker, vllm_cannot_load

    tokenizer = load_tokenizer(tiny_local["tokenizer"])
    neo = tmp_path / "gpt_neo"  # GPT-Neo: transformers has it, vLLM's model registry does not
    config = transformers.GPTNeoConfig(vocab_size=len(tokenizer), hidden_size=32, num_layers=1, num_heads=2,
                                       attention_types=[[["global"], 1]], max_position_embeddings=128,
                                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(neo)
    assert vllm_cannot_load(tiny_local["student"]) is None  # Llama: vLLM loads it, no fallback
    assert "GPTNeoForCausalLM" in vllm_cannot_load(str(neo))

    engine = EngineConfig(backend="vllm", eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    worker = create_rollout_worker(str(neo), engine=engine, num_cpus=1)
    try:
        assert ray_local.get(worker.ready.remote())["backend"] == "torch"
        batch = ray_local.get(worker.generate.remote([[tokenizer.bos_token_id, 5, 6]], [0], SamplingConfig(max_new_tokens=4)))
    finally:
        ray_local.kill(worker)
    assert batch.response_mask.sum() >= 1
    err = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert err == [f"warning: rollout.backend=vllm: vLLM has no implementation of GPTNeoForCausalLM ({neo}); "
                   "using the torch backend for it"]


# ---------------------------------------------------------------- fuzzing the loader

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
_json = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)
_text = st.text(min_size=1, max_size=40).filter(lambda s: s.strip())
_valid_row = st.fixed_dictionaries({"prompt": _text, "response": _text}, optional={"task": _json, "context": st.text(max_size=20)})
# lines that can never be a valid row: random bytes, JSON that is not an object, objects without "response"
_garbage = (st.binary(max_size=120).filter(lambda b: b"\n" not in b)
            | _json.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode())
            | st.dictionaries(st.text(max_size=8).filter(lambda k: k != "response"), _json, max_size=4).map(lambda v: json.dumps(v).encode()))
_any_line = _garbage | _valid_row.map(lambda r: json.dumps(r, ensure_ascii=False).encode()) | st.binary(max_size=300)
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _write(lines: list[bytes]) -> Path:
    path = Path(tempfile.mkdtemp(prefix="fuzz")) / "rows.jsonl"
    path.write_bytes(b"\n".join(lines))
    return path


@FUZZ
@given(st.lists(_any_line, max_size=12), st.sampled_from(["error", "skip"]))
def test_fuzz_the_loader_raises_nothing_but_a_one_line_error_naming_file_and_line(lines, bad_rows):
    path = _write(lines)
    try:
        examples, report = load_examples_with_report(path, max_row_bytes=200, bad_rows=bad_rows)
    except DistillError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith(str(path)), message
        whole_file = message in (f"{path}: no rows",) or message.startswith(f"{path}: no valid rows (")
        assert whole_file or re.match(rf"{re.escape(str(path))}:\d+: ", message), message
        assert bad_rows == "error" or whole_file, message  # skip mode fails only when nothing is left
    else:
        assert len(examples) + report.bad == report.rows
        assert all(e.prompt.strip() and e.response.strip() for e in examples)
    finally:
        shutil.rmtree(path.parent)


@FUZZ
@given(st.lists(_valid_row, min_size=1, max_size=10), st.lists(_garbage, max_size=6), st.randoms(use_true_random=False))
def test_fuzz_valid_rows_always_load_whatever_surrounds_them(rows, garbage, rnd):
    lines = [(json.dumps(r, ensure_ascii=rnd.random() < 0.5).encode(), r) for r in rows] + [(g, None) for g in garbage]
    rnd.shuffle(lines)
    path = _write([line for line, _ in lines])
    try:
        examples = load_examples(path, bad_rows="skip")
    finally:
        shutil.rmtree(path.parent)
    want = []
    for _, r in lines:
        if r is not None:
            prompt = r["prompt"].strip() + (f"\n{r['context'].strip()}" if r.get("context") else "")
            want.append((prompt, r["response"].strip()))
    assert [(e.prompt, e.response) for e in examples] == want
