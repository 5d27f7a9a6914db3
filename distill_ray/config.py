"""The run configuration: one typed tree of small dataclasses, loaded from YAML.

    cfg = load_config("configs/kd.yaml", overrides=["trainer.lr=1e-4", "method.name=sft"])

Every field has a one-line comment saying what it changes. Unknown keys and values of the
wrong type are rejected at load time with a one-line error naming the file, the line and the
dotted key; nothing is rewritten silently after parsing.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from distill_ray.errors import DistillError
from distill_ray.methods import METHODS, method_spec

Method = Literal["sft", "kd", "seqkd", "sgo", "switch", "okd"]
Divergence = Literal["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tv"]


@dataclass
class ModelConfig:
    teacher: str = "local/models/teacher"  # teacher: HF model name or directory (frozen weights)
    student: str = "local/models/student"  # student to train: HF model name or directory (initial weights)
    tokenizer: str | None = None  # tokenizer name or directory; None means the student's
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # training/inference dtype (bf16 on GPU)
    teacher_endpoint: str | None = None  # URL of a teacher scoring service (deploy/teacher.yaml, e.g. http://127.0.0.1:8000/teacher); with trainer.teacher_mode=remote the batches' teacher top-k come from it instead of TeacherScorer actors (bearer token: $DISTILL_RAY_SERVE_TOKEN)


@dataclass
class DataConfig:
    train: str = "local/data/synth/train.jsonl"  # training rows: .jsonl/.json/.parquet file, a `datasets` directory or hub name
    validation: str | None = "local/data/synth/validation.jsonl"  # validation rows for periodic evaluation (None: none)
    test: str | None = "local/data/synth/test.jsonl"  # test rows for the final evaluation (None: none)
    split: str = "train"  # split to read when `train` is a `datasets` name or directory
    prompt_field: str = "prompt"  # field holding the instruction / prompt (Dolly: "instruction")
    context_field: str | None = "context"  # optional field appended to the prompt when non-empty (Dolly: "context")
    response_field: str = "response"  # field holding the reference response
    template: str = "Instruction: {prompt}\nResponse:"  # prompt template; {prompt} is the prompt (+ context); used when no chat template applies
    chat_template: Literal["auto", "none"] = "auto"  # auto: render prompts with the tokenizer's chat template when it has one (the user turn is the prompt + context, responses end with its EOS); none: always data.template
    system_prompt: str | None = None  # system turn of chat-templated prompts; None: the chat template's own default
    max_prompt_tokens: int = 128  # prompts longer than this are skipped or truncated (see too_long)
    max_response_tokens: int = 256  # responses longer than this are skipped or truncated (see too_long)
    too_long: Literal["skip", "truncate"] = "skip"  # what to do with over-long rows (counted and reported either way)
    max_row_bytes: int = 1_000_000  # a JSONL line longer than this is a bad row (not parsed)
    bad_rows: Literal["error", "skip"] = "error"  # malformed, oversized or invalid rows: stop with file:line, or skip them (counted and reported)
    unrepresentable: Literal["error", "skip", "keep"] = "error"  # rows whose prompt or response the tokenizer cannot write (<unk> tokens, or decoding to other text than the tokenizer's own normalisation of it): stop with file:line (default: usually the wrong tokenizer for the data), skip them, or keep them (trained with <unk>, scored against their text); counted and reported either way
    max_rows: int | None = None  # use at most this many training rows (after shuffling); None: all
    shuffle_seed: int = 0  # seed of the deterministic shuffle of training rows
    length_window: int = 0  # 0: every step's rows drawn at random; k: rows sorted by length within each window of k batches of an epoch's shuffled order, the batches then shuffled within it (less padding: every row still once per epoch, every length every few steps)


@dataclass
class LossConfig:
    divergence: Divergence = "forward_kl"  # token-level divergence D(teacher, student) for kd/sgo/switch/okd
    temperature: float = 1.0  # softmax temperature applied to both teacher and student logits
    beta: float = 0.5  # JSD(beta) mixing weight (GKD convention)
    alpha: float = 0.1  # skew KL mixing weight (DistiLLM convention)
    ce_weight: float = 0.0  # weight of the cross-entropy term on dataset responses added to the divergence
    chunk_size: int = 1024  # tokens per chunk of the chunked (memory-bounded) loss
    topk: int = 64  # teacher top-k log-probabilities sent by a remote teacher (sparse loss)
    chunked: bool = False  # compute D chunk by chunk from hidden states (no [B, T, V] logits; ZeRO <= 2 only)


@dataclass
class SwitchConfig:
    tau0: float = 0.2  # SWITCH threshold at response position 0 (JSD in nats, at most ln 2)
    decay: float = 0.1  # threshold decay per position: tau_t = tau0 * exp(-decay * t)
    draft_tokens: int = 32  # tokens drafted per verification step (1 = sequential); with adaptive_draft, the most
    adaptive_draft: bool = True  # a cost model picks drafter and block length from the writer runs seen (same tokens, less waste)
    topk: int = 64  # rollout.backend=vllm: the rule's JSD from the teacher's top-k log-probabilities plus a tail bucket


@dataclass
class OkdConfig:
    lora_rank: int = 8  # LoRA rank of the teacher's online module
    lora_alpha: float = 16.0  # LoRA scaling numerator
    top_fraction: float = 0.25  # fraction of the teacher's top blocks that carry the module
    lr: float = 1e-4  # learning rate of the online module
    module_beta: float = 1.0  # weight of D'(student, teacher) in the module's loss
    module_divergence: Divergence = "reverse_kl"  # D' pulling the teacher toward the student
    teacher_update_every: int = 1  # update the module every this many student steps


@dataclass
class MethodConfig:
    name: Method = "kd"  # sft | kd | seqkd | sgo | switch | okd
    lambda_on: float = 1.0  # sgo, switch: fraction of batches made of student-generated (SWITCH) sequences
    combine_with: Literal["none", "sgo", "switch"] = "none"  # okd only: also train on sgo or SWITCH sequences
    switch: SwitchConfig = field(default_factory=SwitchConfig)  # SWITCH settings
    okd: OkdConfig = field(default_factory=OkdConfig)  # OKD online-module settings


@dataclass
class RolloutAutoscaleConfig:
    enabled: bool = False  # change the number of rollout workers during the run, from the queue depth
    min_workers: int = 1  # never fewer rollout workers than this
    max_workers: int = 4  # never more; only max_staleness - sync_every + 2 requests are in flight, so more would idle
    patience: int = 2  # consecutive steps with the same signal before a worker is added or removed
    wait_threshold_s: float = 0.05  # the trainer waited longer than this on an empty queue: generation is behind


@dataclass
class RolloutConfig:
    backend: Literal["torch", "vllm"] = "torch"  # generation engine (torch is faster for tiny models on CPU)
    num_workers: int = 1  # rollout actors
    num_cpus_per_worker: float = 1.0  # CPUs each rollout actor requests
    num_gpus_per_worker: float = 0.0  # GPUs each rollout actor requests
    temperature: float = 1.0  # sampling temperature
    top_p: float = 1.0  # nucleus sampling threshold
    max_new_tokens: int = 256  # longest generated response
    samples_per_prompt: int = 1  # responses sampled per prompt
    max_staleness: int = 1  # a batch may come from weights at most this many versions old (0: on-policy)
    queue_size: int = 4  # bounded queue between rollout and trainer (back-pressure)
    sync_every: int = 1  # push new student weights to rollout workers every this many steps
    autoscale: RolloutAutoscaleConfig = field(default_factory=RolloutAutoscaleConfig)  # add/remove rollout workers during the run
    fault_exit_on_call: int = 0  # TEST ONLY (fault injection, RELIABILITY.md): rollout worker 0's process exits inside its Nth generation call; replacements run clean (0: off)


@dataclass
class TrainerConfig:
    num_workers: int = 1  # trainer ranks (one torch.distributed group)
    num_cpus_per_worker: float = 1.0  # CPUs each trainer rank requests
    num_gpus_per_worker: float = 0.0  # GPUs each trainer rank requests
    zero_stage: Literal[0, 1, 2, 3] = 2  # DeepSpeed ZeRO stage
    teacher_mode: Literal["replicated", "zero3", "zero3_offload", "remote"] = "replicated"  # where the frozen teacher lives: a copy per rank, ZeRO-3 partitioned (host-offloaded), or remote TeacherScorer actors sending top-k log-probs
    num_teacher_scorers: int = 1  # teacher_mode=remote: TeacherScorer actors scoring the batches
    lr: float = 5e-4  # peak learning rate of the student
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_steps: int = 10  # linear warm-up steps
    lr_schedule: Literal["constant", "cosine", "linear"] = "cosine"  # schedule after warm-up
    max_steps: int = 200  # optimizer steps
    batch_size: int = 16  # sequences per optimizer step (all ranks, all micro-batches)
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float = 1.0  # max gradient norm (0 disables)
    seed: int = 0  # seed of model init, data order and sampling
    eval_every: int = 0  # evaluate on the validation split every this many steps (0: only at the end)
    save_every: int = 0  # checkpoint every this many steps (0: only at the end)
    keep_checkpoints: int = 2  # keep the newest this many checkpoints in output_dir/checkpoints (0: all)
    fault_save_delay_s: float = 0.0  # TEST ONLY (fault injection, RELIABILITY.md): rank 0 waits this long before sealing each checkpoint, a save slow enough to interrupt on purpose (0: off)
    fail_after_step: int = 0  # TEST ONLY (fault injection, RELIABILITY.md): the driver SIGKILLs itself after logging step N (0: off)
    output_dir: str = "runs/default"  # checkpoints, metrics and the exported student go here


@dataclass
class EvalConfig:
    max_examples: int = 200  # test/validation rows evaluated (0: all)
    max_new_tokens: int = 256  # longest generated response
    batch_size: int = 64  # prompts generated at once
    sample: bool = False  # also evaluate with sampling (temperature 1) besides greedy
    teacher_kl: bool = False  # validation also reports teacher-forced KL(teacher || student) per token (val/kl_teacher) and the student's perplexity on the references (val/student_ppl); loads the teacher in the driver


@dataclass
class ClusterConfig:
    address: str | None = None  # Ray address; None: RAY_ADDRESS if set, else a local Ray in-process
    num_cpus: int | None = None  # CPUs of the local Ray (None: detected)
    rollout_resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources each rollout actor requests
    trainer_resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources each trainer rank requests
    trainer_placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"  # placement group strategy of the trainer ranks (PACK: fewest nodes, fastest all-reduce; STRICT_PACK: one node)
    check_resources: bool = True  # fail at start when no node can hold a rollout worker or the trainer ranks (false: wait, e.g. for an autoscaler to add nodes)
    placement_timeout_s: float = 600.0  # how long to wait for the trainer placement group on a busy cluster before failing


@dataclass
class LoggingConfig:
    jsonl: bool = True  # write metrics.jsonl in the output directory
    tensorboard: bool = True  # write TensorBoard event files in the output directory
    wandb: bool = False  # log to Weights & Biases (needs `wandb` installed)
    progress: bool = True  # print a live progress line per step
    verbose: bool = False  # also show the libraries' output: Ray actors' lines (prefixed with the actor), model-loading bars, FutureWarnings (`--verbose`); otherwise actors' output stays in Ray's log directory, printed at the start
    log_every: int = 1  # print/log every this many steps


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)  # teacher and student
    data: DataConfig = field(default_factory=DataConfig)  # datasets, template, lengths
    method: MethodConfig = field(default_factory=MethodConfig)  # which distillation method
    loss: LossConfig = field(default_factory=LossConfig)  # divergence and its settings
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # generation workers
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # optimisation
    eval: EvalConfig = field(default_factory=EvalConfig)  # evaluation
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # Ray cluster and placement
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # metrics and progress


# ---------------------------------------------------------------- loading and validation


class _Where:
    """Names a location for error messages: the file and, when known, the YAML line; for a key
    (or a section above it) given on the command line, the `--set` that gave it."""

    def __init__(self, source: str, lines: dict[str, int], overridden: set[str] | None = None):
        self.source, self.lines, self.overridden = source, lines, overridden or set()

    def __call__(self, key: str) -> str:
        parts = key.split(".")
        if any(".".join(parts[:i]) in self.overridden for i in range(1, len(parts) + 1)):
            return f"--set {key}"
        line = self.lines.get(key)
        return f"{self.source}:{line}: {key}" if line else f"{self.source}: {key}"


def _key_lines(node: yaml.Node, prefix: str = "") -> dict[str, int]:
    """Map each dotted key of a composed YAML document to its 1-based line number."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            out[key] = key_node.start_mark.line + 1
            out.update(_key_lines(value_node, key + "."))
    return out


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(value: Any, tp: Any, key: str, where: _Where) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widen to floats)."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, where)
            except DistillError as exc:
                errors.append(exc)
        raise DistillError(
            f"{where(key)}: expected {' or '.join(_type_name(o) for o in options)}, got {value!r}"
        )
    if origin is Literal:
        if value in get_args(tp) and type(value) is type(next(a for a in get_args(tp) if a == value)):
            return value
        raise DistillError(f"{where(key)}: expected one of {_type_name(tp)}, got {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise DistillError(f"{where(key)}: expected a mapping, got {value!r}")
        key_tp, val_tp = get_args(tp)
        return {
            _coerce(k, key_tp, f"{key}.{k}", where): _coerce(v, val_tp, f"{key}.{k}", where)
            for k, v in value.items()
        }
    if origin is list:
        if not isinstance(value, list):
            raise DistillError(f"{where(key)}: expected a list, got {value!r}")
        (item_tp,) = get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise DistillError(f"{where(key)}: expected a section (mapping), got {value!r}")
        return _build(tp, value, key + ".", where)
    if tp is float:
        # YAML 1.1 reads `1e-4` as a string; accept numeric strings for float fields only.
        if isinstance(value, bool):
            raise DistillError(f"{where(key)}: expected float, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise DistillError(f"{where(key)}: expected float, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise DistillError(f"{where(key)}: expected int, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise DistillError(f"{where(key)}: expected true or false, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise DistillError(f"{where(key)}: expected a string, got {value!r}")
    raise TypeError(f"config field {key} has an unsupported annotation {tp!r}")  # a bug in this file


def _build(cls: type, values: dict, prefix: str, where: _Where):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise DistillError(
                f"{where(prefix + str(key))}: unknown key (valid keys here: {', '.join(sorted(names))})"
            )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            kwargs[f.name] = _coerce(values[f.name], hints[f.name], prefix + f.name, where)
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise DistillError(f"--set {text}: expected key=value, e.g. trainer.lr=1e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise DistillError(f"--set {text}: malformed key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _merge_override(tree: dict, parts: list[str], value: Any) -> None:
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise DistillError(f"--set {'.'.join(parts)}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                check_paths: bool = False) -> Config:
    """Load a Config from a YAML file (or defaults) plus dotted `key=value` overrides; with
    `check_paths`, also check that every model path the run will load is there (`check_model_paths`)."""
    tree: dict = {}
    lines: dict[str, int] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise DistillError(f"{source}: config file not found")
        text = p.read_text()
        try:
            node = yaml.compose(text)
            tree = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f":{mark.line + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise DistillError(f"{source}{at}: invalid YAML: {problem}") from None
        if not isinstance(tree, dict):
            raise DistillError(f"{source}: the top level must be a mapping of sections")
        lines = _key_lines(node) if node is not None else {}
    overridden: set[str] = set()
    for text in overrides:
        parts, value = _parse_override(text)
        _merge_override(tree, parts, value)
        overridden.add(".".join(parts))
    where = _Where(source, lines, overridden)
    cfg = _build(Config, tree, "", where)
    validate(cfg, where)
    if check_paths:
        check_model_paths(cfg, where)
    return cfg


def model_path_problem(value: str, want: str) -> str | None:
    """Why `value` cannot be loaded as a model (want="config.json") or tokenizer (want="tokenizer")
    directory, or None. A hub name (org/name) is accepted only when it is in the local Hugging Face
    cache: nothing is downloaded."""
    path = Path(value)
    if path.is_dir():
        if want == "config.json" and not (path / "config.json").is_file():
            return "has no config.json (not a Hugging Face model directory)"
        if want == "tokenizer" and not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            return "has no tokenizer.json or tokenizer_config.json"
        return None
    if path.exists():
        return "is a file; expected a model directory"
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", value) and not value.startswith(("./", "../")):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(value, "config.json" if want == "config.json" else "tokenizer_config.json")
        if isinstance(cached, str):
            return None
        return "is neither a directory nor a model in the local Hugging Face cache (nothing is downloaded)"
    return "no such directory"


def check_model_paths(cfg: Config, where: _Where | None = None) -> None:
    """Every model directory the run loads is there, checked before anything starts: the student,
    the teacher (unless sft, or a teacher service replaces it) and the tokenizer when set."""
    where = where or _Where("config", {})
    checks = [("model.student", cfg.model.student, "config.json")]
    if METHODS[cfg.method.name].needs_teacher and cfg.model.teacher_endpoint is None:
        checks.append(("model.teacher", cfg.model.teacher, "config.json"))
    if cfg.model.tokenizer is not None:
        checks.append(("model.tokenizer", cfg.model.tokenizer, "tokenizer"))
    for key, value, want in checks:
        problem = model_path_problem(value, want)
        if problem:
            raise DistillError(f"{where(key)}: {value}: {problem}")


def check_config(cfg: Config, source: str = "config") -> None:
    """The cross-field rules of `validate` for a Config built in code (load_config and from_dict
    apply them already), and its types and choices: `run` calls it first, so a bad value or
    combination is one line before anything starts."""
    from_dict(to_dict(cfg), source)


def validate(cfg: Config, where: _Where) -> None:
    """Cross-field checks that types alone cannot express."""
    positive = {
        "trainer.max_steps": cfg.trainer.max_steps,
        "trainer.batch_size": cfg.trainer.batch_size,
        "trainer.grad_accum": cfg.trainer.grad_accum,
        "trainer.num_workers": cfg.trainer.num_workers,
        "rollout.num_workers": cfg.rollout.num_workers,
        "rollout.max_new_tokens": cfg.rollout.max_new_tokens,
        "rollout.samples_per_prompt": cfg.rollout.samples_per_prompt,
        "rollout.queue_size": cfg.rollout.queue_size,
        "rollout.sync_every": cfg.rollout.sync_every,
        "data.max_prompt_tokens": cfg.data.max_prompt_tokens,
        "data.max_response_tokens": cfg.data.max_response_tokens,
        "data.max_row_bytes": cfg.data.max_row_bytes,
        "loss.chunk_size": cfg.loss.chunk_size,
        "loss.topk": cfg.loss.topk,
        "method.switch.draft_tokens": cfg.method.switch.draft_tokens,
        "method.switch.topk": cfg.method.switch.topk,
        "method.okd.lora_rank": cfg.method.okd.lora_rank,
        "method.okd.teacher_update_every": cfg.method.okd.teacher_update_every,
        "eval.batch_size": cfg.eval.batch_size,
        "eval.max_new_tokens": cfg.eval.max_new_tokens,
    }
    for key, value in positive.items():
        if value <= 0:
            raise DistillError(f"{where(key)}: must be positive, got {value}")
    # key: (value, low, low included, high or None); the high bound is always included
    ranges = {
        "trainer.lr": (cfg.trainer.lr, 0.0, False, None),
        "loss.temperature": (cfg.loss.temperature, 0.0, False, None),
        "rollout.temperature": (cfg.rollout.temperature, 0.0, False, None),
        "rollout.top_p": (cfg.rollout.top_p, 0.0, False, 1.0),
        "loss.beta": (cfg.loss.beta, 0.0, True, 1.0),
        "loss.alpha": (cfg.loss.alpha, 0.0, True, 1.0),
        "method.lambda_on": (cfg.method.lambda_on, 0.0, True, 1.0),
        "method.okd.top_fraction": (cfg.method.okd.top_fraction, 0.0, False, 1.0),
        "cluster.placement_timeout_s": (cfg.cluster.placement_timeout_s, 0.0, False, None),
    }
    for key, (value, lo, lo_included, hi) in ranges.items():
        if value < lo or (value == lo and not lo_included) or (hi is not None and value > hi):
            if hi is None:
                bounds = "positive"
            else:
                bounds = f"in {'[' if lo_included else '('}{lo:g}, {hi:g}]"
            raise DistillError(f"{where(key)}: must be {bounds}, got {value}")
    if cfg.trainer.batch_size % (cfg.trainer.grad_accum * cfg.trainer.num_workers):
        raise DistillError(
            f"{where('trainer.batch_size')}: {cfg.trainer.batch_size} is not divisible by "
            f"grad_accum * num_workers = {cfg.trainer.grad_accum * cfg.trainer.num_workers}"
        )
    auto = cfg.rollout.autoscale
    if auto.enabled and not (1 <= auto.min_workers <= cfg.rollout.num_workers <= auto.max_workers):
        raise DistillError(
            f"{where('rollout.autoscale')}: needs 1 <= min_workers <= rollout.num_workers <= max_workers, got "
            f"{auto.min_workers} <= {cfg.rollout.num_workers} <= {auto.max_workers}"
        )
    if auto.patience <= 0:
        raise DistillError(f"{where('rollout.autoscale.patience')}: must be positive, got {auto.patience}")
    if cfg.rollout.max_staleness < 0:
        raise DistillError(f"{where('rollout.max_staleness')}: must be >= 0")
    for key, value in (("trainer.keep_checkpoints", cfg.trainer.keep_checkpoints),
                       ("trainer.fail_after_step", cfg.trainer.fail_after_step),
                       ("trainer.fault_save_delay_s", cfg.trainer.fault_save_delay_s),
                       ("rollout.fault_exit_on_call", cfg.rollout.fault_exit_on_call),
                       ("data.length_window", cfg.data.length_window)):
        if value < 0:
            raise DistillError(f"{where(key)}: must be >= 0, got {value}")
    spec = method_spec(cfg)
    if spec.online_teacher and cfg.trainer.teacher_mode != "replicated":
        raise DistillError(
            f"{where('trainer.teacher_mode')}: okd trains an online module inside the teacher, which needs "
            f"teacher_mode=replicated, got {cfg.trainer.teacher_mode}"
        )
    if cfg.loss.chunked and (cfg.trainer.zero_stage == 3 or cfg.trainer.teacher_mode.startswith("zero3")):
        raise DistillError(f"{where('loss.chunked')}: needs whole output layers on every rank (zero_stage <= 2, teacher_mode=replicated)")
    if cfg.trainer.num_teacher_scorers <= 0:
        raise DistillError(f"{where('trainer.num_teacher_scorers')}: must be positive, got {cfg.trainer.num_teacher_scorers}")
    if cfg.model.teacher_endpoint is not None:
        if cfg.trainer.teacher_mode != "remote":
            raise DistillError(f"{where('model.teacher_endpoint')}: a teacher service replaces the remote teacher; "
                               f"it needs trainer.teacher_mode=remote, got {cfg.trainer.teacher_mode}")
        if not cfg.model.teacher_endpoint.startswith(("http://", "https://")):
            raise DistillError(f"{where('model.teacher_endpoint')}: expected an http:// or https:// URL, "
                               f"got {cfg.model.teacher_endpoint!r}")
    if cfg.method.combine_with != "none" and not METHODS[cfg.method.name].combinable:
        combinable = " or ".join(name for name, m in METHODS.items() if m.combinable)
        raise DistillError(f"{where('method.combine_with')}: only {combinable} can be combined with sgo or switch")
    if spec.switch and spec.online_teacher and cfg.rollout.backend == "vllm":
        raise DistillError(f"{where('method.combine_with')}: okd + SWITCH needs the teacher's online module in the "
                           "rollout worker, which only rollout.backend=torch has (SWITCH on vLLM checks tokens "
                           f"with a vLLM teacher scorer that cannot take the module's weights); "
                           f"{where('rollout.backend')} is vllm (set rollout.backend=torch)")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def from_dict(values: dict, source: str = "<dict>") -> Config:
    """A Config from a plain dict (e.g. `to_dict(cfg)` sent to a Ray actor), validated."""
    where = _Where(source, {})
    cfg = _build(Config, values, "", where)
    validate(cfg, where)
    return cfg
