"""`shardtune etl`: raw catalogue JSON -> cleaned, deduplicated, sharded Parquet.

    read (per line, errors isolated) -> clean (vectorised) -> filter (counted) -> shards

Every input line ends in exactly one bucket: kept, dropped for a reason, or
malformed (quarantined in rejects.jsonl). The manifest is written last.
"""

from __future__ import annotations

import json
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from shardtune.config import as_dict
from shardtune.console import log, meter
from shardtune.errors import UserError
from shardtune.files import atomic_open, commit, prepare_output_dir, tmp_path
from shardtune.manifest import EtlManifest, InputFile

from .clean import clean_frame
from .config import EtlConfig
from .filters import apply_filters, default_filters
from .read import Batch, InputReader
from .shards import OWNED_FILES, SCHEMA, ShardWriter


class _DroppedWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        schema = SCHEMA.append(pa.field("reason", pa.string()))
        self.writer = pq.ParquetWriter(tmp_path(path), schema, compression="zstd")

    def write(self, dropped: pl.DataFrame) -> None:
        if dropped.height:
            self.writer.write_table(dropped.select("uid", "title", "content", "reason").to_arrow().cast(self.writer.schema))

    def close(self) -> None:
        self.writer.close()
        commit(tmp_path(self.path), self.path)


def run_etl(inputs: list[Path], out: Path, config: EtlConfig | None = None) -> EtlManifest:
    """Clean `inputs` into Parquet shards under `out`; returns the manifest it wrote."""
    config = config or EtlConfig()
    config.check()
    if not inputs:
        raise UserError("no input files given")
    readers = [InputReader(p, config.batch_lines, config.max_line_bytes) for p in inputs]  # fail fast on bad paths
    prepare_output_dir(out, OWNED_FILES)
    started = time.perf_counter()
    stage = _Stage(out, config)
    total_bytes, done_bytes = sum(r.size for r in readers), 0
    # Decoding is Python and holds the GIL; cleaning is mostly Polars, which
    # releases it. Two worker threads clean the next batches while this thread
    # decodes; filtering (stateful: duplicates) and writing then happen here, in
    # input order, so output is deterministic. At most IN_FLIGHT batches in memory.
    pool = ThreadPoolExecutor(max_workers=2)
    in_flight: deque[tuple[InputFile, Future]] = deque()
    try:
        with atomic_open(out / "rejects.jsonl", "w", encoding="utf-8") as rejects, \
                meter("etl", total_bytes, "bytes", ("lines",)) as progress:
            for reader in readers:
                info = InputFile(path=str(reader.path), bytes=reader.size)
                stage.files.append(info)
                try:
                    for batch in reader.batches():
                        stage.quarantine(info, batch, rejects)
                        in_flight.append((info, pool.submit(_clean_batch, batch)))
                        while len(in_flight) > IN_FLIGHT:
                            stage.keep(*_pop(in_flight))
                        progress.update(done_bytes + batch.position, lines=stage.lines)
                finally:
                    reader.close()
                done_bytes += reader.size
            while in_flight:
                stage.keep(*_pop(in_flight))
        shards = stage.close()
    except BaseException:
        stage.abort()
        raise
    finally:
        pool.shutdown(wait=True)
    manifest = EtlManifest(inputs=stage.files, lines_read=stage.lines, records_kept=stage.kept,
                           dropped=stage.dropped, malformed=stage.malformed, malformed_reasons=stage.malformed_kinds,
                           shards=shards, options=as_dict(config), duration_s=round(time.perf_counter() - started, 3))
    if not manifest.balanced():  # pragma: no cover - a bug, not bad input
        raise RuntimeError(f"line accounting is off ({manifest.lines_read} read): please report this")
    manifest.write(out)
    log(f"etl: {progress.summary()}")
    return manifest


IN_FLIGHT = 2  # batches being cleaned while the next one is decoded


def _clean_batch(batch: Batch) -> pl.DataFrame:
    df = pl.DataFrame(batch.columns(), schema={"uid": pl.String, "title": pl.String, "content": pl.String})
    return clean_frame(df) if df.height else df


def _pop(in_flight: deque) -> tuple[InputFile, pl.DataFrame]:
    info, future = in_flight.popleft()
    return info, future.result()


class _Stage:
    """The running counts and writers of one ETL run."""

    def __init__(self, out: Path, config: EtlConfig) -> None:
        self.filters = default_filters(config.min_content_chars)
        self.writer = ShardWriter(out, config.shard_rows)
        self.dropped_writer = _DroppedWriter(out / "dropped.parquet") if config.keep_dropped else None
        self.files: list[InputFile] = []
        self.dropped = {f.reason: 0 for f in self.filters}
        self.malformed_kinds: dict[str, int] = {}
        self.lines = self.kept = self.malformed = 0

    def quarantine(self, info: InputFile, batch: Batch, rejects) -> None:
        """Count the batch's lines and write its malformed ones to rejects.jsonl."""
        for m in batch.malformed:
            rejects.write(json.dumps({"file": info.path, "line": m.line, "kind": m.kind, "reason": m.detail,
                                      "raw": m.raw.decode("utf-8", "backslashreplace")}, ensure_ascii=False) + "\n")
            self.malformed_kinds[m.kind] = self.malformed_kinds.get(m.kind, 0) + 1
        info.lines_read += batch.lines
        info.malformed += len(batch.malformed)
        self.lines += batch.lines
        self.malformed += len(batch.malformed)

    def keep(self, info: InputFile, cleaned: pl.DataFrame) -> None:
        """Filter one cleaned batch, write what is kept and count the rest."""
        if cleaned.height == 0:
            return
        kept, counts, dropped = apply_filters(cleaned, self.filters)
        self.writer.write(kept.to_arrow())
        if self.dropped_writer:
            self.dropped_writer.write(dropped)
        info.records_kept += kept.height
        self.kept += kept.height
        for reason, n in counts.items():
            self.dropped[reason] += n

    def close(self):
        shards = self.writer.close()
        if self.dropped_writer:
            self.dropped_writer.close()
        return shards

    def abort(self) -> None:
        self.writer.abort()
