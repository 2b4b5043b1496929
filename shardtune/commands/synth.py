"""`shardtune synth OUT`: trn.json-like test data."""

from __future__ import annotations

from pathlib import Path

from shardtune.data.synth import SynthConfig
from shardtune.errors import UserError
from shardtune.options import add_command


def add_parser(sub) -> None:
    p = add_command(sub, "synth", SynthConfig, run, help="generate trn.json-like test data",
                    description="Write N lines shaped like the AmazonTitles trn.json (quirks included), "
                    "deterministic by --seed; gzip-compressed when OUT ends in .gz.")
    p.add_argument("out", type=_file_name, metavar="OUT",
                   help="file to write (- or a pipe or device such as /dev/stdout: written as a stream)")


def _file_name(text: str) -> Path:
    """OUT names a file: "newdir/" would be taken for the file "newdir" once it is a Path."""
    import argparse

    if text.endswith(("/", "\\")) and text != "/":
        raise argparse.ArgumentTypeError(f"{text!r} names a folder; give a file name (such as {text}trn.json)")
    return Path("/dev/stdout") if text == "-" else Path(text)


def run(args, config) -> int:
    from shardtune.console import log
    from shardtune.data.synth import write_synth
    from shardtune.files import is_stream

    if args.out.is_dir():
        raise UserError(f"OUT {args.out} is a folder; give a file name")
    if not is_stream(args.out):  # a stream (/dev/stdout, a pipe) is written in place: nothing to refuse or make
        if args.out.is_file() and not config.force:
            raise UserError(f"{args.out} exists (perhaps real data); choose another name, or add --force to "
                            "replace it")
        args.out.parent.mkdir(parents=True, exist_ok=True)
    _check_room(args.out, config)
    size = write_synth(args.out, config.lines, config.seed, config.malformed_rate, config.profile)
    # a status line, so on stderr: OUT may be /dev/stdout
    log(f"wrote {config.lines:,} lines ({size / 1e6:,.1f} MB, {config.profile} profile) to {args.out}")
    return 0


def _check_room(out: Path, config) -> None:
    """Refuse a --lines that cannot fit before writing any of it: a run that fills the disk
    fails only at the end, and leaves the disk full meanwhile. The size per line is measured
    on the first lines the seed writes (compressed, for .gz), with a margin for the mix."""
    import gzip
    import shutil
    from itertools import islice

    from shardtune.data.synth import synth_lines
    from shardtune.files import is_stream

    if is_stream(out):
        return  # a device or a pipe (/dev/stdout): the reader decides how much it takes
    sample = b"\n".join(islice(synth_lines(config.lines, config.seed, config.malformed_rate, config.profile), 2_000))
    if not sample:
        return
    sampled = min(config.lines, 2_000)
    per_line = (len(gzip.compress(sample, mtime=0)) if out.suffix.lower() == ".gz" else len(sample) + sampled) / sampled
    needed = per_line * config.lines * 1.1
    free = shutil.disk_usage(out.parent).free
    if needed > free:
        fits = int(free / (per_line * 1.1))
        raise UserError(f"--lines {config.lines:,} would write about {needed / 1e9:,.1f} GB and {out.parent} has "
                        f"{free / 1e9:,.1f} GB free; give --lines {fits:,} or fewer, or write elsewhere")
