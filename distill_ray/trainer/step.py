"""What one trainer rank computes on one micro-batch: the model outputs at response positions,
and each method's loss from them. Pure functions over tensors and models; no Ray, no DeepSpeed.

    spec = LossSpec.from_config(cfg, vocab_size=None)           # method, DivergenceSpec, CE weight, ...
    targets = ResponseTargets.from_batch(micro)                 # labels, mask [B, R]
    student = response_output(student_model, micro, chunked=False)
    teacher = response_output(teacher_model, micro, chunked=False)   # under no_grad unless okd
    terms = micro_batch_loss(spec, targets, student, teacher, topk=None, update_module=False)
    terms.student.backward()

Methods differ in where their sequences come from (the driver's business) and in which loss
applies (this file; the in-process trainer, `trainer/in_process.py`, computes the same `student_loss`):

    sft, seqkd         CE of the student on the response tokens
    kd, sgo, switch    D(teacher, student) (+ ce_weight * CE on dataset rows)
    okd                the same student loss against the teacher with its online module, plus
                       the module's own loss CE(y, p_T) + module_beta * D'(q_S.detach(), p_T)

The teacher distribution comes from a local teacher's logits (dense), from a local teacher's
last hidden states and output layer (chunked: never holds [B, R, V] logits), or from the
teacher top-k log-probabilities a remote scorer put in the batch (sparse).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from distill_ray.batch import RolloutBatch
from distill_ray.config import Config, LossConfig
from distill_ray.errors import DistillError
from distill_ray.losses.chunked import chunked_divergence
from distill_ray.losses.divergences import IGNORE_INDEX, DivergenceSpec, divergence, masked_cross_entropy
from distill_ray.losses.okd import okd_module_loss, okd_module_loss_chunked
from distill_ray.losses.sparse import sparse_divergence
from distill_ray.methods import METHODS


@dataclass(frozen=True)
class LossSpec:
    """Everything about the loss that is not a tensor, read once from the run config."""

    method: str  # sft | kd | seqkd | sgo | switch | okd
    divergence: DivergenceSpec = DivergenceSpec()  # D(teacher, student), with the shared vocabulary size
    ce_weight: float = 0.0  # weight of CE on dataset responses next to D
    chunk_size: int = 256  # tokens per chunk of the chunked loss
    module_divergence: DivergenceSpec = DivergenceSpec(kind="reverse_kl")  # okd: D'(student, teacher) in the module's loss
    module_beta: float = 1.0  # okd: weight of D' in the module's loss

    @classmethod
    def of(cls, method: str, loss: LossConfig, vocab_size: int | None = None,
           module_divergence: str = "reverse_kl", module_beta: float = 1.0) -> "LossSpec":
        d = DivergenceSpec(kind=loss.divergence, temperature=loss.temperature, beta=loss.beta, alpha=loss.alpha,
                           vocab_size=vocab_size)
        return cls(method=method, divergence=d, ce_weight=loss.ce_weight, chunk_size=loss.chunk_size,
                   module_divergence=dataclasses.replace(d, kind=module_divergence), module_beta=module_beta)

    @classmethod
    def from_config(cls, cfg: Config, vocab_size: int | None = None) -> "LossSpec":
        return cls.of(cfg.method.name, cfg.loss, vocab_size, cfg.method.okd.module_divergence, cfg.method.okd.module_beta)

    @property
    def vocab_size(self) -> int | None:  # the shared tokenizer's size when the output layers differ in rows
        return self.divergence.vocab_size

    @property
    def uses_teacher(self) -> bool:
        return METHODS[self.method].teacher_in_loss


@dataclass
class ResponseTargets:
    """The response tokens of a micro-batch as loss targets."""

    labels: torch.Tensor  # [B, R] int64, IGNORE_INDEX on padding (labels[:, t]: what the output at t predicts)
    mask: torch.Tensor  # [B, R] bool, True on real response tokens
    from_dataset: bool  # dataset rows (policy_version < 0), not sequences a policy generated

    @classmethod
    def from_batch(cls, batch: RolloutBatch) -> "ResponseTargets":
        mask = batch.response_mask.bool()
        labels = batch.response_ids.masked_fill(~mask, IGNORE_INDEX)
        return cls(labels=labels, mask=mask, from_dataset=batch.policy_version < 0)

    @classmethod
    def from_sequences(cls, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> "ResponseTargets":
        """Dataset rows as whole right-padded sequences (`data.encoding.collate_for_training`):
        the targets of outputs [:, :-1] (position t predicts input_ids[:, t + 1])."""
        mask = loss_mask[:, :-1].bool()
        return cls(labels=input_ids[:, 1:].masked_fill(~mask, IGNORE_INDEX), mask=mask, from_dataset=True)

    @property
    def tokens(self) -> int:
        return int(self.mask.sum())


@dataclass
class ModelOutput:
    """One model's view of the response positions: logits, or hidden states + output layer."""

    logits: torch.Tensor | None = None  # [B, R, V]
    hidden: torch.Tensor | None = None  # [B, R, H], after the final norm
    head: torch.Tensor | None = None  # [V, H], the output layer's weight (no bias)


@dataclass
class LossTerms:
    """A micro-batch's losses: each scalar only reaches its own side's parameters."""

    student: torch.Tensor  # scalar; backpropagates into the student only
    module: torch.Tensor | None  # scalar; backpropagates into the online module only (okd)
    metrics: dict[str, float]  # "loss/divergence", "loss/ce", "loss/module": detached values


def _causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers causal LM inside a PEFT wrapper or a DeepSpeed engine (or the model itself)."""
    inner = getattr(model, "module", model)  # DeepSpeed engine -> its module
    get_base = getattr(inner, "get_base_model", None)  # PeftModel -> the LM with adapters injected
    return get_base() if callable(get_base) else inner


def response_output(model: torch.nn.Module, batch: RolloutBatch, *, chunked: bool = False) -> ModelOutput:
    """Teacher-forced forward of `model` on the batch, kept to the response positions.

    Dense: logits [B, R, V], computed by the output layer only where they are needed (the
    prompt's logits are never built). Chunked: the decoder's last hidden states [B, R, H] and
    the output layer's weight, for `chunked_divergence`; this assumes logits = hidden @ W.T
    (Llama, Qwen2: no bias, no soft-capping) and a weight that is not ZeRO-3 partitioned.
    Gradients flow if the caller has them enabled.
    """
    inputs = batch.model_inputs()  # input_ids, attention_mask, position_ids [B, P+R]
    P, R = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    if P == 0:
        raise DistillError("trainer: a batch without prompt columns has no position predicting the first response token")
    if not chunked:
        # positions P-1 .. P+R-1 are the last R+1; the very last predicts past the response
        logits = model(**inputs, logits_to_keep=R + 1, use_cache=False).logits
        return ModelOutput(logits=logits[:, :-1])  # [B, R, V]
    lm = _causal_lm(model)  # PEFT injects its adapters into lm's own layers, so they run here too
    hidden = lm.base_model(**inputs, use_cache=False).last_hidden_state  # [B, P+R, H]
    return ModelOutput(hidden=hidden[:, P - 1 : P - 1 + R], head=lm.get_output_embeddings().weight)


def student_loss(
    spec: LossSpec,
    targets: ResponseTargets,
    student: ModelOutput,
    teacher: ModelOutput | None = None,
    topk: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The student's loss on one micro-batch and its detached parts.

    sft/seqkd: CE. Otherwise D(teacher.detach(), student), with the teacher given as `topk`
    (ids, logprobs [B, R, K]: sparse form), or as dense logits, or as hidden states + head
    (chunked form; the student must then be chunked too). CE on dataset rows is added with
    weight ce_weight: on generated sequences (sgo, switch) it would train the student on its
    own samples, which is not what the config's ce_weight asks for.
    """
    if not spec.uses_teacher:
        ce = masked_cross_entropy(student.logits, targets.labels, targets.mask, spec.vocab_size)
        return ce, {"loss/ce": float(ce.detach())}
    use_ce = spec.ce_weight > 0 and targets.from_dataset
    if student.hidden is not None:
        if teacher is None or teacher.hidden is None:
            raise DistillError("trainer: the chunked loss needs the teacher's hidden states and output layer")
        loss = chunked_divergence(
            student.hidden, student.head, teacher.hidden.detach(), teacher.head.detach(), targets.mask,
            spec.divergence, chunk_size=spec.chunk_size, labels=targets.labels if use_ce else None,
            ce_weight=spec.ce_weight if use_ce else 0.0,
        )
        # the chunked loss returns D + w * CE as one number; splitting it would cost a second pass
        return loss, ({"loss/divergence": float(loss.detach())} if not use_ce else {})
    if topk is not None:
        div = sparse_divergence(topk[0], topk[1], student.logits, targets.mask, spec.divergence)
    elif teacher is not None and teacher.logits is not None:
        div = divergence(teacher.logits.detach(), student.logits, targets.mask, spec.divergence)
    else:
        raise DistillError(f"trainer: method {spec.method} needs teacher logits or teacher top-k log-probabilities")
    metrics = {"loss/divergence": float(div.detach())}
    if not use_ce:
        return div, metrics
    ce = masked_cross_entropy(student.logits, targets.labels, targets.mask, spec.vocab_size)
    metrics["loss/ce"] = float(ce.detach())
    return div + spec.ce_weight * ce, metrics


def module_loss(spec: LossSpec, targets: ResponseTargets, student: ModelOutput, teacher: ModelOutput) -> torch.Tensor:
    """OKD's online-module loss CE(y, p_T) + module_beta * D'(q_S.detach(), p_T); reaches the teacher only."""
    if teacher.hidden is not None:
        return okd_module_loss_chunked(
            student.hidden, student.head, teacher.hidden, teacher.head, targets.labels, targets.mask,
            spec.module_divergence, module_weight=spec.module_beta, chunk_size=spec.chunk_size,
        )
    return okd_module_loss(teacher.logits, student.logits, targets.labels, targets.mask, spec.module_divergence,
                           module_weight=spec.module_beta)


def micro_batch_loss(
    spec: LossSpec,
    targets: ResponseTargets,
    student: ModelOutput,
    teacher: ModelOutput | None = None,
    topk: tuple[torch.Tensor, torch.Tensor] | None = None,
    update_module: bool = False,
) -> LossTerms:
    """Both OKD losses (or the student's alone) from one forward of each model."""
    loss, metrics = student_loss(spec, targets, student, teacher, topk)
    module = None
    if update_module:
        if not METHODS[spec.method].online_teacher or teacher is None:
            raise DistillError("trainer: only okd, with a local teacher, updates an online module")
        module = module_loss(spec, targets, student, teacher)
        metrics["loss/module"] = float(module.detach())
    return LossTerms(student=loss, module=module, metrics=metrics)


def micro_batches(shard: RolloutBatch, count: int) -> list[RolloutBatch]:
    """`count` micro-batches of a rank's shard, trimmed to their own longest prompt and response.

    Every rank must run the same number of forward passes (ZeRO-3 gathers weights with
    collectives inside them), so a shard with fewer rows than `count` is an error rather than
    a silent early stop.
    """
    if len(shard) < count:
        raise DistillError(
            f"trainer: a rank got {len(shard)} rows for {count} micro-batches (grad_accum); "
            "send at least num_workers * grad_accum rows per step"
        )
    return [trim_padding(piece) for piece in shard.split(count)]


def trim_padding(batch: RolloutBatch) -> RolloutBatch:
    """Drop prompt columns that are padding in every row (left) and response columns likewise (right).

    A shard of short rows then costs what its rows need, not what the longest row of the whole
    step needed. One prompt column is kept even if empty, so position P-1 exists.
    """
    prompt_cols = batch.prompt_mask.any(0)
    response_cols = batch.response_mask.any(0)
    first = int(prompt_cols.float().argmax()) if bool(prompt_cols.any()) else batch.prompt_ids.shape[1] - 1
    last = int(response_cols.nonzero().max()) + 1 if bool(response_cols.any()) else 1
    keep_p = slice(min(first, batch.prompt_ids.shape[1] - 1), None)
    keep_r = slice(0, last)
    return type(batch)(
        prompt_ids=batch.prompt_ids[:, keep_p],
        prompt_mask=batch.prompt_mask[:, keep_p],
        response_ids=batch.response_ids[:, keep_r],
        response_mask=batch.response_mask[:, keep_r],
        logprobs=batch.logprobs[:, keep_r],
        writer_mask=batch.writer_mask[:, keep_r],
        prompt_index=batch.prompt_index,
        policy_version=batch.policy_version,
        metrics=batch.metrics,
        teacher_topk_ids=None if batch.teacher_topk_ids is None else batch.teacher_topk_ids[:, keep_r],
        teacher_topk_logprobs=None if batch.teacher_topk_logprobs is None else batch.teacher_topk_logprobs[:, keep_r],
        pad_id=batch.pad_id,
    )
