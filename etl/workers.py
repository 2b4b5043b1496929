"""The work an ETL worker process does on one block: decode its lines, clean the records.

This module imports Polars only inside `decode_and_clean`, so that `start()` runs before
Polars starts its thread pool: with one worker process per core, each Polars should use one
thread, or the processes' threads would fight over the cores.
"""

from __future__ import annotations

import os


def start() -> None:
    """Initializer of each worker process."""
    os.environ["POLARS_MAX_THREADS"] = "1"


def decode_and_clean(item, config):
    """(the batch without its records, its records cleaned and judged by the filters that need no
    memory of other batches, as a DataFrame with a `reason` column) for a Span (read here), a
    Block of raw lines, or a Batch already decoded (a JSON array's). At most `batch_lines`
    records are cleaned at a time."""
    import polars as pl

    from .clean import clean_frame
    from .fields import schema
    from .filters import apply_filters, default_filters
    from .read import Block, Span, decode_lines, span_lines

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
    return batch, apply_filters(df, [f for f in filters if not f.stateful])
