"""The `shardtune` command line. Each command is one module of `shardtune.commands` with
an `add_parser(sub)` beside its body; its options come from its config dataclass.
A new command is one file there plus one name in COMMANDS.

User mistakes end as one line on stderr and exit code 2, never a traceback. Building
the parser imports nothing heavy (no torch, numpy, pyarrow or polars), so `--help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys
import threading

from . import __version__
from .errors import UserError, first_line, one_line

COMMANDS = ("synth", "etl", "tokenize", "train", "plan", "generate", "eval", "demo", "convert", "bench")


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, `docker stop`), raised where the program is, so that the same
    clean-up as Ctrl-C's runs: temporary files removed, the lock released, the last checkpoint kept."""


def _terminate(signum, frame):
    # one is enough: a second SIGTERM (`timeout`'s or a supervisor's, to the whole group) landing in the
    # clean-up would interrupt it, or escape main() as a traceback; main() restores the handler it found
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (and exit code 2), like every other error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> Parser:
    parser = Parser(prog="shardtune", description="Fine-tune a causal LM on a big, messy product catalogue on a "
                    "6-12 GB GPU: streaming ETL, pre-tokenized shards, a lean training loop.",
                    epilog="Stages: synth -> etl -> tokenize -> train -> generate/eval. "
                    "Run `shardtune COMMAND --help` for details.")
    parser.add_argument("--version", action="version", version=f"shardtune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"shardtune.commands.{name}").add_parser(sub)
    return parser


def parse(parser: Parser, argv: list[str]):
    """The parsed command line. A command's positional arguments may come after its options too
    (`generate MODEL --temperature 0 "a question"`), as argparse alone allows only before them."""
    args, extras = parser.parse_known_args(argv)
    sub = getattr(args, "_parser", None)
    if extras and sub is not None and not any(e.startswith("-") for e in extras):
        try:
            again = sub.parse_intermixed_args(argv[argv.index(args.command) + 1:])
        except TypeError:  # a parser intermixing cannot read (argparse's limits): the plain error below
            again = None
        if again is not None:
            again.command = args.command
            return again
    if extras:
        (sub or parser).error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def describe_os_error(e: OSError) -> str:
    """One line for what the machine refused: a full disk, a read-only folder, a missing path."""
    import errno

    where = f" ({e.filename})" if e.filename else ""
    if e.errno == errno.ENOSPC:
        return f"no space left on the device{where}; free some and re-run: what was written is consistent"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"not allowed to write or read{where}: {e.strerror}; choose another folder or fix its permissions"
    if e.errno in (errno.EEXIST, errno.ENOTDIR):  # a file where a folder was to be made or gone through
        return f"{e.strerror}{where}: a file stands where a folder is needed; choose another path"
    return f"{e.strerror or e}{where}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8, e.g. in a file name: paths are written into manifests
            shown = os.fsencode(arg).decode("utf-8", "backslashreplace")
            print(f"shardtune: error: argument '{shown}' is not valid UTF-8; give it as UTF-8 (for a path, rename "
                  "the file or folder)", file=sys.stderr)
            return 2
    args = parse(build_parser(), argv)
    # transformers' warnings and advice (read when it is imported, so without importing it here) are
    # about its own API, not the user's run; shardtune says what matters itself. A user's setting wins.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    def fail(message, code: int = 2) -> int:
        print(f"shardtune {args.command}: error: {one_line(message)}", file=sys.stderr)
        return code

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return args.run(args)
    except UserError as e:
        return fail(e, e.exit_code)
    except KeyboardInterrupt as e:
        print(f"shardtune {args.command}: {'terminated' if isinstance(e, Terminated) else 'interrupted'}; "
              "outputs were left consistent, re-run to finish", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except BrokenPipeError:  # the reader went away (`| head`): quiet, as a shell tool killed by SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141
    except OSError as e:
        return fail(describe_os_error(e))
    except MemoryError:
        return fail("out of memory; lower --batch-lines / --batch-size or the number of workers")
    except RuntimeError as e:
        if "Symlink loop" not in str(e):  # pathlib's word for a link that leads back to itself
            return _unexpected(fail, e)
        return fail(f"{first_line(e)}: a symbolic link leads back to itself; give a path without the loop")
    except Exception as e:  # a bug: one line still, the traceback on request
        return _unexpected(fail, e)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _unexpected(fail, e: Exception) -> int:
    if os.environ.get("SHARDTUNE_DEBUG"):
        raise e
    code = re.search(r"\(os error (\d+)\)", str(e))  # an OS error inside a native library (safetensors)
    if code:
        return fail(describe_os_error(OSError(int(code[1]), os.strerror(int(code[1])))))
    return fail(f"unexpected {type(e).__name__}: {first_line(e)[:300]} (SHARDTUNE_DEBUG=1 shows the traceback; "
                "please report it)", 1)


if __name__ == "__main__":
    sys.exit(main())
