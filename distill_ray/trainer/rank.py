"""`TrainerRank`: one rank of the trainer group, a Ray actor holding a DeepSpeed engine (see
trainer/group.py for the group and how a step's rows are split).

Each rank holds:
  - the student, in a DeepSpeed engine: ZeRO stage `trainer.zero_stage` (2: optimizer states
    and gradients partitioned; 3: the weights too), AdamW, gradient clipping, bf16 on GPU when
    model.dtype is bfloat16, float32 on CPU;
  - the frozen teacher, placed by `trainer.teacher_mode` (trainer/options.py: TEACHER_MODES) --
    none for sft and seqkd, whose loss does not use it;
  - for okd, the teacher's online module (a LoRA adapter) with its own AdamW
    (models/online.py: OnlineModule); its gradients are summed over ranks before each update,
    so every rank's module stays identical.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from distill_ray.batch import RolloutBatch
from distill_ray.config import from_dict
from distill_ray.errors import DistillError
from distill_ray.fsutil import replace_dir, written_dir
from distill_ray.methods import method_spec
from distill_ray.models.build import DTYPES
from distill_ray.models.online import OnlineModule, merged_layer_weights
from distill_ray.rollout.weights import state_dict_to_bytes, weights_digest
from distill_ray.trainer.checkpoints import CLIENT_STATE, write_manifest
from distill_ray.trainer.deepspeed_config import (
    student_deepspeed_config,
    teacher_deepspeed_config,
    training_precision,
)
from distill_ray.trainer.optim import lr_at
from distill_ray.trainer.options import RankOptions
from distill_ray.trainer.step import (
    LossSpec,
    ModelOutput,
    ResponseTargets,
    micro_batch_loss,
    micro_batches,
    response_output,
)

DEEPSPEED_TAG = "deepspeed"  # sub-directory of a checkpoint holding DeepSpeed's own files


def _causal_config(model: torch.nn.Module):
    """The transformers config of a model, a PEFT-wrapped model or a DeepSpeed engine."""
    return getattr(model, "module", model).config


def _rng_state() -> dict:
    import numpy as np

    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class RankReport:
    """What a rank built, for the driver's start-up line and for tests."""

    rank: int
    device: str
    precision: str
    zero_stage: int
    teacher: str  # the teacher mode in use ("none": no teacher on this rank)
    chunked_loss: bool
    student_parameters: int
    teacher_parameters: int  # the teacher's full parameter count (0 without a teacher)
    teacher_local_parameters: int  # how many of them this rank holds (ZeRO-3 teacher: about 1/N)
    online_module_parameters: int


def never_build_deepspeed_shm_op() -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory all-reduce op (deepspeed_shm_comm),
    which `deepspeed.init_distributed` otherwise builds on CPU. Nothing here calls the one
    collective it serves (inference_all_reduce); the build takes a minute on a fresh 2-core
    machine, and a build killed midway leaves a lock file on which every later rank waits
    forever (a CI run hung that way). Marked incompatible, the op is never built."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


class TrainerRank:
    """One rank of the group; wrapped with `ray.remote` by TrainerGroup (plain class for readability).

    Call order: `master_address` (rank 0), then `setup` on all ranks at once with its answer (it
    joins the process group, a collective), then any of the step / weights / checkpoint methods -- on all
    ranks at once, since each may run collectives (ZeRO-3 gathers, all-reduces, barriers).
    """

    def __init__(self, cfg: dict, options: RankOptions, rank: int, world_size: int):
        self.cfg, self.options = from_dict(cfg), options
        self.rank, self.world_size = rank, world_size
        # one compute thread per requested CPU: more threads than cores makes OpenMP spin-wait
        # against the other ranks on the same machine (10x slower on a 2-core box)
        torch.set_num_threads(max(1, int(self.cfg.trainer.num_cpus_per_worker)))
        self.step = 0  # optimizer steps taken (the next step's 0-based index for lr_at)

    def master_address(self) -> tuple[str, int]:
        """This node's IP and a free TCP port, where the process group's store will listen."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    # ------------------------------------------------------------------ building

    def setup(self, master: tuple[str, int]) -> RankReport:
        """Join the process group at rank 0's `master` (address, port), then build the student engine
        and the teacher (all ranks at once)."""
        cfg = self.cfg
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # its per-step INFO lines would drown ours
        self._join_process_group(*master)
        self.precision = training_precision(cfg.model.dtype, self.on_gpu)
        torch.manual_seed(cfg.trainer.seed)  # the same seed on every rank: identical random inits
        self.engine = self._build_student()
        self.device = self.engine.device
        self.teacher_mode, self.chunked = self.options.teacher_mode, self.options.chunked_loss
        self.teacher, self.online = self._build_teacher()
        vocab_size = None
        if self.teacher is not None and _causal_config(self.teacher).vocab_size != self.engine.module.config.vocab_size:
            vocab_size = len(self.tokenizer)  # output layers padded to different sizes: compare the tokenizer's rows
        self.spec = LossSpec.from_config(cfg, vocab_size=vocab_size)
        # per-rank randomness from here on (dropout, sampling inside losses), reproducible by seed
        torch.manual_seed(cfg.trainer.seed * 1000 + self.rank)
        random.seed(cfg.trainer.seed * 1000 + self.rank)
        teacher_params = list(self.teacher.parameters()) if self.teacher is not None else []
        return RankReport(
            rank=self.rank,
            device=str(self.device),
            precision=self.precision,
            zero_stage=cfg.trainer.zero_stage,
            teacher=self.teacher_mode,
            chunked_loss=self.chunked,
            student_parameters=sum(getattr(p, "ds_numel", p.numel()) for p in self.engine.module.parameters()),
            teacher_parameters=sum(getattr(p, "ds_numel", p.numel()) for p in teacher_params),
            teacher_local_parameters=sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in teacher_params),
            online_module_parameters=sum(p.numel() for p in self.online.params) if self.online else 0,
        )

    def _join_process_group(self, master_addr: str, master_port: int) -> None:
        import deepspeed
        import torch.distributed as dist

        self.on_gpu = self.cfg.trainer.num_gpus_per_worker > 0
        if self.on_gpu and not torch.cuda.is_available():
            raise DistillError("trainer.num_gpus_per_worker > 0, but this trainer rank sees no CUDA device")
        if self.on_gpu:
            torch.cuda.set_device(0)  # Ray shows each rank only its own GPU, as device 0
        backend = "nccl" if self.on_gpu else "gloo"
        never_build_deepspeed_shm_op()
        dist.init_process_group(
            backend, init_method=f"tcp://{master_addr}:{master_port}", rank=self.rank,
            world_size=self.world_size, timeout=timedelta(minutes=30),
        )
        deepspeed.init_distributed(dist_backend=backend)  # adopts the group above

    def _build_student(self):
        """The student in a DeepSpeed engine (ZeRO stage, AdamW, clipping, precision from the config)."""
        import deepspeed

        from distill_ray.models.build import load_causal_lm
        from distill_ray.models.tokenizer import load_tokenizer

        cfg = self.cfg
        self.tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.student)
        student = load_causal_lm(cfg.model.student, dtype=torch.float32)  # DeepSpeed casts to bf16/fp16 itself
        ds_config = student_deepspeed_config(cfg.trainer, world_size=self.world_size, precision=self.precision, on_gpu=self.on_gpu)
        engine, *_ = deepspeed.initialize(
            model=student, model_parameters=[p for p in student.parameters() if p.requires_grad], config=ds_config
        )
        return engine

    def _build_teacher(self) -> tuple[torch.nn.Module | None, OnlineModule | None]:
        """The frozen teacher as `teacher_mode` places it (+ the online module for okd)."""
        import deepspeed

        from distill_ray.models.build import load_causal_lm

        cfg = self.cfg
        if self.teacher_mode in ("none", "remote"):
            return None, None
        teacher = load_causal_lm(cfg.model.teacher, dtype=DTYPES[self.precision]).eval().requires_grad_(False)
        if method_spec(cfg).online_teacher:
            from distill_ray.models.online import attach_online_module

            okd = cfg.method.okd
            teacher = attach_online_module(
                teacher.to(self.device), rank=okd.lora_rank, lora_alpha=okd.lora_alpha, top_fraction=okd.top_fraction
            )
            online = OnlineModule(teacher, okd.lr, cfg.trainer.grad_clip)
            online.broadcast_from_rank0()
            return teacher, online
        if self.teacher_mode == "replicated":
            return teacher.to(self.device), None
        ds_config = teacher_deepspeed_config(
            world_size=self.world_size, precision=self.precision, offload_to_cpu=self.teacher_mode == "zero3_offload"
        )
        engine, *_ = deepspeed.initialize(model=teacher, config=ds_config)  # partitions the weights over ranks
        engine.eval()  # (DeepSpeedEngine.eval returns None, unlike nn.Module.eval)
        return engine, None

    # ------------------------------------------------------------------ training

    def train_step(self, shard: RolloutBatch, global_tokens: int) -> dict[str, float]:
        """grad_accum micro-batches of this rank's shard, then one optimizer step.

        global_tokens: response tokens of the whole step (all ranks), the denominator of every
        micro-batch's weight. Returns this rank's metrics; "loss*" values are this rank's share
        of the global token mean (they add up over ranks; see merge_rank_metrics).
        """
        from distill_ray.models.online import should_update_module

        t_step = time.perf_counter()
        tc = self.cfg.trainer
        lr = lr_at(self.step, tc.lr, tc.warmup_steps, tc.max_steps, tc.lr_schedule)
        for param_group in self.engine.optimizer.param_groups:  # our schedule, not a DeepSpeed scheduler
            param_group["lr"] = lr
        update_module = self.online is not None and should_update_module(self.step, self.cfg.method.okd.teacher_update_every)
        # DeepSpeed divides each micro-batch's loss by grad_accum and averages gradients over
        # ranks; multiplying by both turns that into a plain sum of token-weighted shares
        rescale = tc.grad_accum * self.world_size
        timing = {"timing/teacher_forward": 0.0, "timing/student_forward_backward": 0.0, "timing/optimizer": 0.0}
        sums: dict[str, float] = {"loss": 0.0}
        self.engine.train()
        for micro in micro_batches(shard, tc.grad_accum):
            micro = micro.to(self.device)
            targets = ResponseTargets.from_batch(micro)
            share = targets.tokens / max(global_tokens, 1)
            # okd's target is the local teacher with its module, never a remote scorer's top-k
            topk = None
            if micro.teacher_topk_ids is not None and self.spec.uses_teacher and self.online is None:
                topk = (micro.teacher_topk_ids, micro.teacher_topk_logprobs)
            chunked = self.chunked and topk is None
            teacher_out = None
            if self.spec.uses_teacher and topk is None:
                t0 = time.perf_counter()
                teacher_out = self._teacher_output(micro, chunked, with_grad=update_module)
                timing["timing/teacher_forward"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            student_out = response_output(self.engine, micro, chunked=chunked)
            terms = micro_batch_loss(self.spec, targets, student_out, teacher_out, topk, update_module)
            self.engine.backward(terms.student * (share * rescale))
            if terms.module is not None:
                (terms.module * share).backward()  # summed over ranks in OnlineModule.step
            timing["timing/student_forward_backward"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            self.engine.step()  # DeepSpeed steps the optimizer only at the accumulation boundary
            timing["timing/optimizer"] += time.perf_counter() - t0
            sums["loss"] += float(terms.student.detach()) * share
            for key, value in terms.metrics.items():
                sums[key] = sums.get(key, 0.0) + value * share
        metrics: dict[str, float] = {**sums, **timing}
        if update_module:
            t0 = time.perf_counter()
            metrics["grad_norm/module"] = self.online.step()
            metrics["timing/optimizer"] += time.perf_counter() - t0
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        self.step += 1
        metrics.update(
            {"lr": float(self.engine.get_lr()[0]), "step": float(self.step), "tokens": float(shard.num_response_tokens),
             "timing/rank_step": time.perf_counter() - t_step}
        )
        return metrics

    def _teacher_output(self, micro: RolloutBatch, chunked: bool, with_grad: bool) -> ModelOutput:
        if self.teacher is None:
            raise DistillError(
                f"trainer: method {self.cfg.method.name} with teacher_mode={self.teacher_mode} needs batches "
                "that carry teacher top-k log-probabilities (teacher_topk_ids / teacher_topk_logprobs)"
            )
        with torch.set_grad_enabled(with_grad):
            return response_output(self.teacher, micro, chunked=chunked)

    # ------------------------------------------------------------------ weights

    def _full_student_state(self) -> dict[str, torch.Tensor] | None:
        """The whole student state dict on rank 0 (None elsewhere); a collective under ZeRO-3."""
        if self.cfg.trainer.zero_stage == 3:
            return self.engine._zero3_consolidated_16bit_state_dict()  # gathers layer by layer onto rank 0
        return self.engine.module.state_dict() if self.rank == 0 else None

    def student_state_safetensors(self) -> bytes | None:
        """Rank 0: the full student as safetensors bytes (HF names); other ranks: None."""
        state = self._full_student_state()
        return state_dict_to_bytes(state) if state is not None else None

    def teacher_merged_safetensors(self) -> bytes | None:
        """Rank 0: the teacher's adapted layers with the OKD module merged in (HF names), for a
        rollout worker's plain teacher copy; None elsewhere or without a module."""
        if self.online is None or self.rank != 0:
            return None
        return state_dict_to_bytes(merged_layer_weights(self.online.teacher))

    def export_student(self, directory: str) -> str | None:
        """Rank 0 writes an HF model directory (+ tokenizer), atomically; returns its path."""
        state = self._full_student_state()
        if self.rank != 0:
            return None
        with written_dir(Path(directory)) as tmp:
            self.engine.module.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
            self.tokenizer.save_pretrained(str(tmp))
        return str(directory)

    def fingerprints(self) -> dict[str, str]:
        """Hashes of this rank's full student, teacher base weights and online module.

        Under ZeRO-3 this gathers the whole model on every rank: a check for tests and
        debugging (do the ranks agree? did the frozen teacher stay frozen?), not a hot path.
        """
        out = {"student": self._digest(self.engine.module, lambda name: True)}
        if self.teacher is not None:
            teacher = getattr(self.teacher, "module", self.teacher)
            out["teacher_base"] = self._digest(teacher, lambda name: "lora_" not in name)
        if self.online is not None:
            out["online_module"] = self._digest(self.online.teacher, lambda name: "lora_" in name)
        return out

    @staticmethod
    def _digest(module: torch.nn.Module, keep) -> str:
        import deepspeed

        named = [(name, p) for name, p in module.named_parameters() if keep(name)]
        partitioned = [p for _, p in named if hasattr(p, "ds_id")]
        with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None, enabled=bool(partitioned)):
            return weights_digest(named)

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, tmp_dir: str, final_dir: str, client_state: dict) -> None:
        """Write this rank's part under tmp_dir; after every rank is done, rank 0 writes the
        manifest (sizes and SHA-256 of every file, `checkpoints.write_manifest`) and renames
        tmp_dir to final_dir.

        Every rank must see the same directory (one machine, or a shared filesystem).
        """
        import torch.distributed as dist

        tmp, final = Path(tmp_dir), Path(final_dir)
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / "rng").mkdir(parents=True)
        dist.barrier()  # nobody writes into tmp before rank 0 has emptied it
        self.engine.save_checkpoint(str(tmp), tag=DEEPSPEED_TAG)
        torch.save(_rng_state(), tmp / "rng" / f"rank_{self.rank}.pt")
        if self.rank == 0:
            if self.online is not None:  # identical on every rank, so rank 0's copy is the module
                self.online.save(tmp / "online_module")
            torch.save(client_state, tmp / CLIENT_STATE)
            state = {"step": self.step, "world_size": self.world_size, "zero_stage": self.cfg.trainer.zero_stage,
                     "method": self.cfg.method.name}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        dist.barrier()  # every rank's files are on disk
        if self.rank == 0:
            time.sleep(self.cfg.trainer.fault_save_delay_s)  # TEST ONLY (0 unless a test asks for a slow save)
            write_manifest(tmp, int(client_state.get("step", self.step)))  # last: it marks the checkpoint complete
            replace_dir(tmp, final)
        dist.barrier()  # no rank returns before the checkpoint is visible under its final name

    def load_checkpoint(self, directory: str) -> dict:
        """Restore student + optimizer, online module, step and this rank's RNG; returns the client state."""
        path = Path(directory)
        state_file = path / "trainer_state.json"
        if not state_file.is_file():
            raise DistillError(f"checkpoint {directory}: not a trainer checkpoint (trainer_state.json missing)")
        state = json.loads(state_file.read_text())
        for key, have in (("world_size", self.world_size), ("zero_stage", self.cfg.trainer.zero_stage)):
            if state[key] != have:
                raise DistillError(
                    f"checkpoint {directory}: saved with {key}={state[key]}, this group has {key}={have} "
                    "(ZeRO partitions optimizer state per rank; resume with the same layout)"
                )
        if (self.online is not None) != (path / "online_module").is_dir():
            raise DistillError(f"checkpoint {directory}: saved by method {state['method']}, loading into {self.cfg.method.name}")
        load_path, _ = self.engine.load_checkpoint(str(path), tag=DEEPSPEED_TAG, load_lr_scheduler_states=False)
        if load_path is None:
            raise DistillError(f"checkpoint {directory}: DeepSpeed found no {DEEPSPEED_TAG}/ states to load")
        if self.online is not None:
            self.online.load(path / "online_module")
        self.step = int(state["step"])
        _set_rng_state(torch.load(path / "rng" / f"rank_{self.rank}.pt", weights_only=False))
        return torch.load(path / CLIENT_STATE, weights_only=False)
