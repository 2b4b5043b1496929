"""Batches from the memory-mapped token shards, with almost no padding.

Each epoch, examples are shuffled with (seed, epoch); within windows of 64
batches they are sorted by length and cut into batches, and the batches are
shuffled again. A batch is padded only to its own longest example, so the
padding fraction is a few percent instead of the seed's pad-everything-to-256.
Padding sits on the right, where a causal model never attends to it, so an
example's loss is the same alone or beside others (tests/test_train.py).

The data position (epoch, batch index) is all a checkpoint needs to resume: the
order itself is recomputed from the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from shardtune.tokens.shards import TokenShards

WINDOW_BATCHES = 64


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

    def to(self, device: torch.device) -> "Batch":
        if device.type == "cpu":
            return self
        move = lambda t: t.pin_memory().to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.input_ids), move(self.position_ids), self.labels,
                     move(self.predict_at), move(self.targets), self.real_tokens, self.padded_tokens, self.predicted)


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                  rank: int = 0, world: int = 1) -> list[np.ndarray]:
    """The example indices of every batch of one epoch, for one rank."""
    n = len(lengths)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n) if shuffle else np.arange(n)
    batches: list[np.ndarray] = []
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
            pad_multiple: int = 1, rows_multiple: int = 1) -> Batch:
    """One right-padded batch. On a GPU, `pad_multiple` and `rows_multiple` round the sequence
    length and the number of predicted rows up, so that matrix shapes repeat from step to step
    (a new shape costs cuBLAS a fresh algorithm choice); the extra positions carry no loss."""
    examples = [shards[int(i)] for i in indices]
    longest = min(_round_up(max(len(ids) for ids, _ in examples), pad_multiple), max_length)
    b = len(examples)
    input_ids = np.full((b, longest), pad_id, dtype=np.int64)
    labels = np.full((b, longest), -100, dtype=np.int64)
    real = 0
    for row, (ids, prompt_len) in enumerate(examples):
        ids = ids[:longest]
        n = len(ids)
        input_ids[row, :n] = ids
        first_label = 0 if loss_on == "prompt+answer" else min(prompt_len, n)
        labels[row, first_label:n] = ids[first_label:]
        real += n
    positions = np.broadcast_to(np.arange(longest, dtype=np.int64), (b, longest)).copy()
    # Position p predicts token p + 1: keep the positions whose next token has a label.
    nxt = np.full((b, longest), -100, dtype=np.int64)
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
                 real, b * longest - real, predicted)
