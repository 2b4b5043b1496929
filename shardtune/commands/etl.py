"""`shardtune etl INPUT... --out DIR`: catalogue JSON -> cleaned Parquet shards."""

from __future__ import annotations

from pathlib import Path

from shardtune.etl.config import EtlConfig
from shardtune.options import add_command


def add_parser(sub) -> None:
    p = add_command(sub, "etl", EtlConfig, run, help="clean catalogue JSON into sharded Parquet",
                    description="Stream NDJSON (.json/.jsonl, optionally .gz) or a JSON array of catalogue "
                    "records into cleaned, deduplicated Parquet shards (uid, title, content). Every line is "
                    "accounted for in DIR/manifest.json; malformed lines go to DIR/rejects.jsonl (blank lines, "
                    "which hold nothing to audit, are only counted).")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="catalogue file(s): NDJSON, .gz or a JSON array")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (new, empty, or an earlier etl output)")


def run(args, config) -> int:
    from shardtune.console import say
    from shardtune.etl.pipeline import run_etl

    manifest = run_etl(args.inputs, args.out, config)
    dropped = ", ".join(f"{k} {v:,}" for k, v in manifest.dropped.items() if v)
    say(f"{manifest.lines_read:,} lines: {manifest.records_kept:,} kept in {len(manifest.shards)} shard(s), "
        f"{sum(manifest.dropped.values()):,} dropped ({dropped or 'none'}), {manifest.malformed:,} malformed "
        f"-> {args.out}")
    return 0
