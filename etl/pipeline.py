"""`shardtune etl`: raw catalogue JSON -> cleaned, deduplicated, sharded Parquet.

    read (per line, errors isolated) -> clean (vectorised) -> filter (counted) -> shards

Every input line ends in exactly one bucket: kept, dropped for a reason, or
malformed (quarantined in rejects.jsonl). The manifest is written last.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import IO, Iterator

from shardtune.console import log, meter
from shardtune.errors import UserError
from shardtune.files import atomic_open, check_output_dir, prepare_output_dir
from shardtune.lock import locked
from shardtune.manifest import EtlManifest, InputFile
from shardtune.shard_writer import InBackground
from shardtune.workers import signals_held

from .config import EtlConfig
from .fields import check_fields, schema
from .filters import apply_filters, default_filters, settle
from .lines import Span
from .read import Batch, InputReader
from .workers import Cleaned, decode_and_clean, start
from .shards import DROPPED_SCHEMA, OWNED_FILES, ShardWriter


def run_etl(inputs: list[Path], out: Path, config: EtlConfig | None = None) -> EtlManifest:
    """Clean `inputs` into Parquet shards under `out`; returns the manifest it wrote."""
    config = (config or EtlConfig()).check()
    if not inputs:
        raise UserError("no input files given")
    refuse_repeated(inputs)
    record = schema(config.fields())
    readers = [InputReader(p, config.batch_lines, config.max_line_bytes, config.batch_bytes, record)
               for p in inputs]  # fail fast on bad paths
    try:
        for reader in readers:
            if str(reader.path) != "-" and out.resolve() in reader.path.resolve().parents:
                raise UserError(f"input {reader.path} is inside --out {out}, whose earlier output etl replaces; "
                                "move the input or write to another folder")
        check_output_dir(out, OWNED_FILES)
        for reader in readers:
            check_fields(reader.path, config.fields(), config.max_line_bytes, reader.is_array())
    except BaseException:
        for reader in readers:
            reader.close()
        raise
    with locked(out, "etl"):
        return _run(readers, out, config)


def refuse_repeated(inputs: list[Path]) -> None:
    """One file given twice (as a.json and ./a.json, or through a link) would be read twice and
    every record of the second reading counted as a duplicate; standard input can be read once."""
    if sum(str(p) == "-" for p in inputs) > 1:  # the second would find it read to its end, and closed
        raise UserError("- (standard input) is given more than once; it can be read only once: give it once")
    seen: dict[tuple[int, int], Path] = {}
    for path in inputs:
        try:
            st = os.stat(path) if str(path) != "-" else None
        except OSError:
            continue  # missing or unreadable: the reader says which
        if st is None or not stat.S_ISREG(st.st_mode):
            continue
        first = seen.get((st.st_dev, st.st_ino))
        seen[(st.st_dev, st.st_ino)] = first or path
        if first is not None:
            same = "" if str(first) == str(path) else f" (as {first} and {path})"
            raise UserError(f"input {first} is given more than once{same}; give each file once")


def _run(readers: list[InputReader], out: Path, config: EtlConfig) -> EtlManifest:
    prepare_output_dir(out, OWNED_FILES)
    started = time.perf_counter()
    run = EtlRun(out, config, [InputFile(path=str(r.path), bytes=r.size) for r in readers])
    try:
        with atomic_open(out / "rejects.jsonl", "w", encoding="utf-8") as rejects, \
                meter("etl", sum(r.size for r in readers), "bytes", ("lines",)) as progress:
            for info, batch, cleaned, done_bytes in cleaned_batches(readers, run.files, config):
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


def cleaned_batches(readers: list[InputReader], files: list[InputFile], config: EtlConfig
                    ) -> Iterator[tuple[InputFile, Batch, Cleaned, int]]:
    """(input, its decoded batch without records, its cleaned records, input bytes consumed) for
    every block of every input, in input order.

    Decoding a line is Python and holds the GIL, so blocks are decoded and cleaned in worker
    processes, `workers + 1` at most in flight (bounded memory); this process reads, and takes
    the results back in order, so the output is the same for any number of workers."""
    workers = config.workers or os.cpu_count() or 1
    if 0 < sum(r.size for r in readers) <= 2 * config.batch_bytes:
        workers = 1  # two blocks or fewer: starting processes (about a second) would cost more than it saves
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=start,
                               initargs=(os.getpid(),)) if workers > 1 else None
    in_flight: deque[tuple[InputFile, int, bool, Future]] = deque()
    done_bytes = 0
    try:
        for reader, info in zip(readers, files):
            try:
                for item in reader.batches():
                    job = (item, config)
                    # a broken compressed stream's batch comes decoded here: counted here too
                    remote = pool is not None and not isinstance(item, Batch)
                    if remote:
                        with signals_held():  # a submit may start a worker: see shardtune.workers
                            future = pool.submit(decode_and_clean, *job)
                    else:
                        future = _Done(decode_and_clean(*job))
                    in_flight.append((info, done_bytes, isinstance(item, Span), future))
                    while len(in_flight) > (workers if pool else 0):
                        yield _take(in_flight)
            finally:
                reader.close()
            done_bytes += reader.size
        while in_flight:
            yield _take(in_flight)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class _Done:
    """A finished result in the place of a Future (no worker processes)."""

    def __init__(self, value) -> None:
        self.value = value

    def result(self):
        return self.value


def _take(in_flight: deque) -> tuple[InputFile, Batch, Cleaned, int]:
    info, done_bytes, numbered_from_1, future = in_flight.popleft()
    batch, cleaned = future.result()
    if numbered_from_1:  # a span's lines count from its start: add the lines of the file before it
        for m in batch.malformed:
            m.line += info.lines_read
    return info, batch, cleaned, done_bytes + batch.position


class EtlRun:
    """The running counts and writers of one ETL run."""

    def __init__(self, out: Path, config: EtlConfig, files: list[InputFile]) -> None:
        self.filters = default_filters(config.min_content_chars)
        self.writer = InBackground(ShardWriter(out, config.shard_rows))
        self.dropped_writer = InBackground(ShardWriter(out, config.shard_rows, DROPPED_SCHEMA, "dropped")) \
            if config.keep_dropped else None
        self.files = files
        self.dropped = {f.reason: 0 for f in self.filters}
        self.malformed_kinds: dict[str, int] = {}
        self.lines = self.kept = self.malformed = 0

    def quarantine(self, info: InputFile, batch: Batch, rejects: IO[str]) -> None:
        """Count the batch's lines and write its malformed ones, blank lines apart, to rejects.jsonl."""
        for m in batch.malformed:
            self.malformed_kinds[m.kind] = self.malformed_kinds.get(m.kind, 0) + 1
            if m.kind == "broken_stream":  # what follows it went unread: the one reject that hides lines
                log(f"etl: warning: {info.path}: {m.detail} (line or element {m.line:,}); nothing after it "
                    "could be read, and it counts as one reject; mend the file there (or, for a JSON "
                    "array, write it as NDJSON, one record a line) and re-run")
            if m.kind == "blank_line":  # holds nothing to audit: counted only (a file of newlines made GBs)
                continue
            rejects.write(json.dumps({"file": info.path, "line": m.line, "kind": m.kind, "reason": m.detail,
                                      "raw": m.raw.decode("utf-8", "backslashreplace")}, ensure_ascii=False) + "\n")
        info.lines_read += batch.lines
        info.malformed += len(batch.malformed)
        self.lines += batch.lines
        self.malformed += len(batch.malformed)

    def keep(self, info: InputFile, cleaned: Cleaned) -> None:
        """Finish judging one cleaned batch (the stateful filters, in input order), write what is
        kept and count the rest, the rows the worker dropped already included."""
        for reason, n in cleaned.dropped.items():
            self.dropped[reason] += n
        if cleaned.rows.height == 0:
            return
        judged = apply_filters(cleaned.judged, [f for f in self.filters if f.stateful])
        keep, counts, reasons = settle(judged, self.filters)
        kept = cleaned.rows.filter(keep)
        self.writer.write(kept.to_arrow())
        if self.dropped_writer and len(reasons):
            self.dropped_writer.write(cleaned.rows.filter(~keep).with_columns(reasons).to_arrow())
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
