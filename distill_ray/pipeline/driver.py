"""The distributed run, in one function: `run(cfg)`.

    build trainer group (+ rollout workers and their queue for on-policy methods)
    loop: next batch (dataset rows or generated) -> train step -> sync weights -> eval -> checkpoint
    export the student, evaluate it on the test split

Offline methods (sft, kd, okd) read dataset batches directly; seqkd first has the teacher
generate responses once; sgo and switch (and okd combined with them) train on batches from
the rollout workers, generated asynchronously with bounded staleness.

SIGTERM (a node being reclaimed) or a first Ctrl-C ends the run after the step under way, with a
checkpoint of it (`StopOnSignal`); `--resume` continues exactly.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path


from distill_ray.config import Config, check_config, check_model_paths, to_dict
from distill_ray.data.encoding import Encoded
from distill_ray.data.prepare import prepare_split, run_context_length
from distill_ray.errors import DistillError
from distill_ray.eval.evaluate import evaluate_model, format_table, write_json
from distill_ray.methods import method_spec
from distill_ray.models.tokenizer import load_tokenizer
from distill_ray.pipeline.run_log import MetricsLogger
from distill_ray.pipeline.placement import format_placement, placement_report, write_placement
from distill_ray.pipeline.sources import DataPosition, PromptStream, dataset_batch
from distill_ray.pipeline.teachers import open_teacher_source
from distill_ray.resources import check_rollout_actor_fits, rollout_actor_request
from distill_ray.rollout.switch_rule import teacher_fraction_by_bucket
from distill_ray.trainer.checkpoints import drop_records_from, latest_good_checkpoint, prune_checkpoints, read_client_state


def connect_ray(cfg: Config) -> dict:
    """Join the cluster in cluster.address / RAY_ADDRESS, or start a local Ray in this process.

    Unless logging.verbose, the actors' own output (library notes, loading bars, warnings) stays in
    Ray's log directory instead of being echoed here with actor prefixes; errors still reach the
    run as exceptions, and the run prints where the logs are."""
    import ray

    if ray.is_initialized():
        return {"address": "existing"}
    verbose = cfg.logging.verbose
    env = {"TOKENIZERS_PARALLELISM": "false"}
    if cfg.trainer.num_gpus_per_worker == 0:
        env["DS_ACCELERATOR"] = "cpu"  # also keeps DeepSpeed from logging its accelerator guess
    if not verbose:
        env.update(HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONWARNINGS="ignore::FutureWarning")
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    if address:
        # under `ray job submit`, Ray merges the job's runtime_env into this one and refuses a
        # variable both set: the job's own value wins
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
        job_env = (job.get("runtime_env") or {}).get("env_vars") or {}
        env = {k: v for k, v in env.items() if k not in job_env}
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=verbose, logging_level="WARNING")
    else:
        ray.init(num_cpus=cfg.cluster.num_cpus, runtime_env={"env_vars": env}, include_dashboard=False,
                 log_to_driver=verbose, logging_level="WARNING")
    return {"address": address or "local", "logs": _ray_log_dir()}


def _ray_log_dir() -> str | None:
    """This Ray session's log directory (every actor's stdout and stderr), when this process can see it."""
    try:
        from ray._private.worker import global_worker

        return str(Path(global_worker.node.get_session_dir_path()) / "logs")
    except Exception:  # noqa: BLE001 - a client connection has no local node: nothing to point at
        return None


def report_placement(cfg: Config, trainer, rollout, scorers) -> dict:
    """Which node each trainer rank, rollout worker and teacher scorer landed on; also written
    to placement.json in the output directory."""
    groups, requests = {"trainer": trainer.ranks}, {"trainer": trainer.rank_resources}
    if rollout is not None:
        groups["rollout"], requests["rollout"] = rollout.workers, rollout_actor_request(cfg)
        if rollout.teacher_scorers:  # SWITCH on vLLM: the teacher that checks the drafts
            groups["teacher"], requests["teacher"] = rollout.teacher_scorers, rollout_actor_request(cfg)
    if scorers is not None:
        groups["scorer"], requests["scorer"] = scorers.actors, rollout_actor_request(cfg)
    report = placement_report(groups, requests)
    write_placement(cfg.trainer.output_dir, report)
    return report


def teacher_generated_rows(cfg: Config, rows: list[Encoded], pad_id: int, eos_id: int) -> list[Encoded]:
    """seqkd: replace each response with one the teacher generates (once, before training)."""
    import ray

    from distill_ray.rollout.sampling import SamplingConfig
    from distill_ray.rollout.workers import EngineConfig, create_rollout_worker

    engine = EngineConfig.of_run(cfg, eos_id, pad_id)
    check_rollout_actor_fits(cfg, "a seqkd teacher worker")
    workers = [
        create_rollout_worker(cfg.model.teacher, engine=engine, num_cpus=cfg.rollout.num_cpus_per_worker,
                              num_gpus=cfg.rollout.num_gpus_per_worker, resources=cfg.cluster.rollout_resources or None)
        for _ in range(cfg.rollout.num_workers)
    ]
    sampling = SamplingConfig(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                              max_new_tokens=cfg.rollout.max_new_tokens, seed=cfg.trainer.seed)
    chunk = 64
    refs = [
        workers[i % len(workers)].generate.remote([r.prompt_ids for r in rows[s : s + chunk]], list(range(s, s + len(rows[s : s + chunk]))), sampling)
        for i, s in enumerate(range(0, len(rows), chunk))
    ]
    out = []
    for ref in refs:
        batch = ray.get(ref)
        for idx, response in zip(batch.prompt_index.tolist(), batch.responses()):
            if not response or response[-1] != eos_id:
                response = response + [eos_id]  # truncated at max_new_tokens: still end it
            out.append(Encoded(rows[idx].prompt_ids, response, rows[idx].index, rows[idx].meta))
    for w in workers:
        ray.kill(w)
    return out


def check_teacher_tokenizer(cfg: Config, tokenizer) -> None:
    """Logit distillation compares distributions token by token: refuse a teacher whose own
    tokenizer differs from the student's (before any actor starts)."""
    from distill_ray.losses.divergences import check_same_tokenizer

    if not method_spec(cfg).needs_teacher:
        return
    try:
        teacher_tokenizer = load_tokenizer(cfg.model.teacher)
    except DistillError:
        return  # a teacher directory without tokenizer files: nothing to compare against
    try:
        check_same_tokenizer(teacher_tokenizer, tokenizer)
    except DistillError as exc:
        raise DistillError(f"model.teacher={cfg.model.teacher}: {exc}") from None


def latest_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint in out/checkpoints whose files match their manifest; each newer one
    that does not (a truncated or corrupt file) is named on stderr and set aside as .step_N.bad."""
    return latest_good_checkpoint(out / "checkpoints", set_aside=True)


class RunStopped(KeyboardInterrupt):
    """The run ended on SIGTERM or SIGINT. `exit_status` is 128 + the signal's number (143, 130), what
    a shell reports for a process that signal ended. A KeyboardInterrupt, so that no `except
    Exception` on the way out catches it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_status = 128 + signum


class StopOnSignal:
    """SIGTERM (a cloud or Kubernetes node being reclaimed, which sends it a grace period before
    SIGKILL) and SIGINT (Ctrl-C) during a run.

    In the training loop (`in_loop`), the first one lets the step under way finish; the loop then
    writes a checkpoint of it and raises RunStopped, so `--resume` continues exactly. A second one,
    or one outside the loop (actors starting, the export), stops at once: the handler raises
    KeyboardInterrupt, which also ends a ray.get mid-wait (any other exception would not), and
    leaving the `with` block turns that into RunStopped. A checkpoint being written then stays in
    its staging directory, which no resume uses.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None  # the signal that stops the run
        self.in_loop = False  # set by the loop: a step under way can still be finished and saved
        self._at_once = ""  # what stopped the run at once, for its message
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    def install(self) -> None:
        """Handle both signals from now on. Called after ray.init, which sets a SIGTERM handler of its own."""
        if threading.current_thread() is threading.main_thread():  # only there can Python handle signals
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.in_loop and not self.requested:
            self.signum = signum
            # os.write, not print: a print from a handler can land inside a print under way on the same stream
            os.write(2, f"[run] {name}: stopping after the step under way, with a checkpoint of it "
                        f"(another {name} stops at once)\n".encode())
            return
        if not self.requested:
            self._at_once = name
        else:
            self._at_once = f"a second {name}" if signum == self.signum else f"{name} after {self.name}"
        self.signum = signum
        raise KeyboardInterrupt

    def __enter__(self) -> "StopOnSignal":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, RunStopped) and self._at_once:
            raise RunStopped(f"stopped at once by {self._at_once}; --resume continues from the newest complete "
                             "checkpoint, if any (a save cut off midway is never used)", self.signum) from None


def run(cfg: Config, resume: bool = False, quiet: bool = False) -> dict:
    """Train a student with `cfg.method` on the Ray cluster; returns a summary (also result.json).

    SIGTERM or Ctrl-C mid-run: the step under way is finished and saved, then RunStopped (StopOnSignal)."""
    with StopOnSignal() as stop:
        return _run(cfg, resume, quiet, stop)


def _run(cfg: Config, resume: bool, quiet: bool, stop: StopOnSignal) -> dict:
    check_config(cfg)  # a Config built in code has not been through load_config's checks
    method, spec = cfg.method.name, method_spec(cfg)
    check_model_paths(cfg)  # one line naming the key, before Ray or any actor starts
    out = Path(cfg.trainer.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))

    # ---- data
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.student)
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    check_teacher_tokenizer(cfg, tokenizer)
    train, report = prepare_split(cfg.data, tokenizer, cfg.data.train, shuffle=True, max_rows=cfg.data.max_rows,
                                  max_total_tokens=run_context_length(cfg))
    say(f"[run] {cfg.data.train}: {report}")
    validation = None
    if cfg.data.validation and cfg.trainer.eval_every:
        validation, _ = prepare_split(cfg.data, tokenizer, cfg.data.validation, shuffle=False, max_rows=cfg.eval.max_examples or None)

    # ---- actors: trainer group, rollout workers + queue (on-policy methods), teacher scorers (remote teacher)
    from distill_ray.pipeline.rollout_loop import RolloutPipeline, lambda_on_rng
    from distill_ray.trainer.group import TrainerGroup

    ray_info = connect_ray(cfg)
    if ray_info.get("logs") and not cfg.logging.verbose:
        say(f"[run] actors' output: {ray_info['logs']} (--verbose shows it here)")
    stop.install()
    t_build = time.perf_counter()
    if spec.teacher_writes_data:  # before the trainer's placement group holds its CPUs: the teacher workers may need them
        say("[run] seqkd: the teacher generates the training responses once")
        train = teacher_generated_rows(cfg, train, pad_id, eos_id)
    start_step, positions, rng_state = 1, {}, None
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:  # the driver's own state (data positions, step, mixing RNG), read before any actor starts
        state = read_client_state(ckpt)
        start_step, positions, rng_state = state["step"] + 1, state["positions"], state.get("lambda_rng")
    # the trainer ranks build (imports, process group, engines) while the rollout workers build
    trainer = TrainerGroup(cfg, wait=False)
    # dataset rows and rollout prompts come from two independent streams, so each resumes exactly
    data_stream = PromptStream(train, cfg.trainer.batch_size, cfg.trainer.seed, DataPosition(**positions.get("data", {})),
                               cfg.data.length_window)
    rollout = None
    if spec.rollouts:
        prompts = PromptStream(train, cfg.trainer.batch_size, cfg.trainer.seed + 1, DataPosition(**positions.get("prompts", {})),
                              cfg.data.length_window)
        rollout = RolloutPipeline(cfg, prompts, pad_id, eos_id, switch=spec.switch, wait=False)
    # top-k from a teacher service, or from TeacherScorer actors (pipeline/teachers.py)
    scorers = open_teacher_source(cfg) if trainer.options.teacher_mode == "remote" else None
    trainer.wait_ready()
    if ckpt is not None:
        trainer.load_checkpoint(str(ckpt))
        drop_records_from(out / "metrics.jsonl", start_step)  # steps after the checkpoint are trained (and logged) again
        say(f"[run] resumed from {ckpt} at step {start_step}")
    elif resume:
        say(f"[run] --resume: no checkpoint in {out / 'checkpoints'}; starting from step 1")
        drop_records_from(out / "metrics.jsonl", 1)  # an earlier attempt's steps are trained again
    if rollout is not None:
        rollout.wait_ready()
        if start_step > 1:
            rollout.sync_weights(trainer.student_state_safetensors(), start_step - 1, trainer.teacher_merged_safetensors())
    mix = lambda_on_rng(cfg.trainer.seed)
    if rng_state is not None:
        mix.setstate(rng_state)
    say(f"[run] {method}: {cfg.trainer.num_workers} trainer rank(s) (ZeRO-{cfg.trainer.zero_stage}, teacher "
        f"{trainer.reports[0].teacher}), {cfg.rollout.num_workers if rollout else 0} rollout worker(s) "
        f"({cfg.rollout.backend}), built in {time.perf_counter() - t_build:.0f}s")
    placement = report_placement(cfg, trainer, rollout, scorers)
    say(format_placement(placement))

    # ---- loop: batch -> (teacher scores) -> train step -> weight sync -> eval -> checkpoint
    logger = MetricsLogger(out, cfg.logging, to_dict(cfg))
    history: list[dict] = []
    t_loop = time.perf_counter()
    try:
        stop.in_loop = True  # from here a SIGTERM or a first Ctrl-C ends the run after a step, with its checkpoint
        for step in range(start_step, cfg.trainer.max_steps + 1):
            version = step - 1  # the student weights before this step
            t0 = time.perf_counter()
            on_policy = rollout is not None and (not spec.mixes_dataset or mix.random() < cfg.method.lambda_on)
            if on_policy:
                batch, extra = rollout.next_batch(version)
            else:
                batch, extra = dataset_batch(data_stream.next_rows(), pad_id), {}
            if scorers is not None:
                batch = scorers.score(batch)
            extra["timing/get_batch"] = time.perf_counter() - t0
            metrics = trainer.train_step(batch)
            metrics.update(extra)
            metrics.update({k: v for k, v in batch.metrics.items() if isinstance(v, (int, float))})
            if on_policy and spec.switch:  # who wrote which part of the responses (issue 13: by position)
                metrics.update(teacher_fraction_by_bucket(batch.writer_mask, batch.response_mask))
            metrics["policy_version"], metrics["trainer_version"] = float(batch.policy_version), float(version)
            metrics["on_policy"] = float(on_policy)
            metrics["rows"] = batch.prompt_index.tolist()  # which training rows this step saw (exactly-once accounting)
            if rollout is not None and step % cfg.rollout.sync_every == 0:
                t_sync = time.perf_counter()
                rollout.sync_weights(trainer.student_state_safetensors(), step, trainer.teacher_merged_safetensors())
                metrics["timing/weight_sync"] = time.perf_counter() - t_sync
            if validation and step % cfg.trainer.eval_every == 0:
                metrics.update(_validate(cfg, trainer, tokenizer, validation))
            stopping = stop.requested  # the signal came during this step (or the last one's save): save it, then stop
            if (cfg.trainer.save_every and step % cfg.trainer.save_every == 0) or step == cfg.trainer.max_steps or stopping:
                t_ckpt = time.perf_counter()
                positions = {"data": asdict(data_stream.position)}
                if rollout is not None:
                    positions["prompts"] = asdict(rollout.resume_position())
                saved = out / "checkpoints" / f"step_{step:06d}"
                trainer.save_checkpoint(str(saved), {"step": step, "positions": positions, "lambda_rng": mix.getstate()})
                prune_checkpoints(out / "checkpoints", cfg.trainer.keep_checkpoints, newest=saved)
                metrics["timing/checkpoint"] = time.perf_counter() - t_ckpt
            metrics["timing/step_total"] = time.perf_counter() - t0
            logger.log(step, metrics)
            logger.progress(step, cfg.trainer.max_steps, metrics)
            history.append({"step": step, **metrics})
            if step == cfg.trainer.fail_after_step:  # TEST ONLY fault injection: a hard kill, no cleanup
                os.kill(os.getpid(), signal.SIGKILL)
            if stopping:
                raise RunStopped(f"stopped by {stop.name} after step {step}: checkpoint {saved} written; "
                                 "--resume continues from it", stop.signum)
    finally:
        stop.in_loop = False
        logger.close()
    train_seconds = time.perf_counter() - t_loop

    # ---- export and final evaluation
    trainer.export_student(str(out / "student"))
    result = {"method": method, "train_seconds": train_seconds, "steps": len(history), "student_dir": str(out / "student"),
              "losses": [h["loss"] for h in history],
              "placement": {"trainer": [asdict(r) for r in trainer.reports],
                            "rollout": rollout.placement if rollout else [],
                            "teacher": rollout.scorer_placement if rollout else []}}
    if rollout is not None:
        result["rollout_dropped_stale"], result["rollout_restarts"] = rollout.dropped, rollout.restarts
        rollout.shutdown()
    if scorers is not None:
        scorers.shutdown()
    trainer.shutdown()
    if cfg.data.test:
        from distill_ray.models.build import load_causal_lm

        test, _ = prepare_split(cfg.data, tokenizer, cfg.data.test, shuffle=False, max_rows=cfg.eval.max_examples or None)
        res = evaluate_model(load_causal_lm(out / "student"), tokenizer, test, max_new_tokens=cfg.eval.max_new_tokens,
                             batch_size=cfg.eval.batch_size)
        result["test"] = res
        write_json(out / "eval.json", res)
        say(format_table({f"{method} student": res}))
    write_json(out / "result.json", result)
    return result


def _validate(cfg: Config, trainer, tokenizer, rows: list[Encoded]) -> dict[str, float]:
    """Validation ROUGE-L / exact match of the current student (weights pulled from rank 0)."""
    from safetensors.torch import load as load_safetensors

    from distill_ray.models.build import load_causal_lm

    t0 = time.perf_counter()
    model = load_causal_lm(cfg.model.student)
    model.load_state_dict(load_safetensors(trainer.student_state_safetensors()), strict=False)
    res = evaluate_model(model, tokenizer, rows, max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size)
    out = {"val/rouge_l": res["overall"]["rouge_l"], "val/exact_match": res["overall"]["exact_match"]}
    if cfg.eval.teacher_kl:
        from distill_ray.eval.evaluate import teacher_closeness

        close = teacher_closeness(model, _reference_teacher(cfg.model.teacher), rows, pad_token_id=tokenizer.pad_token_id)
        out.update({"val/kl_teacher": close["kl_teacher_student_per_token"], "val/student_ppl": close["student_perplexity"]})
    return {**out, "timing/eval": time.perf_counter() - t0}


_TEACHERS: dict[str, object] = {}


def _reference_teacher(path: str):
    """The frozen teacher for validation's KL (eval.teacher_kl), loaded once per driver process."""
    if path not in _TEACHERS:
        from distill_ray.models.build import load_causal_lm

        _TEACHERS.clear()
        _TEACHERS[path] = load_causal_lm(path).eval()
    return _TEACHERS[path]
