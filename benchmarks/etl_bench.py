"""`shardtune bench etl`: the streaming cleaner against the seed's per-line loop, same file, one run."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import psutil
from rich.table import Table

from rich.console import Console

from shardtune.console import log
from shardtune.errors import UserError

from .measure import run_measured


def machine() -> str:
    return f"{platform.machine()}, {psutil.cpu_count(logical=True)} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, Python {platform.python_version()}"


def synth_input(workdir: Path, lines: int, malformed_rate: float) -> Path:
    """Generated benchmark input; deterministic by seed, so an earlier file is reused."""
    from shardtune.etl.synth import write_synth

    path = workdir / f"synth-{lines}-{malformed_rate}.json"
    if not path.exists():
        log(f"bench: generating {lines:,} lines -> {path}")
        write_synth(path, lines, seed=0, malformed_rate=malformed_rate)
    return path


def bench_etl(lines: int, input_file: Path | None, workdir: Path, malformed_rate: float) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    if input_file is None:
        input_file = synth_input(workdir, lines, malformed_rate)
    elif not input_file.is_file():
        raise UserError(f"input file not found: {input_file}")
    size = input_file.stat().st_size

    log("bench etl: running shardtune etl ...")
    ours = run_measured(["-m", "shardtune.cli", "etl", str(input_file), "--out", str(workdir / "etl")])
    manifest = json.loads((workdir / "etl" / "manifest.json").read_text())
    n = manifest["lines_read"]
    log("bench etl: running the seed's per-line cleaner ...")
    seed = run_measured(["-m", "shardtune.benchmarks.seed_etl", str(input_file), str(workdir / "seed.jsonl")])

    table = Table(title=f"ETL on {n:,} lines ({size / 1e6:,.0f} MB), {machine()}")
    for col in ("approach", "seconds", "lines/s", "MB/s", "peak RSS MB"):
        table.add_column(col, justify="right" if col != "approach" else "left")
    for name, m in (("shardtune etl", ours), ("seed (json.loads + clean_text)", seed)):
        table.add_row(name, f"{m.seconds:.1f}", f"{n / m.seconds:,.0f}", f"{size / 1e6 / m.seconds:,.1f}",
                      f"{m.peak_rss_mb:,.0f}")
    table.add_row("ratio", "", f"{seed.seconds / ours.seconds:.1f}x", f"{seed.seconds / ours.seconds:.1f}x",
                  f"{ours.peak_rss_mb / seed.peak_rss_mb:.1f}x")
    out = Console()  # results go to stdout; progress and logs to stderr
    out.print(table)
    out.print(f"kept {manifest['records_kept']:,}, dropped {sum(manifest['dropped'].values()):,}, "
          f"malformed {manifest['malformed']:,} (accounted: {manifest['lines_read']:,} lines)")
    return 0
