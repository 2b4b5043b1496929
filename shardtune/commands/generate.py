"""`shardtune generate MODEL [QUESTION]`: answers, asked in the template the model was trained with."""

from __future__ import annotations

import sys
from pathlib import Path

from shardtune.errors import UserError
from shardtune.infer.config import GenerateConfig
from shardtune.options import add_command


def add_parser(sub) -> None:
    p = add_command(sub, "generate", GenerateConfig, run, help="answer questions about products with a trained model",
                    description="Answer a question about a product (its title, or a sentence about it) with a "
                    "trained model, asked in the prompt template it was trained with (read from the model "
                    "folder's shardtune.json). Streams the answer on a terminal; stops at EOS or "
                    "--max-new-tokens.")
    p.add_argument("model", metavar="MODEL_DIR", help="a run's final/ folder, or any Hugging Face causal LM")
    p.add_argument("question", nargs="?", metavar="QUESTION", help="e.g. 'Girls Ballet Tutu Neon Pink'")
    p.add_argument("--interactive", action="store_true", help="ask questions in a loop (Ctrl-D or 'exit' ends it)")
    p.add_argument("--input", type=Path, metavar="FILE", help="one question per line, or JSONL with a 'title' field")
    p.add_argument("--output", type=Path, metavar="FILE", help="JSONL answers for --input (default: INPUT.answers.jsonl); "
                   "an existing file is replaced only if it holds earlier answers, or with --force")
    p.add_argument("--force", action="store_true", help="replace --output even if it is not an earlier answers file")


def run(args, config) -> int:
    from shardtune.console import log
    from shardtune.infer.generate import Answerer, answer_file, check_output

    if args.question is None and not args.interactive and args.input is None:
        raise UserError("give a QUESTION, --interactive, or --input FILE")
    modes = [flag for flag, given in (("QUESTION", args.question is not None), ("--interactive", args.interactive),
                                      ("--input", args.input is not None)) if given]
    if len(modes) > 1:  # one would be ignored: say so rather than answer only one
        raise UserError(f"give one of QUESTION, --interactive or --input FILE, not {' and '.join(modes)}")
    if args.input is None and (args.output is not None or args.force):
        raise UserError(f"{'--output' if args.output is not None else '--force'} goes with --input FILE, which it writes "
                        "the answers of")
    if args.input is not None:
        if not args.input.exists():
            raise UserError(f"input file not found: {args.input}")
        dst = args.output or args.input.with_suffix(".answers.jsonl")
        check_output(args.input, dst, args.force)  # before loading a model
    if args.input is None and sys.stdout is None:  # started with stdout closed (`>&-`): answers would go nowhere
        raise UserError("standard output is closed; the answers have nowhere to go: "
                        "run without `>&-`, or use --input FILE --output FILE")
    if args.interactive:
        _check_interactive_stdin()  # before loading a model
    answerer = Answerer.load(args.model)
    if args.input is not None:
        answered, skipped = answer_file(answerer, args.input, dst, config, args.force)
        # a status line, so on stderr: --output /dev/stdout stays pure JSONL
        log(f"{answered:,} answers -> {dst}" + (f" ({skipped:,} lines without a question skipped)" if skipped else ""))
        return 0
    if args.question is not None:
        stream = sys.stdout.isatty()
        result = answerer.answer([args.question], config, stream=stream)[0]
        if not stream:
            print(result["answer"])
        return 0
    for question in _questions():
        if question in ("exit", "quit"):
            return 0
        if question:
            answerer.answer([question], config, stream=True)
    return 0


def _check_interactive_stdin() -> None:
    """--interactive reads a terminal, or lines piped in; not a device (/dev/zero would never end a line),
    except /dev/null (cron's and `docker run`'s standard input: no question, done)."""
    import os
    import stat

    if sys.stdin is None:
        raise UserError("--interactive reads questions from standard input, which is closed; run it without `<&-`")
    if sys.stdin.isatty():
        return
    info = os.fstat(sys.stdin.fileno())
    if (stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)) and not os.path.samestat(info, os.stat(os.devnull)):
        raise UserError("--interactive reads questions from standard input, a device here; type them at a terminal, "
                        "pipe them in, or use --input FILE")


def _questions():
    """The questions typed (with the terminal's line editing) or piped in, each line stripped; a
    piped line is read within a bound, so a stream without newlines cannot fill the memory."""
    from shardtune.infer.generate import MAX_QUESTION_BYTES, bounded_lines

    piped = None if sys.stdin.isatty() else bounded_lines(sys.stdin.buffer)  # read lazily, a line per prompt
    while True:
        try:
            if piped is None:
                line = input("question> ")
            else:
                print("question> ", end="", flush=True)
                raw = next(piped, b"")
                if raw == b"":
                    raise EOFError
                if raw is None:
                    print(f"that line is longer than {MAX_QUESTION_BYTES >> 10} KB, no product title; ask again",
                          file=sys.stderr)
                    continue
                line = raw.decode("utf-8")
            line.encode("utf-8")  # a terminal may hand over undecodable bytes as lone surrogates
        except EOFError:
            print()
            return
        except UnicodeError:
            print("that line is not UTF-8 text; ask again", file=sys.stderr)
            continue
        yield line.strip()
