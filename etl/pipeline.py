"""`shardtune etl`: raw catalogue JSON -> cleaned, deduplicated, sharded Parquet.

    read (per line, errors isolated) -> clean (vectorised) -> filter (counted) -> shards

Every input line ends in exactly one bucket: kept, dropped for a reason, or
malformed (quarantined in rejects.jsonl). The manifest is written last.
"""

from __future__ import annotations

import json
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Iterator

import polars as pl

from shardtune.console import log, meter
from shardtune.errors import UserError
from shardtune.files import atomic_open, prepare_output_dir
from shardtune.manifest import EtlManifest, InputFile

from .clean import clean_frame
from .config import EtlConfig
from .filters import apply_filters, default_filters
from .read import Batch, InputReader
from .shards import DROPPED_SCHEMA, OWNED_FILES, ShardWriter


def run_etl(inputs: list[Path], out: Path, config: EtlConfig | None = None) -> EtlManifest:
    """Clean `inputs` into Parquet shards under `out`; returns the manifest it wrote."""
    config = (config or EtlConfig()).check()
    if not inputs:
        raise UserError("no input files given")
    readers = [InputReader(p, config.batch_lines, config.max_line_bytes) for p in inputs]  # fail fast on bad paths
    prepare_output_dir(out, OWNED_FILES)
    started = time.perf_counter()
    run = EtlRun(out, config, [InputFile(path=str(r.path), bytes=r.size) for r in readers])
    try:
        with atomic_open(out / "rejects.jsonl", "w", encoding="utf-8") as rejects, \
                meter("etl", sum(r.size for r in readers), "bytes", ("lines",)) as progress:
            for info, batch, cleaned, done_bytes in cleaned_batches(readers, run.files):
                run.quarantine(info, batch, rejects)
                run.keep(info, cleaned)
                progress.update(done_bytes, lines=run.lines)
        shards = run.close()
    except BaseException:
        run.abort()
        raise
    manifest = EtlManifest(inputs=run.files, lines_read=run.lines, records_kept=run.kept, dropped=run.dropped,
                           malformed=run.malformed, malformed_reasons=run.malformed_kinds, shards=shards,
                           options=config.to_dict(), duration_s=round(time.perf_counter() - started, 3))
    if not manifest.balanced():  # pragma: no cover - a bug, not bad input
        raise RuntimeError(f"line accounting is off ({manifest.lines_read} read): please report this")
    manifest.write(out)
    log(f"etl: {progress.summary()}")
    return manifest


IN_FLIGHT = 2  # batches being cleaned while the next one is decoded


def cleaned_batches(readers: list[InputReader], files: list[InputFile]
                    ) -> Iterator[tuple[InputFile, Batch, pl.DataFrame, int]]:
    """(input, decoded batch, its cleaned records, input bytes consumed) for every batch, in input order.

    Decoding is Python and holds the GIL; cleaning is mostly Polars, which releases it.
    Two threads clean the next batches while this one decodes; at most IN_FLIGHT batches
    wait, so memory stays bounded."""
    in_flight: deque = deque()
    done_bytes = 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        for reader, info in zip(readers, files):
            try:
                for batch in reader.batches():
                    in_flight.append((info, batch, pool.submit(_clean_batch, batch), done_bytes + batch.position))
                    if len(in_flight) > IN_FLIGHT:
                        info_, batch_, future, done = in_flight.popleft()
                        yield info_, batch_, future.result(), done
            finally:
                reader.close()
            done_bytes += reader.size
        while in_flight:
            info_, batch_, future, done = in_flight.popleft()
            yield info_, batch_, future.result(), done


def _clean_batch(batch: Batch) -> pl.DataFrame:
    df = pl.DataFrame(batch.columns(), schema={"uid": pl.String, "title": pl.String, "content": pl.String})
    return clean_frame(df) if df.height else df


class EtlRun:
    """The running counts and writers of one ETL run."""

    def __init__(self, out: Path, config: EtlConfig, files: list[InputFile]) -> None:
        self.filters = default_filters(config.min_content_chars)
        self.writer = ShardWriter(out, config.shard_rows)
        self.dropped_writer = ShardWriter(out, config.shard_rows, DROPPED_SCHEMA, "dropped") \
            if config.keep_dropped else None
        self.files = files
        self.dropped = {f.reason: 0 for f in self.filters}
        self.malformed_kinds: dict[str, int] = {}
        self.lines = self.kept = self.malformed = 0

    def quarantine(self, info: InputFile, batch: Batch, rejects: IO[str]) -> None:
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
        if self.dropped_writer and dropped.height:
            self.dropped_writer.write(dropped.to_arrow())
        info.records_kept += kept.height
        self.kept += kept.height
        for reason, n in counts.items():
            self.dropped[reason] += n

    def close(self):
        if self.dropped_writer:
            self.dropped_writer.close()
        return self.writer.close()

    def abort(self) -> None:
        self.writer.abort()
        if self.dropped_writer:
            self.dropped_writer.abort()
