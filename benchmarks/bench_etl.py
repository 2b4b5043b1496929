"""`shardtune bench etl`: the streaming cleaner against the seed's per-line loop, same file, one run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shardtune.options import Config, add_command, option


@dataclass
class BenchEtlConfig(Config):
    SECTION = "bench.etl"

    lines: int = option(200_000, "lines to generate", min=1)
    input: str = option("", "benchmark on this file instead of generated data", metavar="FILE")
    malformed_rate: float = option(0.001, "share of generated lines made malformed", min=0, max=1, metavar="P")
    workdir: str = option("runs/bench-etl", "scratch folder", metavar="DIR")


def add_parser(sub) -> None:
    add_command(sub, "etl", BenchEtlConfig, run, help="the streaming cleaner vs json.loads + regex clean_text per line",
                description="Generate N lines (or use --input), run `shardtune etl` and the seed's "
                "per-line cleaner on the same file, each in its own process, and print lines/s, MB/s "
                "and peak RSS.")


def run(args, config) -> int:
    return bench_etl(config)


def bench_etl(config: BenchEtlConfig) -> int:
    from shardtune.console import log
    from shardtune.errors import UserError
    from shardtune.manifest import EtlManifest

    from .common import machine, print_table, run_measured, synth_input

    workdir = Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not config.input:
        input_file = synth_input(workdir, config.lines, config.malformed_rate)
    elif Path(config.input).is_file():
        input_file = Path(config.input)
    else:
        raise UserError(f"input file not found: {config.input}")
    size = input_file.stat().st_size

    log("bench etl: running shardtune etl ...")
    ours = run_measured(["-m", "shardtune.cli", "etl", str(input_file), "--out", str(workdir / "etl")])
    manifest = EtlManifest.read(workdir / "etl")
    n = manifest.lines_read
    log("bench etl: running the seed's per-line cleaner ...")
    seed = run_measured(["-m", "shardtune.benchmarks.seed_etl", str(input_file), str(workdir / "seed.jsonl")])
    rows = [[name, f"{m.seconds:.1f}", f"{n / m.seconds:,.0f}", f"{size / 1e6 / m.seconds:,.1f}", f"{m.peak_rss_mb:,.0f}"]
            for name, m in (("shardtune etl", ours), ("seed (json.loads + clean_text)", seed))]
    rows.append(["ratio", "", f"{seed.seconds / ours.seconds:.1f}x", f"{seed.seconds / ours.seconds:.1f}x",
                 f"{ours.peak_rss_mb / seed.peak_rss_mb:.1f}x"])
    print_table(f"ETL on {n:,} lines ({size / 1e6:,.0f} MB), {machine()}",
                ["approach", "seconds", "lines/s", "MB/s", "peak RSS MB"], rows,
                f"kept {manifest.records_kept:,}, dropped {sum(manifest.dropped.values()):,}, "
                f"malformed {manifest.malformed:,} (accounted: {manifest.lines_read:,} lines)")
    return 0
