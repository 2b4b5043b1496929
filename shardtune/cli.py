"""The `shardtune` command line. Each command is one module of `shardtune.commands` with
an `add_parser(sub)` beside its body; its options come from its config dataclass.
A new command is one file there plus one name in COMMANDS.

User mistakes end as one line on stderr and exit code 2, never a traceback. Building
the parser imports nothing heavy (no torch, numpy, pyarrow or polars), so `--help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import UserError

COMMANDS = ("synth", "etl", "tokenize", "train", "plan", "generate", "eval", "demo", "convert", "bench")


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as e:
        print(f"shardtune {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"shardtune {args.command}: interrupted; outputs were left consistent, re-run to finish",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
