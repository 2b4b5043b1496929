"""The ETL stage's options (kept apart from the pipeline so the CLI can show them without importing Polars)."""

from __future__ import annotations

from dataclasses import dataclass

from shardtune.errors import UserError


@dataclass
class EtlConfig:
    min_content_chars: int = 20  # shorter cleaned content is dropped as "short_content"
    shard_rows: int = 100_000  # rows per Parquet shard
    batch_lines: int = 40_000  # lines decoded and cleaned at a time: bounds memory
    max_line_bytes: int = 1 << 20  # longer lines are quarantined without being held whole
    keep_dropped: bool = False  # also write dropped.parquet (records filtered out, with reason)

    def check(self) -> None:
        for name in ("shard_rows", "batch_lines", "max_line_bytes"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.min_content_chars < 0:
            raise UserError("--min-content-chars must be 0 or more")
