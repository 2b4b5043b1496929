"""Record filters. Each is a small class that answers, for a whole cleaned batch,
which rows it drops; its `reason` is the name counted in the manifest. A filter
that remembers what it let through (duplicates) does so in `kept()`, which is told
the rows that passed every filter.

Filters run in order and a row is charged to the first filter that drops it, so
the counts add up: kept + sum(dropped) == records parsed. A filter that needs no
memory of other batches (`stateful = False`) runs in the worker processes beside
the cleaning; the stateful ones (duplicates) run in input order in the main process,
where they see no text: only the `reason` column and the columns their `annotate()`
computed in the workers (a hash of the text, say). The decisions travel as that
`reason` column, null while a row is kept.
"""

from __future__ import annotations

import numpy as np
import polars as pl


class Filter:
    reason: str = ""
    stateful = False  # True: must see every batch, in input order (in the main process)

    def drops(self, df: pl.DataFrame) -> pl.Series:
        """A boolean Series: True where the row is dropped for `self.reason`."""
        raise NotImplementedError

    def kept(self, df: pl.DataFrame) -> None:
        """The rows of the batch that passed every filter, in input order (a no-op by default)."""

    def annotate(self, df: pl.DataFrame) -> pl.DataFrame:
        """Columns a stateful filter can compute batch by batch, in the worker processes, ahead of
        its decisions in the main process (none by default)."""
        return df


class EmptyTitle(Filter):
    reason = "empty_title"

    def drops(self, df: pl.DataFrame) -> pl.Series:
        return df["title"].str.len_bytes() == 0


class EmptyContent(Filter):
    reason = "empty_content"

    def drops(self, df: pl.DataFrame) -> pl.Series:
        return df["content"].str.len_bytes() == 0


class ShortContent(Filter):
    reason = "short_content"

    def __init__(self, min_chars: int) -> None:
        self.min_chars = min_chars

    def drops(self, df: pl.DataFrame) -> pl.Series:
        return df["content"].str.len_chars() < self.min_chars


class ContentEqualsTitle(Filter):
    """The answer would only repeat the question; case and spacing are already normalised."""

    reason = "content_equals_title"

    def drops(self, df: pl.DataFrame) -> pl.Series:
        title, content = df["title"], df["content"]
        same_length = title.str.len_bytes() == content.str.len_bytes()  # cheap pre-check
        idx = same_length.arg_true()
        hit = pl.Series(self.reason, [False] * df.height, dtype=pl.Boolean)
        if idx.len():
            equal = content.gather(idx).str.to_lowercase() == title.gather(idx).str.to_lowercase()
            hit = hit.scatter(idx.filter(equal), True)
        return hit


class ExactDuplicate(Filter):
    """Drops a (title, content) pair seen before, in this batch or an earlier one.

    Remembers one 64-bit hash per kept pair in a sorted numpy array: 8 bytes a
    record (16 MB for 2 million), instead of the strings themselves. Two different
    pairs share a hash with odds of about n^2 / 2^65 (1e-7 for 2 million pairs).
    """

    reason = "duplicate"
    stateful = True

    def __init__(self) -> None:
        self.seen = np.empty(0, dtype=np.uint64)  # sorted hashes of every record kept so far

    def annotate(self, df: pl.DataFrame) -> pl.DataFrame:
        return df.with_columns(pl.struct("title", "content").hash(seed=0x5EED).alias("pair_hash"))

    @classmethod
    def _hashes(cls, df: pl.DataFrame) -> pl.Series:
        return (df if "pair_hash" in df.columns else cls().annotate(df))["pair_hash"]

    def drops(self, df: pl.DataFrame) -> pl.Series:
        hashes = self._hashes(df)
        repeat_in_batch = hashes.is_duplicated() & ~hashes.is_first_distinct()
        values = hashes.to_numpy()
        seen_before = np.zeros(len(values), bool)
        if len(self.seen):
            # Sorted keys search faster (NumPy starts each search where the last one ended).
            order = np.argsort(values)
            keys = values[order]
            pos = np.minimum(np.searchsorted(self.seen, keys), len(self.seen) - 1)
            seen_before[order] = self.seen[pos] == keys
        return pl.Series(self.reason, repeat_in_batch.to_numpy() | seen_before)

    def kept(self, df: pl.DataFrame) -> None:
        if df.height:
            # Both parts are sorted, so the stable sort (timsort) is a linear merge;
            # np.union1d would re-sort everything on every batch.
            merged = np.concatenate([self.seen, np.sort(self._hashes(df).to_numpy())])
            merged.sort(kind="stable")
            self.seen = merged


def default_filters(min_content_chars: int) -> list[Filter]:
    return [EmptyTitle(), EmptyContent(), ShortContent(min_content_chars), ContentEqualsTitle(), ExactDuplicate()]


def apply_filters(df: pl.DataFrame, filters: list[Filter]) -> pl.DataFrame:
    """`df` with its `reason` column decided by `filters` for the rows still undecided (a missing
    column: every row undecided)."""
    reason = df["reason"] if "reason" in df.columns else pl.Series("reason", [None] * df.height, dtype=pl.String)
    for f in filters:
        hit = f.drops(df) & reason.is_null()
        reason = pl.select(pl.when(hit).then(pl.lit(f.reason)).otherwise(reason)).to_series().alias("reason")
    return df.with_columns(reason)


def settle(judged: pl.DataFrame, filters: list[Filter]) -> tuple[pl.Series, dict[str, int], pl.Series]:
    """(which rows are kept, count per reason, the reasons of the dropped rows in order) of a
    decided batch; every filter is told what was kept."""
    keep = judged["reason"].is_null()
    kept = judged.filter(keep)
    for f in filters:
        f.kept(kept)
    reasons = judged["reason"].filter(~keep)
    counts = dict.fromkeys((f.reason for f in filters), 0)
    counts.update(reasons.value_counts().iter_rows())
    return keep, counts, reasons
