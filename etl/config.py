"""The ETL stage's options (apart from the pipeline, so `--help` needs no Polars)."""

from __future__ import annotations

from dataclasses import dataclass

from shardtune.errors import UserError
from shardtune.options import Config, option


@dataclass
class EtlConfig(Config):
    SECTION = "etl"

    min_content_chars: int = option(20, "drop records whose cleaned content is shorter (short_content)", min=0)
    shard_rows: int = option(100_000, "rows per Parquet shard", min=1)
    batch_lines: int = option(40_000, "lines decoded and cleaned at a time from a pipe or a compressed "
                                "file (a plain file is cut by --batch-bytes alone)", min=1)
    batch_bytes: int = option(8 << 20, "input bytes decoded and cleaned at a time (bounds memory whatever the "
                              "line length)", min=1024)
    workers: int = option(0, "processes that decode and clean; 0 for one per CPU core (the output is the same "
                          "for any number)", min=0, max=256)
    max_line_bytes: int = option(1 << 20, "quarantine longer lines (line_too_long); memory holds at most one "
                                 "read span (32 MB) or this much of such a line", min=1)
    keep_dropped: bool = option(False, "also write dropped-*.parquet: every filtered record with its reason")
    id_field: str = option("uid", "key of a record's id; dotted for a nested key (product.asin)", metavar="KEY",
                           group="field mapping")
    title_field: str = option("title", "key of a record's title; dotted for a nested key", metavar="KEY",
                              group="field mapping")
    content_field: str = option("content", "key of a record's description; dotted for a nested key "
                                "(details.description); a list of strings is joined", metavar="KEY",
                                group="field mapping")

    def fields(self):
        from .fields import Fields

        return Fields(self.id_field, self.title_field, self.content_field)

    def validate(self) -> None:
        for name in ("id_field", "title_field", "content_field"):
            value = getattr(self, name)
            if not value or any(not part for part in value.split(".")):
                raise UserError(f"--{name.replace('_', '-')} must be a key, or keys joined by dots (got {value!r})")
            if any(c in '"\\' or ord(c) < 32 for c in value):  # msgspec cannot match such keys
                raise UserError(f"--{name.replace('_', '-')} {value!r} holds a quote, a backslash or a control "
                                "character, which shardtune cannot match as a key; rename that key in the data")
