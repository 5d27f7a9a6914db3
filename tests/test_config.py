from pathlib import Path

import pytest

from distill_ray.config import Config, load_config
from distill_ray.errors import DistillError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_defaults_without_file():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.method.name == "kd" and cfg.trainer.zero_stage == 2


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_example_config_loads(path):
    cfg = load_config(path)
    assert cfg.method.name in ("sft", "kd", "seqkd", "sgo", "switch", "okd")


def test_one_example_per_method():
    names = {load_config(p).method.name for p in CONFIGS if p.name != "quickstart.yaml"}
    assert names == {"sft", "kd", "seqkd", "sgo", "switch", "okd"}


def test_yaml_values_and_overrides(tmp_path):
    p = write(tmp_path, "trainer:\n  lr: 1e-4\n  max_steps: 7\nmethod:\n  name: sft\n")
    cfg = load_config(p, ["trainer.lr=3e-5", "method.switch.tau0=0.3", "cluster.trainer_resources={trainer: 1}"])
    assert cfg.trainer.lr == pytest.approx(3e-5)  # the override wins over the file
    assert cfg.trainer.max_steps == 7
    assert cfg.method.name == "sft"
    assert cfg.method.switch.tau0 == pytest.approx(0.3)
    assert cfg.cluster.trainer_resources == {"trainer": 1.0}


def test_yaml_1_1_float_strings_are_floats(tmp_path):
    cfg = load_config(write(tmp_path, "trainer:\n  lr: 1e-4\n"))
    assert isinstance(cfg.trainer.lr, float) and cfg.trainer.lr == pytest.approx(1e-4)


def test_unknown_key_names_file_line_and_key(tmp_path):
    p = write(tmp_path, "trainer:\n  lr: 0.001\n  learning_rate: 0.1\n")
    with pytest.raises(DistillError) as e:
        load_config(p)
    msg = str(e.value)
    assert f"{p}:3: trainer.learning_rate: unknown key" in msg
    assert "\n" not in msg


def test_unknown_section(tmp_path):
    with pytest.raises(DistillError, match=r"run.yaml:1: optimizer: unknown key"):
        load_config(write(tmp_path, "optimizer: {lr: 1}\n"))


@pytest.mark.parametrize(
    "text, match",
    [
        ("trainer:\n  max_steps: ten\n", r"run.yaml:2: trainer.max_steps: expected int, got 'ten'"),
        ("trainer:\n  max_steps: 1.5\n", r"trainer.max_steps: expected int"),
        ("trainer:\n  lr: fast\n", r"trainer.lr: expected float, got 'fast'"),
        ("logging:\n  jsonl: 1\n", r"logging.jsonl: expected true or false"),
        ("method:\n  name: magic\n", r"method.name: expected one of 'sft'"),
        ("trainer: 3\n", r"trainer: expected a section"),
        ("trainer:\n  zero_stage: 5\n", r"trainer.zero_stage: expected one of 0"),
    ],
)
def test_wrong_types(tmp_path, text, match):
    with pytest.raises(DistillError, match=match):
        load_config(write(tmp_path, text))


def test_cross_field_validation(tmp_path):
    with pytest.raises(DistillError, match="trainer.batch_size: 10 is not divisible"):
        load_config(write(tmp_path, "trainer: {batch_size: 10, grad_accum: 4}\n"))
    with pytest.raises(DistillError, match="trainer.max_steps: must be positive"):
        load_config(None, ["trainer.max_steps=0"])
    with pytest.raises(DistillError, match="method.combine_with: only okd"):
        load_config(None, ["method.combine_with=sgo", "method.name=kd"])


def test_override_errors():
    with pytest.raises(DistillError, match="expected key=value"):
        load_config(None, ["trainer.lr"])
    with pytest.raises(DistillError, match=r"^--set trainer.nope: unknown key"):
        load_config(None, ["trainer.nope=1"])


def test_an_error_in_an_override_names_the_override_not_the_file(tmp_path):
    """Issue 15.4: `--set trainer.lr=abc` on top of a file used to blame the file."""
    p = write(tmp_path, "trainer:\n  lr: 1e-4\n  max_steps: 0\n")
    with pytest.raises(DistillError) as e:
        load_config(p, ["trainer.lr=abc"])
    assert str(e.value) == "--set trainer.lr: expected float, got 'abc'"
    with pytest.raises(DistillError, match=r"run.yaml:3: trainer.max_steps: must be positive"):  # the file's own
        load_config(p, ["trainer.lr=1e-3"])
    with pytest.raises(DistillError, match=r"^--set trainer.max_steps: must be positive"):  # a section given whole
        load_config(p, ["trainer={max_steps: -1}"])


@pytest.mark.parametrize("key", ["loss.beta", "loss.alpha", "method.lambda_on"])
def test_closed_ranges_say_closed(key):
    """Issue 15.4: loss.beta=1.5 said 'must be in (0, 1.0]' while 0 is accepted."""
    load_config(None, [f"{key}=0"])
    load_config(None, [f"{key}=1"])
    for bad in ("1.5", "-0.1"):
        with pytest.raises(DistillError) as e:
            load_config(None, [f"{key}={bad}"])
        assert str(e.value) == f"--set {key}: must be in [0, 1], got {float(bad)}"
    with pytest.raises(DistillError, match=r"rollout.top_p: must be in \(0, 1\], got 0.0"):
        load_config(None, ["rollout.top_p=0"])


def test_model_paths_are_checked_at_load_naming_the_key(tmp_path):
    """Issue 15.3: a missing teacher failed only once Ray and the ranks had started."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    p = write(tmp_path, f"model:\n  student: {model}\n  teacher: {tmp_path / 'gone'}\n")
    load_config(p)  # unchecked by default (a library call may run where the models are not)
    with pytest.raises(DistillError) as e:
        load_config(p, check_paths=True)
    assert str(e.value) == f"{p}:3: model.teacher: {tmp_path / 'gone'}: no such directory"
    with pytest.raises(DistillError, match=r"^--set model.student: .*empty: has no config.json"):
        load_config(p, [f"model.student={tmp_path / 'empty'}"], check_paths=True)
    with pytest.raises(DistillError, match=r"model.tokenizer: .*: has no tokenizer.json or tokenizer_config.json"):
        load_config(p, [f"model.teacher={model}", f"model.tokenizer={tmp_path / 'empty'}"], check_paths=True)
    with pytest.raises(DistillError, match=r"model.student: nobody/no-such-model: is neither a directory nor a model in "
                                           r"the local Hugging Face cache"):
        load_config(p, ["model.student=nobody/no-such-model"], check_paths=True)
    # sft has no teacher, and a teacher service replaces the teacher directory
    assert load_config(p, ["method.name=sft"], check_paths=True).model.teacher == str(tmp_path / "gone")
    load_config(p, ["trainer.teacher_mode=remote", "model.teacher_endpoint=http://127.0.0.1:9/teacher"], check_paths=True)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(DistillError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(DistillError, match=r"run.yaml:\d+: invalid YAML"):
        load_config(write(tmp_path, "trainer:\n  lr: [1, 2\n"))
