"""The training window's counters: what the steps since the last log line add up to, kept on
the device so that no step waits for the GPU (train/loop.py reads them once per log line)."""

from __future__ import annotations

import time

import torch


class Counters:
    """What the steps since the last log line add up to. The loss, the gradient norm and the
    non-finite count stay on the device, so that no step waits for the GPU; they are read
    back once per log line (and before an evaluation or a checkpoint)."""

    def __init__(self, device: torch.device, bad_run: int = 0) -> None:
        zero = lambda: torch.zeros((), device=device)  # noqa: E731
        self.loss, self.skipped, self.grad_norm = zero(), zero(), zero()
        self.bad_run = zero() + bad_run  # non-finite steps in a row, across log lines
        self.bad_max = self.bad_run.clone()  # the longest such run since the last read
        self.steps = self.real = self.padded = 0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, bad: torch.Tensor, real: int, padded: int) -> None:
        self.loss += torch.where(bad, 0.0, loss)
        self.skipped += bad
        self.bad_run = (self.bad_run + 1) * bad
        self.bad_max = torch.maximum(self.bad_max, self.bad_run)
        self.grad_norm = grad_norm
        self.steps, self.real, self.padded = self.steps + 1, self.real + real, self.padded + padded

    def read(self, world: int) -> dict:
        """The window's figures: the one read-back from the device, then a fresh window."""
        loss, skipped, grad_norm, bad_run, bad_max = torch.stack(
            [self.loss, self.skipped, self.grad_norm, self.bad_run, self.bad_max]).tolist()
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out = {"loss": loss / max(1, self.steps), "grad_norm": grad_norm, "skipped": int(skipped),
               "bad_run": int(bad_run), "bad_max": int(bad_max), "tokens_per_s": self.real * world / elapsed,
               "padding": self.padded / max(1, self.real + self.padded)}
        self.loss.zero_(), self.skipped.zero_(), self.bad_max.copy_(self.bad_run)
        self.steps = self.real = self.padded = 0
        self.start = time.perf_counter()
        return out
