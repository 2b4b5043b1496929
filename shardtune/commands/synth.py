"""`shardtune synth OUT`: trn.json-like test data."""

from __future__ import annotations

from pathlib import Path

from shardtune.data.synth import SynthConfig
from shardtune.options import add_command


def add_parser(sub) -> None:
    p = add_command(sub, "synth", SynthConfig, run, help="generate trn.json-like test data",
                    description="Write N lines shaped like the AmazonTitles trn.json (quirks included), "
                    "deterministic by --seed; gzip-compressed when OUT ends in .gz.")
    p.add_argument("out", type=Path, metavar="OUT", help="file to write")


def run(args, config) -> int:
    from shardtune.console import log
    from shardtune.data.synth import write_synth
    from shardtune.errors import UserError

    if args.out.is_dir():
        raise UserError(f"OUT {args.out} is a folder; give a file name")
    if args.out.is_file() and not config.force:
        raise UserError(f"{args.out} exists (perhaps real data); choose another name, or add --force to replace it")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    size = write_synth(args.out, config.lines, config.seed, config.malformed_rate, config.profile)
    # a status line, so on stderr: OUT may be /dev/stdout
    log(f"wrote {config.lines:,} lines ({size / 1e6:,.1f} MB, {config.profile} profile) to {args.out}")
    return 0
