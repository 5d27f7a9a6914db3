"""OKD's online module: a PEFT LoRA adapter on the teacher's top blocks.

    teacher = attach_online_module(teacher, rank=8, top_fraction=0.25)
    report = online_module_report(teacher)      # {"trainable": 16384, "fraction": 0.0042, ...}
    optim = torch.optim.AdamW(online_module_parameters(teacher), lr=1e-4)
    ...
    save_online_module(teacher, "runs/x/online_module")            # PEFT adapter format
    teacher = load_online_module(base_teacher, "runs/x/online_module")

The teacher's own weights stay frozen; only the adapter trains (see `losses/okd.py` for its
loss). LoRA's B starts at zero, so at step 0 the adapted teacher is exactly the teacher. Being
a plain PEFT adapter, the module can be served by vLLM next to the base teacher.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from distill_ray.errors import DistillError

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")  # attention projections (Llama, Qwen2)


def top_block_indices(num_blocks: int, top_fraction: float) -> list[int]:
    """The indices of the top ceil(top_fraction * num_blocks) blocks (at least one)."""
    if not 0.0 < top_fraction <= 1.0:
        raise DistillError(f"online module: top_fraction must be in (0, 1], got {top_fraction}")
    count = max(1, math.ceil(top_fraction * num_blocks))
    return list(range(num_blocks - count, num_blocks))


def attach_online_module(
    teacher: PreTrainedModel,
    *,
    rank: int = 8,
    lora_alpha: float = 16.0,
    top_fraction: float = 0.25,
    blocks: Sequence[int] | None = None,
    target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
    dropout: float = 0.0,
) -> PeftModel:
    """Wrap `teacher` with a trainable LoRA adapter; every other teacher weight is frozen.

    blocks: explicit block indices, overriding top_fraction (default: the top quarter).
    target_modules: the Linear layers inside each block that get an adapter.
    Note that PEFT injects the adapter into `teacher` in place; keep no other use of it.
    """
    if rank < 1:
        raise DistillError(f"online module: rank must be >= 1, got {rank}")
    num_blocks = teacher.config.num_hidden_layers
    layers = list(blocks) if blocks is not None else top_block_indices(num_blocks, top_fraction)
    if not layers or not all(0 <= i < num_blocks for i in layers):
        raise DistillError(f"online module: blocks {layers} must be in 0..{num_blocks - 1}")
    config = LoraConfig(
        r=rank,
        lora_alpha=lora_alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        layers_to_transform=layers,
        layers_pattern="layers",  # Llama/Qwen2 keep their blocks in model.layers
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(teacher, config)
    except ValueError as exc:  # PEFT's message when no target module matches
        raise DistillError(f"online module: {str(exc).splitlines()[0]}") from None


def online_module_parameters(model: PeftModel) -> Iterator[torch.nn.Parameter]:
    """The trainable (adapter) parameters, for the module's own optimizer."""
    return (p for p in model.parameters() if p.requires_grad)


def online_module_report(model: PeftModel) -> dict[str, float | int]:
    """Trainable parameter count of the module, the teacher's base count, and their ratio."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"trainable": trainable, "teacher": base, "fraction": trainable / base if base else 0.0}


def should_update_module(step: int, every: int) -> bool:
    """Whether the online module is updated at student step `step` (0-based): steps 0, every, 2*every, ..."""
    if every < 1:
        raise DistillError(f"online module: teacher_update_every must be >= 1, got {every}")
    return step % every == 0


def save_online_module(model: PeftModel, directory: str | Path) -> Path:
    """Save only the adapter, in PEFT format (adapter_config.json + adapter_model.safetensors)."""
    model.save_pretrained(str(directory))
    return Path(directory)


def load_online_module(teacher: PreTrainedModel, directory: str | Path, trainable: bool = True) -> PeftModel:
    """Put a saved adapter on a freshly loaded base teacher (same weights as when it was saved)."""
    if not (Path(directory) / "adapter_config.json").exists():
        raise DistillError(f"online module: no PEFT adapter at {directory} (adapter_config.json missing)")
    return PeftModel.from_pretrained(teacher, str(directory), is_trainable=trainable)


def merged_layer_weights(model: PeftModel) -> dict[str, torch.Tensor]:
    """The adapted layers' weights with the module merged in (W + scale * B @ A), under the base
    model's own HF names ("model.layers.3.self_attn.q_proj.weight").

    What a plain (adapter-less) copy of the teacher elsewhere, such as a SWITCH rollout worker's,
    loads with `load_state_dict(strict=False)` to generate as the adapted teacher.
    """
    from peft.tuners.lora import LoraLayer

    out: dict[str, torch.Tensor] = {}
    prefix = "base_model.model."
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        base = module.get_base_layer()
        delta = sum(module.get_delta_weight(adapter) for adapter in module.active_adapters)
        key = name[len(prefix):] if name.startswith(prefix) else name
        out[f"{key}.weight"] = (base.weight.detach() + delta.detach().to(base.weight.dtype)).cpu()
    return out


# ---------------------------------------------------------------- the module's optimizer on each trainer rank

class OnlineModule:
    """OKD's adapter on this rank's teacher, with its own AdamW.

    Each rank backpropagates its micro-batches' module loss, weighted by their share of the
    step's global tokens; `step` sums those gradients over ranks (an all-reduce), so every rank
    applies the same update to the same starting weights and the modules never drift apart.
    """

    def __init__(self, teacher: torch.nn.Module, lr: float, grad_clip: float):
        self.teacher = teacher
        self.params = list(online_module_parameters(teacher))
        # no weight decay: LoRA's B starts at zero, and decay would pull the module back to
        # "no adaptation" at a rate unrelated to the loss
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        self.grad_clip = grad_clip

    def broadcast_from_rank0(self) -> None:
        """Make every rank start from rank 0's initial adapter (LoRA's A is random)."""
        import torch.distributed as dist

        for p in self.params:
            dist.broadcast(p.data, src=0)

    def step(self) -> float:
        """All-reduce the gradients, clip, update; returns the module's gradient norm."""
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])  # one collective, not one per tensor
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in self.params:
            p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
        if self.grad_clip > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip))
        else:
            norm = float(flat.norm())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def state_dict(self) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        return get_peft_model_state_dict(self.teacher)

    def save(self, directory: Path) -> None:
        save_online_module(self.teacher, directory)
        torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")

    def load(self, directory: Path) -> None:
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(str(directory / "adapter_model.safetensors"), device=str(self.params[0].device))
        result = set_peft_model_state_dict(self.teacher, weights)
        if getattr(result, "unexpected_keys", None):
            raise DistillError(f"checkpoint {directory}: online module has unexpected keys {result.unexpected_keys[:3]}")
        self.optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=False))
