"""`shardtune bench etl`: the streaming cleaner against the seed's per-line loop, same file, one run,
on the light (the catalogue's own) and the heavy (entity-, Unicode- and tag-heavy) mix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shardtune.options import Config, add_command, option


@dataclass
class BenchEtlConfig(Config):
    SECTION = "bench.etl"

    lines: int = option(200_000, "lines to generate", min=1)
    profiles: str = option("light,heavy", "generated mixes to run: light, heavy or both", metavar="NAMES")
    workers: str = option("1,0", "shardtune etl --workers values to run (0: one per core)", metavar="N,N")
    input: str = option("", "benchmark on this file instead of generated data", metavar="FILE")
    malformed_rate: float = option(0.001, "share of generated lines made malformed", min=0, max=1, metavar="P")
    workdir: str = option("runs/bench-etl", "scratch folder", metavar="DIR")

    def validate(self) -> None:
        from shardtune.errors import UserError

        if set(self.names("profiles")) - {"light", "heavy"} or not self.names("profiles"):
            raise UserError("--profiles must name light, heavy or both (light,heavy)")
        if not all(w.isdigit() and int(w) <= 256 for w in self.names("workers")) or not self.names("workers"):
            raise UserError("--workers must be whole numbers from 0 to 256, e.g. 1,0")

    def names(self, field_name: str) -> list[str]:
        return [n.strip() for n in getattr(self, field_name).split(",") if n.strip()]


def add_parser(sub) -> None:
    add_command(sub, "etl", BenchEtlConfig, run, help="the streaming cleaner vs json.loads + regex clean_text per line",
                description="Generate N lines of each profile (or use --input), run `shardtune etl` at each "
                "--workers and the seed's per-line cleaner on the same file, each in its own process, and print "
                "lines/s, MB/s and peak memory (the largest process, and all processes together).")


def run(args, config) -> int:
    return bench_etl(config)


def bench_etl(config: BenchEtlConfig) -> int:
    import os

    from shardtune.console import log
    from shardtune.errors import UserError
    from shardtune.manifest import EtlManifest

    from .common import machine, print_table, run_measured, scratch_dir, synth_input

    if config.input and not Path(config.input).is_file():  # before the scratch folder: a refusal leaves none
        raise UserError(f"input file not found: {config.input}")
    workdir = scratch_dir(config.workdir)
    sources = [("input", Path(config.input))] if config.input else \
        [(p, synth_input(workdir, config.lines, config.malformed_rate, p)) for p in config.names("profiles")]
    for profile, input_file in sources:
        size, rows, outputs = input_file.stat().st_size, [], []
        for workers in config.names("workers"):
            log(f"bench etl ({profile}): shardtune etl --workers {workers} ...")
            out = workdir / f"etl-{profile}-{workers}"
            m = run_measured(["-m", "shardtune.cli", "etl", str(input_file), "--out", str(out), "--workers", workers])
            outputs.append(out)
            n = EtlManifest.read(out).lines_read
            label = f"shardtune etl, {int(workers) or os.cpu_count()} worker(s)"
            rows.append((label, m))
        log(f"bench etl ({profile}): the seed's per-line cleaner ...")
        seed = run_measured(["-m", "shardtune.benchmarks.seed_etl", str(input_file), str(workdir / "seed.jsonl")])
        rows.append(("seed (json.loads + clean_text)", seed))
        table = [[name, f"{m.seconds:.1f}", f"{n / m.seconds:,.0f}", f"{size / 1e6 / m.seconds:,.1f}",
                  f"{m.peak_rss_mb:,.0f}", f"{m.peak_total_mb:,.0f}", f"{seed.seconds / m.seconds:.1f}x"]
                 for name, m in rows]
        same = all((a / f).read_bytes() == (outputs[0] / f).read_bytes() for a in outputs[1:]
                   for f in (p.name for p in outputs[0].glob("part-*.parquet")))
        manifest = EtlManifest.read(outputs[0])
        print_table(f"ETL on {n:,} lines ({profile}, {size / 1e6:,.0f} MB), {machine()}",
                    ["approach", "seconds", "lines/s", "MB/s", "peak RSS MB (largest process)",
                     "peak MB (all processes, RSS summed)", "vs seed"], table,
                    f"kept {manifest.records_kept:,}, dropped {sum(manifest.dropped.values()):,}, malformed "
                    f"{manifest.malformed:,} (accounted: {manifest.lines_read:,} lines); shards byte-identical "
                    f"across worker counts: {'yes' if same else 'NO'}")
    return 0
