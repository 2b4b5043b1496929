"""What every benchmark shares: the machine's description, generated input, running a
side in its own process with its peak memory, and printing a table.

Each side of a benchmark runs in a fresh process so that one side's imports, caches
and allocator state never count against the other's memory.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from shardtune.errors import UserError


def machine() -> str:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else 0
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {ram:.0f} GiB RAM, Python {platform.python_version()}"


def device_name() -> str:
    """The GPU (with its emulated memory cap), or the CPU machine."""
    import torch

    if torch.cuda.is_available():
        cap = os.environ.get("SHARDTUNE_GPU_MEMORY_GB")
        return torch.cuda.get_device_name(0) + (f", capped at {cap} GB" if cap else "")
    return "CPU: " + machine()


def sync_device() -> None:
    """Wait for the GPU, so that a timer read next covers the work queued before it."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def synth_input(workdir: Path, lines: int, malformed_rate: float) -> Path:
    """Generated benchmark input; deterministic by seed, so an earlier file is reused."""
    from shardtune.console import log
    from shardtune.data.synth import write_synth

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"synth-{lines}-{malformed_rate}.json"
    if not path.exists():
        log(f"bench: generating {lines:,} lines -> {path}")
        write_synth(path, lines, seed=0, malformed_rate=malformed_rate)
    return path


@dataclass
class Measured:
    seconds: float
    peak_rss_mb: float
    output: str


def run_measured(args: list[str], env: dict | None = None) -> Measured:
    """Run `python ARGS...` (with `env` added to the environment); its output goes to a temporary
    file so that we can reap the child ourselves with wait4, which reports its own peak RSS."""
    env = dict(os.environ, SHARDTUNE_PLAIN_LOGS="1", PYTHONUNBUFFERED="1", **(env or {}))
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        out = log.read()
    if proc.returncode:
        raise UserError(f"benchmark step failed: {' '.join(args)}\n{out[-2000:]}")
    return Measured(seconds, usage.ru_maxrss / 1024, out)


def print_table(title: str, columns: list[str], rows: list[list[str]], note: str = "") -> None:
    """A rich table on stdout (progress and logs go to stderr); the first column left-aligned."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    out = Console(width=140)
    out.print(table)
    if note:
        out.print(note)
