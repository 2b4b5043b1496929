"""The work an ETL worker process does on one block: decode its lines, clean the records.

This module imports Polars only inside `decode_and_clean`, so that `start()` runs before
Polars starts its thread pool: with one worker process per core, each Polars should use one
thread, or the processes' threads would fight over the cores (OpenBLAS's, which NumPy starts
and which spin while idle, likewise).
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass
from typing import Any

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def start(parent: int) -> None:
    """Initializer of each worker process; `parent` is the pid of the process that started it."""
    from shardtune.workers import start_worker

    start_worker(parent)
    os.environ["POLARS_MAX_THREADS"] = "1"
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    keep_freed_memory()


def keep_freed_memory() -> None:
    """Let glibc keep the memory of a finished block for the next one, in this process for good
    (so only in the worker processes, which end with the run), unless the user set glibc's
    thresholds in the environment.

    Every block allocates megabytes (its raw bytes, its lines, its columns, its result on the
    pipe) and frees them. By default glibc hands such sizes straight back to the kernel
    (mmap/munmap, and trimming the heap top), and the next block's first touch of each page
    faults and zero-fills it again. On the 2-core machine, in interleaved runs, keeping them cut
    system time from 1.0-1.25 to 0.8 s per million lines and wall time by 7-10%; at other times
    the kernel's faults were cheaper and the gain within the noise. Memory stays bounded: what
    is kept is about what one block used."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ \
            or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this interpreter runs on
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    # Setting a threshold turns glibc's own adjusting off; 32 MB is the most it accepts.
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 64 << 20)


@dataclass
class Cleaned:
    """A block cleaned and judged in a worker, on its way back to the main process.

    The stateful filters judge from `judged` alone: the columns their annotate() added, and the
    reasons so far; the main process, the one part that does not grow with the cores, touches
    the text only to pick the rows it writes. (The text stays a Polars frame: Arrow here would
    load pyarrow's libraries into every worker: 50 MB more each, measured.)"""

    rows: Any  # polars DataFrame: uid, title, content of the rows left to judge (every row with keep_dropped)
    judged: Any  # polars DataFrame: those rows' `reason` (null: undecided) and annotated columns
    dropped: dict[str, int]  # rows the worker dropped and left out of `rows`, by reason


def decode_and_clean(item, config) -> tuple[Any, Cleaned]:
    """(the batch without its records, its records cleaned and judged by the filters that need no
    memory of other batches) for a Span (read here), a Block of raw lines or of a JSON array's
    elements, or a Batch already decoded (a broken compressed stream's one reject). At most
    `batch_lines` records are cleaned at a time. The rows dropped here go back as counts alone,
    unless `keep_dropped` wants them written."""
    import polars as pl

    from .clean import clean_frame
    from .fields import schema
    from .filters import apply_filters, default_filters
    from .lines import Block, Span, span_lines
    from .read import decode_lines

    record = schema(config.fields())
    if isinstance(item, Span):
        batch = decode_lines(span_lines(item, config.max_line_bytes), 1, item.position, config.max_line_bytes, record)
    elif isinstance(item, Block):
        batch = decode_lines(item.lines(), item.first_line, item.position, config.max_line_bytes, record)
    else:
        batch = item
    columns = record.columns(batch.records)
    batch.records = []
    df = pl.DataFrame(columns, schema={"uid": pl.String, "title": pl.String, "content": pl.String})
    step = config.batch_lines
    df = pl.concat([clean_frame(df.slice(i, step)) for i in range(0, df.height, step)]) if df.height else df
    filters = default_filters(config.min_content_chars)
    for f in filters:
        df = f.annotate(df)
    df = apply_filters(df, [f for f in filters if not f.stateful])
    dropped: dict[str, int] = {}
    if not config.keep_dropped:
        dropped = dict(df["reason"].drop_nulls().value_counts().iter_rows())
        df = df.filter(pl.col("reason").is_null())
    text = ["uid", "title", "content"]
    return batch, Cleaned(df.select(text), df.drop(text), dropped)
