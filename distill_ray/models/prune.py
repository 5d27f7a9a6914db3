"""Students pruned from their teacher: `distill-ray models prune`.

A student that starts from the teacher's own weights and tokenizer learns far faster than one
built from scratch, and it needs no separate pretraining. This module builds one the way
practitioners do (prune, then distil):

- **depth**: keep N of the teacher's decoder blocks. `--method influence` (default) measures each
  block's *block influence*, BI = 1 - cos(h_in, h_out) of the hidden state it receives and the one
  it passes on, averaged over the tokens of calibration texts (a block that barely turns the
  residual stream does little), and keeps the first block, the last block and the N-2 most
  influential blocks between them, in their original order. `--method even` keeps N evenly spaced
  blocks (first and last included).
- **MLP width** (`--mlp-width W`, optional): in every kept block, keep the W intermediate channels
  with the largest mean |act(gate(x)) * up(x)| on the calibration texts and slice gate, up and
  down projections to them.

Embeddings, final norm and head (tied or not) are kept whole, so the student shares the teacher's
vocabulary: on CPU the vocabulary (49k for SmolLM2) costs as much as several blocks, so the
student's step time falls much less than its depth (see the README's "Distill a real model").
The result is an ordinary HF directory (transformers and vLLM load it) with the tokenizer and a
`distill_ray_prune.json` manifest: kept blocks, their scores, parameters before and after.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from distill_ray.errors import DistillError
from distill_ray.fsutil import written_dir

MANIFEST = "distill_ray_prune.json"

# Calibration texts when none are given: varied instructions and answers (lists, explanations,
# code, arithmetic, rewriting), rendered with the chat template when the tokenizer has one.
CALIBRATION = [
    ("Give three tips for staying healthy.", "1. Eat a balanced diet with plenty of fruit and vegetables. "
     "2. Exercise regularly, at least thirty minutes a day. 3. Sleep seven to eight hours every night."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Explain what photosynthesis is in two sentences.", "Photosynthesis is the process by which plants use "
     "sunlight, water and carbon dioxide to make glucose. Oxygen is released as a by-product."),
    ("Write a Python function that returns the square of a number.", "def square(x):\n    return x * x"),
    ("A shop sells pens at 3 dollars each. How much do 7 pens cost?", "7 pens cost 7 x 3 = 21 dollars."),
    ("Rewrite this sentence in the passive voice: The cat chased the mouse.", "The mouse was chased by the cat."),
    ("List the days of the week.", "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday."),
    ("Summarize: The river flooded after a week of heavy rain, and the town moved its market to the hill.",
     "After heavy rain flooded the river, the town held its market on the hill."),
    ("Define the word 'ephemeral'.", "Ephemeral means lasting for a very short time."),
    ("Translate 'good morning' into Spanish.", "Buenos días."),
    ("Name two planets of the solar system.", "Mars and Jupiter."),
    ("Why is the sky blue?", "Sunlight is scattered by the air, and blue light is scattered more than red "
     "light because its wavelength is shorter, so the sky looks blue."),
]


def calibration_texts(tokenizer, path: str | None = None, limit: int = 64) -> list[str]:
    """Texts to measure importance on: `path` (JSONL rows with "prompt" and optionally "response")
    or the built-in CALIBRATION, each rendered as a chat turn when the tokenizer has a template."""
    if path:
        pairs = []
        for n, line in enumerate(Path(path).read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                pairs.append((str(row["prompt"]), str(row.get("response", ""))))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DistillError(f"models prune: --calibration: {path}:{n}: not a JSON row with a 'prompt' ({exc})") from None
        if not pairs:
            raise DistillError(f"models prune: --calibration: {path} has no rows")
    else:
        pairs = CALIBRATION
    texts = []
    for prompt, response in pairs[:limit]:
        if getattr(tokenizer, "chat_template", None):
            turns = [{"role": "user", "content": prompt}] + ([{"role": "assistant", "content": response}] if response else [])
            texts.append(tokenizer.apply_chat_template(turns, tokenize=False))
        else:
            texts.append(f"{prompt}\n{response}")
    return texts


def _layers(model):
    try:
        return model.model.layers
    except AttributeError:
        raise DistillError(f"models prune: {type(model).__name__} has no model.layers (Llama/Qwen2-style decoders only)") from None


@torch.no_grad()
def measure(model, tokenizer, texts: list[str]) -> tuple[list[float], list[torch.Tensor]]:
    """Block influence of every decoder block (mean over tokens of 1 - cos(input, output)) and the
    mean |activation| of every block's MLP intermediate channels, over `texts` (one at a time, so
    no padding enters the means)."""
    layers = _layers(model)
    bi_sum = [0.0] * len(layers)
    act_sum = [torch.zeros(layer.mlp.down_proj.in_features, dtype=torch.float64) for layer in layers]
    tokens = 0
    hooks = []

    def block_hook(i):
        def hook(module, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(h_in.double(), h_out.double(), dim=-1)
            bi_sum[i] += float((1 - cos).sum())
        return hook

    def mlp_hook(i):
        def hook(module, args):
            act_sum[i] += args[0].detach().abs().double().sum(dim=(0, 1))
        return hook

    for i, layer in enumerate(layers):
        hooks.append(layer.register_forward_hook(block_hook(i), with_kwargs=True))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(mlp_hook(i)))
    try:
        model.eval()
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            model(input_ids=ids)
            tokens += ids.shape[1]
    finally:
        for h in hooks:
            h.remove()
    if not tokens:
        raise DistillError("models prune: the calibration texts have no tokens")
    return [s / tokens for s in bi_sum], [a / tokens for a in act_sum]


def choose_blocks(scores: list[float], n: int, method: str = "influence") -> list[int]:
    """The blocks to keep, in order: first and last always, then the n-2 highest `scores` between
    them ("influence"), or n evenly spaced blocks ("even")."""
    total = len(scores)
    if not 2 <= n <= total:
        raise DistillError(f"models prune: --layers: {n} is out of range; the model has {total} blocks (keep 2 to {total})")
    if method == "even":
        return sorted({round(i * (total - 1) / (n - 1)) for i in range(n)})
    if method != "influence":
        raise DistillError(f"models prune: --method: {method!r} is not one of influence, even")
    middle = sorted(range(1, total - 1), key=lambda i: -scores[i])[: n - 2]
    return sorted([0, total - 1] + middle)


def prune_depth(model, keep: list[int]) -> None:
    """Keep only the blocks `keep` (in place), renumbering their cache slots and per-layer config lists."""
    layers = _layers(model)
    total = len(layers)
    model.model.layers = torch.nn.ModuleList([layers[i] for i in keep])
    for new, layer in enumerate(model.model.layers):
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = new
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new
    for key, value in list(vars(model.config).items()):
        if isinstance(value, list) and len(value) == total:  # e.g. Qwen2's layer_types
            setattr(model.config, key, [value[i] for i in keep])
    model.config.num_hidden_layers = len(keep)


def prune_mlp(model, width: int, importance: list[torch.Tensor]) -> None:
    """Keep the `width` most active intermediate channels of every block's MLP (in place)."""
    current = model.config.intermediate_size
    if not 1 <= width <= current:
        raise DistillError(f"models prune: --mlp-width: {width} is out of range (1 to the model's {current})")
    for layer, imp in zip(_layers(model), importance):
        idx = torch.topk(imp, width).indices.sort().values
        mlp = layer.mlp
        for name in ("gate_proj", "up_proj"):
            old = getattr(mlp, name)
            new = torch.nn.Linear(old.in_features, width, bias=old.bias is not None, dtype=old.weight.dtype)
            new.weight.data = old.weight.data[idx].clone()
            if old.bias is not None:
                new.bias.data = old.bias.data[idx].clone()
            setattr(mlp, name, new)
        old = mlp.down_proj
        new = torch.nn.Linear(width, old.out_features, bias=old.bias is not None, dtype=old.weight.dtype)
        new.weight.data = old.weight.data[:, idx].clone()
        if old.bias is not None:
            new.bias.data = old.bias.data.clone()
        mlp.down_proj = new
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = width
    model.config.intermediate_size = width


def prune(source: str | Path, out: str | Path, layers: int, *, method: str = "influence", mlp_width: int | None = None,
          calibration: str | None = None, force: bool = False, quiet: bool = False) -> dict:
    """A pruned copy of the model at `source`, saved to `out` (whole or not at all); returns its manifest."""
    from distill_ray.models.build import count_parameters, load_causal_lm
    from distill_ray.models.tokenizer import load_tokenizer

    say = (lambda *_: None) if quiet else (lambda msg: print(f"[models prune] {msg}", flush=True))
    src, dst = Path(source), Path(out)
    if not (src / "config.json").is_file():
        raise DistillError(f"models prune: --from: no model directory at {src} (run `distill-ray models import` first?)")
    if dst.exists() and not force:
        raise DistillError(f"models prune: --out: {dst} already exists (--force to replace it)")
    if dst.resolve() == src.resolve():
        raise DistillError("models prune: --out must differ from --from")
    t0 = time.perf_counter()
    total = json.loads((src / "config.json").read_text()).get("num_hidden_layers", 0)
    choose_blocks([0.0] * total, layers, method)  # the range and method checks, before any loading
    model, tokenizer = load_causal_lm(src), load_tokenizer(src)
    before = count_parameters(model)
    texts = calibration_texts(tokenizer, calibration)
    say(f"{src}: {total} blocks, {before / 1e6:.1f}M parameters; measuring block influence on {len(texts)} calibration texts")
    scores, activity = measure(model, tokenizer, texts)
    keep = choose_blocks(scores, layers, method)
    prune_depth(model, keep)
    if mlp_width is not None:
        prune_mlp(model, mlp_width, [activity[i] for i in keep])
    after = count_parameters(model)
    embed = model.get_input_embeddings().weight.numel()
    manifest = {
        "source": str(src), "method": method, "kept_blocks": keep, "block_influence": scores,
        "layers": len(keep), "layers_before": total, "mlp_width": model.config.intermediate_size,
        "parameters_before": before, "parameters": after, "embedding_parameters": embed,
        "calibration": calibration or "built-in", "calibration_texts": len(texts),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    with written_dir(dst) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    say(f"{dst}: kept blocks {keep} of {total}, MLP width {manifest['mlp_width']}, "
        f"{after / 1e6:.1f}M parameters ({embed / 1e6:.1f}M of them the embedding), {manifest['seconds']:.0f}s")
    return manifest
