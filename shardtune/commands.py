"""The subcommands' bodies: each turns parsed arguments into one call of a stage's
public entry function (run_etl, run_tokenize, run_train, ...) and prints one summary line."""

from __future__ import annotations

import argparse
import os
import sys

from .errors import UserError


def cmd_etl(args: argparse.Namespace) -> int:
    from .config import build
    from .etl.config import EtlConfig
    from .etl.pipeline import run_etl

    config = build(EtlConfig, "etl", args.config, **vars(args))
    manifest = run_etl(args.inputs, args.out, config)
    dropped = ", ".join(f"{k} {v:,}" for k, v in manifest.dropped.items() if v)
    print(f"{manifest.lines_read:,} lines: {manifest.records_kept:,} kept in {len(manifest.shards)} shard(s), "
          f"{sum(manifest.dropped.values()):,} dropped ({dropped or 'none'}), {manifest.malformed:,} malformed "
          f"-> {args.out}")
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    from .config import build
    from .train.tokenize import TokenizeConfig, run_tokenize

    if args.template_file is not None:
        try:
            args.template = args.template_file.read_text(encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot read --template-file {args.template_file}: {e.strerror or e}") from None
    config = build(TokenizeConfig, "tokenize", args.config, **vars(args))
    m = run_tokenize(args.parquet_dir, args.out, config)
    tr, va = m.splits["train"], m.splits["val"]
    print(f"{tr.examples:,} train / {va.examples:,} val examples, {tr.tokens + va.tokens:,} tokens "
          f"({m.dtype}, {m.tokenizer_backend}); truncated {tr.truncated + va.truncated:,}, "
          f"dropped {m.dropped_prompt_too_long:,} -> {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .config import build
    from .train.config import TrainConfig
    from .train.loop import run_train

    config = build(TrainConfig, "train", args.config, **vars(args))
    result = run_train(args.tokens_dir, args.out, config)
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun, one summary line
        print(f"{result['steps']:,} steps: val loss {result['val_loss']:.4f}, perplexity {result['val_perplexity']:.2f}, "
              f"padding {result['padding']:.1%} -> {args.out / 'final'}")
    return 0


def _sampling(args: argparse.Namespace):
    from .infer.generate import Sampling

    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    return Sampling(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.repetition_penalty, args.seed)


def cmd_generate(args: argparse.Namespace) -> int:
    from .infer.generate import Answerer, answer_file

    sampling = _sampling(args)
    if args.question is None and not args.interactive and args.input is None:
        raise UserError("give a QUESTION, --interactive, or --input FILE")
    if args.input is not None and not args.input.is_file():
        raise UserError(f"input file not found: {args.input}")
    answerer = Answerer.load(args.model)
    if args.input is not None:
        dst = args.output or args.input.with_suffix(".answers.jsonl")
        n = answer_file(answerer, args.input, dst, sampling, args.batch_size)
        print(f"{n:,} answers -> {dst}")
        return 0
    if args.question is not None:
        stream = sys.stdout.isatty()
        result = answerer.answer([args.question], sampling, stream=stream)[0]
        if not stream:
            print(result["answer"])
        return 0
    while True:
        try:
            question = input("question> ").strip()
        except EOFError:
            print()
            return 0
        if question in ("exit", "quit"):
            return 0
        if not question:
            continue
        answerer.answer([question], sampling, stream=True)


def cmd_eval(args: argparse.Namespace) -> int:
    from .infer.evaluate import EvalConfig, run_eval

    if args.samples < 1:
        raise UserError("--samples must be at least 1")
    config = EvalConfig(samples=args.samples, eval_examples=args.eval_examples, max_new_tokens=args.max_new_tokens,
                        seed=args.seed)
    run_eval(args.base, args.tuned, args.data, args.out, config)
    print(f"report -> {args.out / 'report.md'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .infer.demo import run_demo

    run_demo(args.out, args.input, args.model, args.steps, args.samples)
    print(f"demo finished; everything is under {args.out}; the report is {args.out / 'eval' / 'report.md'}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .etl.synth import write_synth

    if args.lines < 0:
        raise UserError("--lines must be 0 or more")
    if not 0 <= args.malformed_rate <= 1:
        raise UserError("--malformed-rate must be between 0 and 1")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    size = write_synth(args.out, args.lines, args.seed, args.malformed_rate)
    print(f"wrote {args.lines:,} lines ({size / 1e6:,.1f} MB) to {args.out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.stage == "generate":
        from .benchmarks.generate_bench import bench_generate

        return bench_generate(args.model, args.questions, args.max_new_tokens)
    if args.stage == "memory":
        from .benchmarks.gpu_memory import bench_memory

        return bench_memory(args.model, args.batch_size, args.max_length)
    if args.stage == "train":
        from .benchmarks.train_bench import bench_train

        import torch

        gpu = torch.cuda.is_available()
        model = args.model or ("distilgpt2" if gpu else "tiny")
        return bench_train(args.lines, model, args.steps or (200 if gpu else 40), args.batch_size, args.workdir)
    if args.stage == "tokenize":
        from .benchmarks.tokenize_bench import bench_tokenize

        return bench_tokenize(args.lines, args.workdir)
    from .benchmarks.etl_bench import bench_etl

    return bench_etl(args.lines, args.input, args.workdir, args.malformed_rate)
