"""The method table (distill_ray/methods.py): one spec per method, read everywhere, and the
cross-field rules it drives, checked at config load with the keys named."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from distill_ray.config import Config, Method, load_config
from distill_ray.errors import DistillError
from distill_ray.methods import METHODS, method_spec

PACKAGE = Path(__file__).resolve().parents[1] / "distill_ray"


def cfg_for(name: str, combine_with: str = "none") -> Config:
    cfg = Config()
    cfg.method.name, cfg.method.combine_with = name, combine_with
    return cfg


def test_the_table_has_exactly_the_methods_a_config_accepts():
    assert list(METHODS) == list(typing.get_args(Method))
    assert all(spec.name == name for name, spec in METHODS.items())


@pytest.mark.parametrize("name, rollouts, switch, ce_only, needs_teacher", [
    ("sft", False, False, True, False),
    ("kd", False, False, False, True),
    ("seqkd", False, False, True, True),
    ("sgo", True, False, False, True),
    ("switch", True, True, False, True),
    ("okd", False, False, False, True),
])
def test_what_each_method_does(name, rollouts, switch, ce_only, needs_teacher):
    spec = method_spec(cfg_for(name))
    assert (spec.rollouts, spec.switch, spec.ce_only, spec.needs_teacher) == (rollouts, switch, ce_only, needs_teacher)
    assert spec.mixes_dataset == (name in ("sgo", "switch")) and spec.online_teacher == (name == "okd")
    assert spec.in_process == (name in ("sft", "kd"))


def test_okd_combined_with_sequences_uses_rollouts_without_sgos_mixing():
    with_sgo, with_switch = method_spec(cfg_for("okd", "sgo")), method_spec(cfg_for("okd", "switch"))
    assert with_sgo.rollouts and not with_sgo.switch and not with_sgo.mixes_dataset and with_sgo.online_teacher
    assert with_switch.rollouts and with_switch.switch
    assert METHODS["okd"].rollouts is False  # the table itself is not changed


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_okd_with_switch_on_the_vllm_backend_is_refused_at_load_naming_both_keys(tmp_path):
    path = _config(tmp_path, "method:\n  name: okd\n  combine_with: switch\nrollout:\n  backend: vllm\n")
    with pytest.raises(DistillError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:3: method.combine_with: okd + SWITCH needs the teacher's online module in the rollout worker")
    assert f"{path}:5: rollout.backend is vllm (set rollout.backend=torch)" in message
    with pytest.raises(DistillError, match=r"--set method.combine_with: okd \+ SWITCH"):
        load_config(_config(tmp_path, "method: {name: okd}\nrollout: {backend: vllm}\n"), ["method.combine_with=switch"])
    # SWITCH alone runs on vLLM (the top-k rule with a vLLM teacher scorer), sgo too; okd + SWITCH on torch
    load_config(_config(tmp_path, "method: {name: switch}\nrollout: {backend: vllm}\n"))
    load_config(_config(tmp_path, "method: {name: sgo}\nrollout: {backend: vllm}\n"))
    load_config(_config(tmp_path, "method: {name: okd, combine_with: switch}\nrollout: {backend: torch}\n"))
    with pytest.raises(DistillError, match=r"method.switch.topk: must be positive"):
        load_config(_config(tmp_path, "method: {name: switch, switch: {topk: 0}}\n"))


def test_combine_with_is_refused_for_methods_that_cannot_combine(tmp_path):
    with pytest.raises(DistillError, match=r"method.combine_with: only okd can be combined with sgo or switch"):
        load_config(_config(tmp_path, "method: {name: kd, combine_with: sgo}\n"))


def test_no_module_outside_the_table_compares_method_names():
    """What a method does is read from the table: no `method == "okd"` or `in ("sft", "seqkd")` elsewhere."""
    names = "|".join(METHODS)
    pattern = re.compile(rf"""(==|!=|\bin)\s*\(?\s*["']({names})["']""")
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "methods.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code) and "combine_with" not in code:  # combine_with's values name sequence kinds
                found.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert found == []
