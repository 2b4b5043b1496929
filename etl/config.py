"""The ETL stage's options (apart from the pipeline, so `--help` needs no Polars)."""

from __future__ import annotations

from dataclasses import dataclass

from shardtune.options import Config, option


@dataclass
class EtlConfig(Config):
    SECTION = "etl"

    min_content_chars: int = option(20, "drop records whose cleaned content is shorter (short_content)", min=0)
    shard_rows: int = option(100_000, "rows per Parquet shard", min=1)
    batch_lines: int = option(40_000, "lines decoded and cleaned at a time (bounds memory)", min=1)
    batch_bytes: int = option(8 << 20, "input bytes decoded and cleaned at a time (bounds memory whatever the "
                              "line length)", min=1024)
    workers: int = option(0, "processes that decode and clean; 0 for one per CPU core (the output is the same "
                          "for any number)", min=0, max=256)
    max_line_bytes: int = option(1 << 20, "quarantine longer lines (line_too_long) without reading them into "
                                 "memory", min=1)
    keep_dropped: bool = option(False, "also write dropped-*.parquet: every filtered record with its reason")
