"""Batches from the memory-mapped token shards: little padding, few shapes, made ahead.

Lengths come from a small fixed set of buckets (`length_buckets`, chosen once per run
from the training split's lengths to pad least). Each epoch, examples are shuffled
with (seed, epoch), grouped by bucket (keeping the shuffled order inside a bucket)
and cut into batches, and the batches are shuffled again. So a batch is padded to
its bucket, a few percent, instead of the seed's pad-everything-to-256, and the
model sees at most `len(buckets)` sequence lengths: on a GPU each new shape costs a
compilation, a CUDA graph or a cuBLAS algorithm search, so fewer is faster.
Padding sits on the right, where a causal model never attends to it, so an
example's loss is the same alone or beside others (tests/test_train.py).

The data position (epoch, batch index) is all a checkpoint needs to resume: the
order itself is recomputed from the seed. The Prefetcher collates the next steps on
a background thread, in the same order, so the position it hands back stays exact.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, fields
from typing import Callable

import numpy as np
import torch

from shardtune.tokens.shards import TokenShards

WINDOW_BATCHES = 64  # without buckets: batches are sorted by length within windows of this many
BUCKET_STEP = 8  # bucket lengths are multiples of 8, which tensor cores like


@dataclass
class Batch:
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    predict_at: torch.Tensor  # flat (row * length + position) indices whose next token carries a label
    targets: torch.Tensor  # the labels there (-100 on rows added only to round the count up)
    real_tokens: int
    padded_tokens: int
    predicted: int  # real targets: the loss is their mean

    def pin(self) -> "Batch":
        """A copy in page-locked memory, so the copy to the GPU can overlap compute."""
        return Batch(*(getattr(self, f.name).pin_memory() if isinstance(getattr(self, f.name), torch.Tensor)
                       else getattr(self, f.name) for f in fields(self)))

    def to(self, device: torch.device) -> "Batch":
        if device.type == "cpu":
            return self
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.input_ids), move(self.position_ids), self.labels,
                     move(self.predict_at), move(self.targets), self.real_tokens, self.padded_tokens, self.predicted)


def length_buckets(lengths: np.ndarray, max_length: int, count: int) -> np.ndarray:
    """Up to `count` batch lengths, multiples of BUCKET_STEP up to the longest example (at most
    max_length), that pad these example lengths least (dynamic programming over at most 256
    candidate lengths)."""
    ordered = np.sort(np.minimum(np.asarray(lengths, dtype=np.int64), max_length))
    if len(ordered) == 0:
        return np.array([max_length], dtype=np.int64)
    quantiles = np.quantile(ordered, np.linspace(0, 1, 256))
    candidates = np.unique(np.minimum(np.ceil(quantiles / BUCKET_STEP) * BUCKET_STEP, max_length).astype(np.int64))
    total = np.concatenate([[0], np.cumsum(ordered)])

    def waste(low: np.ndarray, high: int) -> np.ndarray:
        """Padding of the lengths in (low, high] when padded to high."""
        lo, hi = np.searchsorted(ordered, low, "right"), np.searchsorted(ordered, high, "right")
        return (hi - lo) * high - (total[hi] - total[lo])

    n, k_max = len(candidates), min(count, len(candidates))
    best = np.full((k_max + 1, n), np.inf)  # best[k, i]: k buckets covering lengths <= candidates[i]
    back = np.zeros((k_max + 1, n), dtype=np.int64)
    best[1] = [waste(np.array(0), int(c)) for c in candidates]
    for k in range(2, k_max + 1):
        for i in range(1, n):
            cost = best[k - 1, :i] + waste(candidates[:i], int(candidates[i]))
            back[k, i] = int(np.argmin(cost))
            best[k, i] = cost[back[k, i]]
    k = int(np.argmin(best[:, -1]))  # fewer buckets where more would not pad less
    edges, i = [], n - 1
    while k >= 1:
        edges.append(int(candidates[i]))
        i, k = back[k, i], k - 1
    return np.array(sorted(edges), dtype=np.int64)


def bucket_of(length: int, buckets: np.ndarray | None, max_length: int) -> int:
    """The padded length of a batch whose longest example has `length` tokens."""
    length = min(length, max_length)
    if buckets is None:
        return length
    if length > buckets[-1]:  # longer than any example the buckets were made for
        return min(-(-length // BUCKET_STEP) * BUCKET_STEP, max_length)
    return int(buckets[np.searchsorted(buckets, length)])


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                  rank: int = 0, world: int = 1, buckets: np.ndarray | None = None) -> list[np.ndarray]:
    """The example indices of every batch of one epoch, for one rank."""
    n = len(lengths)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n) if shuffle else np.arange(n)
    if buckets is not None:
        # grouped by bucket, shuffled within it; only the few batches at a bucket's edge mix two
        group = np.searchsorted(buckets, np.minimum(lengths[order], buckets[-1]))
        order = order[np.argsort(group, kind="stable")]
        batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    else:
        batches = []
        window = batch_size * WINDOW_BATCHES
        for start in range(0, n, window):
            chunk = order[start:start + window]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    usable = len(batches) - len(batches) % world  # every rank takes the same number of steps
    return batches[rank:usable:world]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def collate(shards: TokenShards, indices: np.ndarray, max_length: int, loss_on: str, pad_id: int,
            buckets: np.ndarray | None = None, rows_multiple: int = 1, batch_rows: int = 0) -> Batch:
    """One right-padded batch, its length the bucket of its longest example. `batch_rows`
    adds rows of padding (no loss) up to a fixed batch size, and `rows_multiple` rounds the
    number of predicted positions up, so that matrix shapes repeat from step to step on a
    GPU; the extra rows and positions carry no loss."""
    examples = [shards[int(i)] for i in indices]
    length = bucket_of(max(len(ids) for ids, _ in examples), buckets, max_length)
    b = max(len(examples), batch_rows)
    input_ids = np.full((b, length), pad_id, dtype=np.int64)
    labels = np.full((b, length), -100, dtype=np.int64)
    real = 0
    for row, (ids, prompt_len) in enumerate(examples):
        ids = ids[:length]
        n = len(ids)
        input_ids[row, :n] = ids
        first_label = 0 if loss_on == "prompt+answer" else min(prompt_len, n)
        labels[row, first_label:n] = ids[first_label:]
        real += n
    positions = np.broadcast_to(np.arange(length, dtype=np.int64), (b, length)).copy()
    # Position p predicts token p + 1: keep the positions whose next token has a label.
    nxt = np.full((b, length), -100, dtype=np.int64)
    nxt[:, :-1] = labels[:, 1:]
    predict_at = np.flatnonzero(nxt.reshape(-1) != -100)
    targets = nxt.reshape(-1)[predict_at]
    predicted = len(targets)
    extra = _round_up(max(predicted, 1), rows_multiple) - predicted
    if extra:
        predict_at = np.concatenate([predict_at, np.zeros(extra, dtype=np.int64)])
        targets = np.concatenate([targets, np.full(extra, -100, dtype=np.int64)])
    return Batch(torch.from_numpy(input_ids), torch.from_numpy(positions),
                 torch.from_numpy(labels), torch.from_numpy(predict_at), torch.from_numpy(targets),
                 real, b * length - real, predicted)


class Prefetcher:
    """Makes the next steps' batches on a background thread, so the GPU never waits for Python.

    `make(position) -> (item, next_position)` runs on the thread, in order; `next()`
    returns (item, next_position) in the same order. At most `depth` items wait (bounded
    memory). Numpy and the memory-mapped reads release the GIL for most of the work.
    """

    def __init__(self, make: Callable, position, depth: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(make, position), name="shardtune-prefetch",
                                        daemon=True)
        self._thread.start()

    def _run(self, make: Callable, position) -> None:
        try:
            while not self._stop.is_set():
                item = make(position)
                position = item[1]
                self._put(item)
        except BaseException as e:  # handed to the consumer, raised there
            self._put(e)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def next(self):
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()
