"""`shardtune demo`: every stage on the bundled sample, offline, in minutes."""

from __future__ import annotations

from pathlib import Path

from shardtune.demo import DemoConfig
from shardtune.options import add_command


def add_parser(sub) -> None:
    p = add_command(sub, "demo", DemoConfig, run, help="the whole pipeline on the bundled sample, offline, in minutes",
                    description="etl -> tokenize -> train -> eval -> a few answers on the bundled sample "
                    "(or --input), with the tiny model on a CPU by default; every artefact under --out.")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR", help="(default: runs/demo)")
    p.add_argument("--input", type=Path, nargs="+", metavar="FILE", help="catalogue file(s) instead of the bundled sample")


def run(args, config) -> int:
    from shardtune.console import say
    from shardtune.demo import run_demo

    run_demo(args.out, args.input, config)
    say(f"demo finished; everything is under {args.out}; the report is {args.out / 'eval' / 'report.md'}")
    return 0
