"""DeepSpeed config dicts built from the run config: one for the student, one for a ZeRO-3 teacher.

    ds = student_deepspeed_config(cfg.trainer, world_size=2, precision="float32", on_gpu=False)
    engine, *_ = deepspeed.initialize(model=student, model_parameters=params, config=ds)

Everything DeepSpeed needs is derived here from `TrainerConfig` (and the chosen precision),
so a run's DeepSpeed behaviour can be read off one function. The learning rate in the
optimizer block is only the initial value: the trainer sets each step's rate itself from
`lr_at` (see group.py), so the schedule is the same with or without DeepSpeed.
"""

from __future__ import annotations

from typing import Literal

from distill_ray.config import TrainerConfig

Precision = Literal["float32", "bfloat16", "float16"]


def training_precision(model_dtype: str, on_gpu: bool) -> Precision:
    """The precision the student trains in: model.dtype on GPU, float32 on CPU.

    CPUs without AVX-512 (this project's CI) run bf16 matmuls far slower than float32, and
    fp16 loss scaling exists for GPUs; model.dtype's documented meaning is "bf16 on GPU".
    """
    return model_dtype if on_gpu else "float32"  # type: ignore[return-value]


def micro_batch_rows(trainer: TrainerConfig, world_size: int) -> int:
    """Rows per micro-batch per rank (DeepSpeed's train_micro_batch_size_per_gpu)."""
    return max(1, trainer.batch_size // (trainer.grad_accum * world_size))


def student_deepspeed_config(
    trainer: TrainerConfig, *, world_size: int, precision: Precision, on_gpu: bool
) -> dict:
    """The student engine's config: ZeRO stage, AdamW, accumulation, clipping, precision."""
    micro = micro_batch_rows(trainer, world_size)
    zero: dict = {"stage": trainer.zero_stage}
    if trainer.zero_stage == 3:
        # Small parameters (norms, biases) stay replicated instead of being gathered every
        # layer: gathering a few hundred floats costs a collective each, for nothing saved.
        zero["stage3_param_persistence_threshold"] = 10_000
    if not on_gpu:
        # Overlapping communication with computation needs CUDA streams; on CPU it only adds
        # buffers and threads competing for the same cores.
        zero["overlap_comm"] = False
    return {
        # Batch sizes are bookkeeping for DeepSpeed only (we feed it our own micro-batches),
        # but they must satisfy train = micro * accumulation * world.
        "train_batch_size": micro * trainer.grad_accum * world_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": trainer.grad_accum,
        "gradient_clipping": float(trainer.grad_clip),  # 0 disables clipping in DeepSpeed too
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": trainer.lr,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": trainer.weight_decay,
                # torch's AdamW instead of DeepSpeed's compiled Adam ops: nothing to build on
                # a machine without a compiler toolchain or CUDA headers, same numbers.
                "torch_adam": True,
            },
        },
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bfloat16"},
        "fp16": {"enabled": precision == "float16", "initial_scale_power": 16},
        "steps_per_print": 1_000_000_000,  # we log our own metrics; DeepSpeed's would duplicate them
        "wall_clock_breakdown": False,
    }


def teacher_deepspeed_config(*, world_size: int, precision: Precision, offload_to_cpu: bool) -> dict:
    """A frozen teacher under ZeRO-3 inference: each rank keeps 1/world_size of its weights.

    offload_to_cpu keeps those partitions in host memory (GPU memory then holds only the
    layers being gathered for the forward pass); it needs a GPU to mean anything.
    """
    zero: dict = {"stage": 3, "stage3_param_persistence_threshold": 10_000, "overlap_comm": False}
    if offload_to_cpu:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_batch_size": world_size,  # required by DeepSpeed's config check; unused without an optimizer
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bfloat16"},
        "fp16": {"enabled": precision == "float16"},
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }
