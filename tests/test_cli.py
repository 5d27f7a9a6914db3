"""The CLI's bad-input contract: one line on stderr, `error: ...`, exit status 2, no traceback,
and nothing half-written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "distill_ray.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip() and "Warning" not in l and "warn(" not in l]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_config_key(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("trainer:\n  max_step: 10\n")
    assert_one_line_error(run_cli("train", str(cfg)), f"{cfg}:2: trainer.max_step: unknown key")


def test_wrong_type_in_override(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("method: {name: sft}\n")
    assert_one_line_error(run_cli("train", str(cfg), "--set", "trainer.batch_size=big"), "trainer.batch_size: expected int")


def _config_for(tmp_path, tiny_local, train_path, **extra):
    cfg = tmp_path / "run.yaml"
    lines = [
        f"model: {{teacher: {tiny_local['teacher']}, student: {tiny_local['student']}}}",
        f"data: {{train: {train_path}, validation: null, test: null}}",
        f"trainer: {{max_steps: 1, batch_size: 2, output_dir: {tmp_path / 'out'}}}",
        "method: {name: sft}",
    ]
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def test_missing_data_file(tmp_path, tiny_local):
    cfg = _config_for(tmp_path, tiny_local, tmp_path / "nope.jsonl")
    assert_one_line_error(run_cli("train", str(cfg)), "nope.jsonl: data file not found")
    assert not (tmp_path / "out" / "student").exists()


def test_malformed_json_line_gives_line_number(tmp_path, tiny_local):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a" "response": "b"}\n')
    cfg = _config_for(tmp_path, tiny_local, data)
    assert_one_line_error(run_cli("train", str(cfg)), f"{data}:2: malformed JSON line")
    assert not (tmp_path / "out" / "student").exists()


def test_empty_response_field(tmp_path, tiny_local):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": ""}\n')
    cfg = _config_for(tmp_path, tiny_local, data)
    assert_one_line_error(run_cli("train", str(cfg)), f"{data}:2: empty field 'response'")


def test_a_missing_teacher_is_one_line_naming_the_key_before_anything_starts(tmp_path, tiny_local):
    """Issue 15.3: 14 lines of actor traceback after Ray and the trainer ranks had started."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n')
    cfg = _config_for(tmp_path, tiny_local, data)
    proc = run_cli("train", str(cfg), "--set", "method.name=kd", "--set", f"model.teacher={tmp_path / 'no-teacher'}")
    assert_one_line_error(proc, f"--set model.teacher: {tmp_path / 'no-teacher'}: no such directory")
    assert "[run]" not in proc.stdout and not (tmp_path / "out").exists()  # nothing started, nothing written
    proc = run_cli("train", str(cfg), "--set", "model.student=missing/student")
    assert_one_line_error(proc, "model.student: missing/student: is neither a directory nor a model in the local Hugging Face cache")


def test_wrong_type_in_override_names_the_override(tmp_path):
    """Issue 15.4: `--set trainer.lr=abc` reported `configs/kd.yaml: trainer.lr: expected float`."""
    cfg = Path(__file__).resolve().parents[1] / "configs" / "kd.yaml"
    assert_one_line_error(run_cli("train", str(cfg), "--set", "trainer.lr=abc"), "error: --set trainer.lr: expected float, got 'abc'")


def test_missing_model_dir(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n')
    proc = run_cli("eval", "--model", str(tmp_path / "no-model"), "--data", str(data))
    assert_one_line_error(proc, "no-model")


@pytest.mark.slow
def test_train_sft_end_to_end_and_eval(tmp_path, tiny_local):
    """`distill-ray train` (sft) writes metrics, an exported student that transformers loads,
    and `distill-ray eval` scores it."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"model: {{teacher: {tiny_local['teacher']}, student: {tiny_local['student']}}}\n"
        f"data: {{train: {tiny_local['data']}/train.jsonl, validation: {tiny_local['data']}/validation.jsonl, "
        f"test: {tiny_local['data']}/test.jsonl}}\n"
        f"trainer: {{max_steps: 3, batch_size: 4, eval_every: 3, output_dir: {tmp_path / 'out'}}}\n"
        "eval: {max_examples: 8, max_new_tokens: 16}\n"
    )
    proc = run_cli("train", str(cfg), "--in-process", "--set", "method.name=kd")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "step 3/3" in proc.stdout
    metrics = [json.loads(l) for l in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and "val/rouge_l" in metrics[-1]
    assert "loss/divergence" in metrics[0]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "student")
    out_json = tmp_path / "eval.json"
    proc = run_cli("eval", "--model", str(tmp_path / "out" / "student"), "--data", f"{tiny_local['data']}/test.jsonl",
                   "--max-examples", "6", "--max-new-tokens", "8", "--out", str(out_json))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out_json.read_text())
    assert result["greedy"]["overall"]["n"] == 6
    assert set(result["greedy"]["by_length"]) == {"short (<=16)", "medium (17-64)", "long (>64)"}
    # Issue 15.6: `eval --run` takes the run's student, test split and data settings (here a template
    # of the run's own); an option given explicitly overrides the run's
    run_json = tmp_path / "run_eval.json"
    proc = run_cli("eval", "--run", str(tmp_path / "out"), "--max-examples", "6", "--max-new-tokens", "8", "--out", str(run_json))
    assert proc.returncode == 0, proc.stderr[-2000:]
    by_run = json.loads(run_json.read_text())
    assert by_run["model"] == str(tmp_path / "out" / "student") and by_run["data"] == f"{tiny_local['data']}/test.jsonl"
    strip = lambda r: {k: v for k, v in r.items() if k != "generation_seconds"}
    assert strip(by_run["greedy"]) == strip(result["greedy"])  # the same settings as the explicit call above
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    saved["data"]["template"] = "Q: {prompt}\nA:"
    saved["data"]["context_field"] = None
    (tmp_path / "out" / "config.json").write_text(json.dumps(saved))
    proc = run_cli("eval", "--run", str(tmp_path / "out"), "--max-examples", "6", "--max-new-tokens", "8",
                   "--system-prompt", "Be brief.", "--out", str(run_json))
    assert proc.returncode == 0, proc.stderr[-2000:]
    settings = json.loads(run_json.read_text())["data_settings"]
    assert settings["template"] == "Q: {prompt}\nA:" and settings["context_field"] is None
    assert settings["system_prompt"] == "Be brief."
    assert_one_line_error(run_cli("eval", "--run", str(tmp_path)), "--run", "no config.json")


def test_bench_names_an_unknown_benchmark_in_one_line(capsys):
    from distill_ray.cli import main

    assert main(["bench", "no_such_benchmark"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bench: no benchmark 'no_such_benchmark'") and "okd_vs_sgo" in err
    assert "quality" in err and "_common" not in err  # helper modules are not benchmarks
    assert len(err.splitlines()) == 1


@pytest.mark.slow
def test_a_run_prints_its_own_lines_and_leaves_the_libraries_in_rays_logs(tmp_path, tiny_local):
    """Issue 15.10: Ray's actor prefixes, per-model loading bars and library FutureWarnings stay out
    of a run's output (the actors' logs stay in Ray's log directory, which the run names);
    the actors' lines are in the directory it names. The run starts its own local Ray, as
    `distill-ray train` does. (`--verbose` echoes them, asynchronously: a 1-step run can end before
    they arrive, so that is not asserted.)"""
    data = f"{tiny_local['data']}/train.jsonl"
    cfg = _config_for(tmp_path, tiny_local, data)
    quiet = run_cli("train", str(cfg), "--set", "method.name=kd")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    text = quiet.stdout + quiet.stderr
    assert "[run] actors' output: " in quiet.stdout and "(--verbose shows it here)" in quiet.stdout
    for noise in ("pid=", "Loading weights", "FutureWarning", "real_accelerator.py"):
        assert noise not in text, f"{noise!r} in a quiet run's output:\n{text[-3000:]}"
    assert "step 1/1" in quiet.stdout
    logs = Path(quiet.stdout.split("[run] actors' output: ")[1].split(" (--verbose")[0])
    actor_logs = [p.read_text(errors="replace") for p in logs.glob("worker-*.out")]
    assert any(":actor_name:TrainerRank" in text for text in actor_logs), sorted(p.name for p in logs.iterdir())
