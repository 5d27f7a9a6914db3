import json
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from distill_ray.models.build import ModelShape, count_parameters
from distill_ray.testbed import LocalModelsSpec, init_local_models


def test_local_models_load_as_plain_hf_directories(tiny_local):
    teacher = AutoModelForCausalLM.from_pretrained(tiny_local["teacher"])
    student = AutoModelForCausalLM.from_pretrained(tiny_local["student"])
    tok = AutoTokenizer.from_pretrained(tiny_local["student"])
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert count_parameters(teacher) > count_parameters(student)
    assert teacher.config.vocab_size == student.config.vocab_size == len(tok)
    text = "Count from 3 to 7."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    for split in ("train", "validation", "test"):
        assert (Path(tiny_local["data"]) / f"{split}.jsonl").is_file()


def test_second_call_reuses_everything(tiny_local, capsys):
    root = Path(tiny_local["teacher"]).parent.parent
    marker = json.loads((Path(tiny_local["teacher"]) / "distill_ray_init.json").read_text())
    mtime = (Path(tiny_local["teacher"]) / "model.safetensors").stat().st_mtime
    from distill_ray.models.build import ModelShape

    spec = LocalModelsSpec(out_dir=str(root), num_train=600, num_validation=40, num_test=40, vocab_size=700,
                           teacher=ModelShape(**marker["teacher"]), student=ModelShape(32, 1, 1, 64, max_position_embeddings=512),
                           teacher_steps=4, student_steps=2, batch_size=8)
    result = init_local_models(spec)
    out = capsys.readouterr().out
    assert "reusing teacher" in out and "reusing student" in out and "reusing data" in out
    assert result["stats"] == {}
    assert (Path(tiny_local["teacher"]) / "model.safetensors").stat().st_mtime == mtime


def test_directories_record_the_recipe_so_old_builds_are_rebuilt(tiny_local, monkeypatch):
    from distill_ray import testbed as local

    marker = json.loads((Path(tiny_local["teacher"]) / "distill_ray_init.json").read_text())
    assert marker["recipe"] == local.RECIPE
    spec = LocalModelsSpec(teacher=ModelShape(**marker["teacher"]))
    before = spec.fingerprint("data")
    monkeypatch.setattr(local, "RECIPE", local.RECIPE + 1)  # a later version of the tasks
    assert spec.fingerprint("data") != before  # -> the old directory no longer counts as done
