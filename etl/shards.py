"""Parquet shard writing for the cleaned records.

Layout of an ETL output folder:

    DIR/part-00000.parquet   uid, title, content (UTF-8 strings), zstd, `shard_rows` rows
    DIR/part-00001.parquet   ... the last shard holds the remainder
    DIR/rejects.jsonl        {"file", "line", "kind", "reason", "raw"} per malformed line
    DIR/dropped-00000.parquet  optional (--keep-dropped): filtered records and a `reason` column
    DIR/manifest.json        written last: its presence means the folder is complete

Each shard is written as `part-NNNNN.parquet.tmp` and renamed when closed.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from shardtune.files import file_crc32
from shardtune.shard_writer import RollingShardWriter
from shardtune.manifest import Shard

SCHEMA = pa.schema([("uid", pa.string()), ("title", pa.string()), ("content", pa.string())])
DROPPED_SCHEMA = SCHEMA.append(pa.field("reason", pa.string()))
OWNED_FILES = ("part-*.parquet", "rejects.jsonl", "dropped-*.parquet", "manifest.json")


class ShardWriter(RollingShardWriter):
    """Streams tables into fixed-size Parquet shards `PREFIX-NNNNN.parquet`, each committed atomically."""

    def __init__(self, folder: Path, shard_rows: int, schema: pa.Schema = SCHEMA, prefix: str = "part") -> None:
        super().__init__(folder)
        self.shard_rows, self.schema, self.prefix = shard_rows, schema, prefix
        self._rows = 0

    def _path(self) -> Path:
        return self.folder / f"{self.prefix}-{len(self.shards):05d}.parquet"

    def _open_writer(self, tmp: Path) -> pq.ParquetWriter:
        self._rows = 0
        # No dictionary pages: ids, titles and descriptions hardly repeat, so trying a dictionary
        # first costs time (0.3 us a record) and makes the files no smaller.
        return pq.ParquetWriter(tmp, self.schema, compression="zstd", use_dictionary=False)

    def _close_writer(self) -> None:
        self._writer.close()

    def _describe(self, path: Path) -> Shard:
        return Shard(file=path.name, rows=self._rows, bytes=path.stat().st_size, crc32=file_crc32(path))

    def write(self, table: pa.Table) -> None:
        table = table.cast(self.schema)
        while table.num_rows:
            self._ensure_open()
            take = min(self.shard_rows - self._rows, table.num_rows)
            self._writer.write_table(table.slice(0, take))
            self._rows += take
            table = table.slice(take)
            if self._rows == self.shard_rows:
                self._finish_shard()
