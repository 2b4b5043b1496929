"""Console output shared by every stage.

On a terminal long work gets a rich progress bar; when stderr is not a terminal
(CI, `nohup`, a pipe) it gets one plain log line every few seconds instead, so logs
stay readable. rich honours NO_COLOR by itself.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from shardtune.errors import one_line

console = Console(stderr=True, highlight=False)


class TableConsole(Console):
    """A rich Console for tables on stdout. rich answers a closed pipe (`| head -1`) with a bare
    exit 1; this one raises BrokenPipeError, which the CLI ends quietly with 141, as a shell tool
    killed by SIGPIPE would."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


def log(message: str) -> None:
    """One status line on stderr (stdout stays clean for data such as answers); a newline
    or an escape inside it (a path, a model's answer) is shown escaped, never obeyed."""
    console.print(one_line(message), markup=False, soft_wrap=True)


def say(message: str) -> None:
    """A command's result line on stdout (what it made and where), one line like `log`'s.
    Data (generate's answers) is printed as it is."""
    print(one_line(message))


def is_interactive() -> bool:
    return console.is_terminal and os.environ.get("SHARDTUNE_PLAIN_LOGS", "") == ""


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


class Meter:
    """Progress of one stage: a position out of `total` (bytes, examples, steps)
    and named counters whose rates are shown (lines/s, tokens/s, ...).

    `update(position, **counters)` takes absolute values, so callers never have
    to remember what they already reported.
    """

    def __init__(self, label: str, total: float | None, unit: str, rates: tuple[str, ...],
                 log_every_s: float = 10.0) -> None:
        self.label, self.total, self.unit, self.rates = label, total, unit, rates
        self.log_every_s = log_every_s
        self.start = time.perf_counter()
        self.position = 0.0
        self.counters: dict[str, float] = {name: 0 for name in rates}
        self.extra = ""
        self._last_log = self.start
        self._progress: Progress | None = None
        self._task = None

    # -- formatting -------------------------------------------------------------
    def _rate_text(self) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        parts = []
        for name in self.rates:
            value = self.counters[name]
            parts.append(f"{value / elapsed:,.0f} {name}/s")
        if self.unit == "bytes":
            parts.append(f"{self.position / elapsed / 1e6:,.1f} MB/s")
        if self.extra:
            parts.append(self.extra)
        return "  ".join(parts)

    def _position_text(self) -> str:
        if self.unit == "bytes":
            done = human_bytes(self.position)
            return done if not self.total else f"{done} / {human_bytes(self.total)}"
        done = f"{self.position:,.0f}"
        return done if not self.total else f"{done} / {self.total:,.0f} {self.unit}"

    # -- updates ----------------------------------------------------------------
    def update(self, position: float | None = None, extra: str | None = None, **counters: float) -> None:
        if position is not None:
            self.position = position
        self.counters.update(counters)
        if extra is not None:
            self.extra = extra
        if self._progress is not None:
            self._progress.update(self._task, completed=self.position, rates=self._rate_text())
            return
        now = time.perf_counter()
        if now - self._last_log >= self.log_every_s:
            self._last_log = now
            log(f"{self.label}: {self._position_text()}  {self._rate_text()}")

    def summary(self) -> str:
        elapsed = time.perf_counter() - self.start
        return f"{self._position_text()} in {elapsed:,.1f} s  {self._rate_text()}"


@contextmanager
def meter(label: str, total: float | None, unit: str, rates: tuple[str, ...] = ()) -> Iterator[Meter]:
    """A progress display for a long loop: a rich bar on a terminal, log lines elsewhere."""
    m = Meter(label, total, unit, rates)
    if not is_interactive():
        yield m
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TextColumn("{task.fields[rates]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        m._progress = progress
        m._task = progress.add_task(label, total=total or None, rates="")
        yield m
        progress.update(m._task, completed=m.position, rates=m._rate_text())
