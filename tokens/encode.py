"""Turning a batch of (title, content) rows into packed token arrays, on every core.

tiktoken 0.14 and the per-example bookkeeping both hold the GIL, so threads do not
help; worker processes each encode whole batches and send back compact numpy
arrays (2 bytes a token), never Python lists of ints.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from multiprocessing import get_context

import numpy as np

from shardtune.template import PromptTemplate
from shardtune.workers import signals_held

from .tokenizer import Encoder


def is_validation(title: str, val_fraction: float) -> bool:
    """Stable across runs, machines and Python versions: the same product always lands on the same side."""
    digest = hashlib.blake2b(title.casefold().encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < val_fraction * 2**64


def assemble(prompt: list[int], answer: list[int], eos: int, max_length: int) -> tuple[list[int] | None, bool]:
    """(ids, truncated): prompt kept whole, answer cut to fit; EOS only after a whole answer."""
    room = max_length - len(prompt)
    if room <= 0:
        return None, False
    if len(answer) + 1 <= room:
        return prompt + answer + [eos], False
    return prompt + answer[:room], True


@dataclass
class Packed:
    """One split's share of a batch: ids back to back, with each example's length and prompt length."""

    values: np.ndarray
    lengths: np.ndarray
    prompt_lens: np.ndarray
    answer_tokens: int = 0
    truncated: int = 0


@dataclass
class EncodedBatch:
    splits: dict[str, Packed] = field(default_factory=dict)
    rows: int = 0
    dropped: int = 0  # prompt alone did not fit


@dataclass(frozen=True)
class EncodeSpec:
    """Everything a worker needs; pickled once per worker."""

    tokenizer: object
    fast: bool
    template: str
    eos: int
    max_length: int
    val_fraction: float
    dtype: str


def split_texts(template: PromptTemplate, titles: list[str], contents: list[str]) -> tuple[list[str], list[str]]:
    parts = [template.split(t) for t in titles]
    return [p for p, _ in parts], [lead + c for (_, lead), c in zip(parts, contents)]


def encode_rows(spec: EncodeSpec, encoder: Encoder, titles: list[str], contents: list[str]) -> EncodedBatch:
    prompts, answers = split_texts(PromptTemplate(spec.template), titles, contents)
    p_ids, a_ids = encoder.encode_batch(prompts), encoder.encode_batch(answers)
    rows: dict[str, tuple[list, list]] = {"train": ([], []), "val": ([], [])}
    out = EncodedBatch(rows=len(titles))
    stats = {"train": [0, 0], "val": [0, 0]}  # answer tokens, truncated
    for title, p, a in zip(titles, p_ids, a_ids):
        ids, cut = assemble(p, a, spec.eos, spec.max_length)
        if ids is None:
            out.dropped += 1
            continue
        split = "val" if is_validation(title, spec.val_fraction) else "train"
        rows[split][0].append(ids)
        rows[split][1].append(len(p))
        stats[split][0] += len(ids) - len(p)
        stats[split][1] += cut
    for split, (ids, plens) in rows.items():
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int32, count=len(ids))
        values = np.fromiter(chain.from_iterable(ids), dtype=spec.dtype, count=int(lengths.sum()))
        out.splits[split] = Packed(values, lengths, np.asarray(plens, dtype=np.int32), *stats[split])
    return out


_worker: tuple[EncodeSpec, Encoder] | None = None


def _init_worker(spec: EncodeSpec, parent: int) -> None:
    from shardtune.workers import start_worker

    global _worker
    start_worker(parent)
    _worker = (spec, Encoder(spec.tokenizer, fast=spec.fast))


def _encode_in_worker(titles: list[str], contents: list[str]) -> EncodedBatch:
    assert _worker is not None
    return encode_rows(_worker[0], _worker[1], titles, contents)


class BatchEncoder:
    """Encodes batches in order: in this process for `workers <= 1`, else in a process pool
    with at most `workers + 1` batches in flight (memory stays bounded by the batch size)."""

    def __init__(self, spec: EncodeSpec, workers: int) -> None:
        self.spec = spec
        self.workers = workers if workers > 0 else (os.cpu_count() or 1)
        self._local = Encoder(spec.tokenizer, fast=spec.fast) if self.workers <= 1 else None
        self._pool = None
        if self.workers > 1:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"),
                                             initializer=_init_worker, initargs=(spec, os.getpid()))

    def map(self, batches):
        if self._local is not None:
            for titles, contents in batches:
                yield encode_rows(self.spec, self._local, titles, contents)
            return
        in_flight: list[Future] = []
        for titles, contents in batches:
            with signals_held():  # a submit may start a worker: see shardtune.workers
                in_flight.append(self._pool.submit(_encode_in_worker, titles, contents))
            if len(in_flight) > self.workers:
                yield in_flight.pop(0).result()
        for future in in_flight:
            yield future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
