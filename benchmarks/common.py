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


SCRATCH_MARK = ".shardtune-bench"


def scratch_dir(workdir: str) -> Path:
    """A benchmark's --workdir: new, empty, or an earlier benchmark's (it holds SCRATCH_MARK). Any other
    folder is refused: the benchmark writes and replaces runs there (a stage's output would be spoilt)."""
    from shardtune.errors import UserError
    from shardtune.lock import LOCK

    folder = Path(workdir)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--workdir {folder} is a file; give a folder for the benchmark's scratch files")
    entries = sorted((p.name for p in folder.iterdir() if p.name != LOCK), key=lambda n: (n.startswith("."), n)) \
        if folder.exists() else []
    if entries and SCRATCH_MARK not in entries:
        raise UserError(f"--workdir {folder} holds {entries[0]} but no {SCRATCH_MARK} mark of a benchmark's scratch "
                        "folder; give a new or empty folder (a benchmark writes and replaces runs there), or delete "
                        "this one if it is an old benchmark's scratch")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SCRATCH_MARK).write_text("Scratch of `shardtune bench`; safe to delete.\n")
    except NotADirectoryError:
        raise  # a file on the path: the CLI says so for every command alike
    except OSError as e:
        raise UserError(f"cannot write to --workdir {folder}: {e.strerror or e}") from None
    return folder


def synth_input(workdir: Path, lines: int, malformed_rate: float, profile: str = "light") -> Path:
    """Generated benchmark input; deterministic by seed, so an earlier file is reused."""
    from shardtune.console import log
    from shardtune.data.synth import write_synth

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"synth-{lines}-{malformed_rate}{'' if profile == 'light' else '-' + profile}.json"
    if not path.exists():
        log(f"bench: generating {lines:,} lines ({profile}) -> {path}")
        write_synth(path, lines, seed=0, malformed_rate=malformed_rate, profile=profile)
    return path


@dataclass
class Measured:
    seconds: float
    peak_rss_mb: float  # the largest single process's peak (wait4)
    output: str
    peak_total_mb: float = 0.0  # the process and its workers together (RSS summed, sampled every 50 ms)


def _tree_memory_mb(pid: int) -> float:
    """Resident memory of a process and its children, summed (pages they share counted in each:
    an upper bound on what they need together)."""
    import psutil

    total = 0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
                pass
    except psutil.NoSuchProcess:
        pass
    return total / 2**20


def run_measured(args: list[str], env: dict | None = None) -> Measured:
    """Run `python ARGS...` (with `env` added to the environment); its output goes to a temporary
    file so that we can reap the child ourselves with wait4, which reports its own peak RSS; a
    thread samples the memory of the child and its worker processes together meanwhile."""
    import threading

    env = dict(os.environ, SHARDTUNE_PLAIN_LOGS="1", PYTHONUNBUFFERED="1", **(env or {}))
    peak_total = [0.0]
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=env)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                try:
                    peak_total[0] = max(peak_total[0], _tree_memory_mb(proc.pid))
                except ImportError:  # no psutil (a lent GPU machine): the single-process figure only
                    return
                except Exception:  # a process ended while it was read: the next sample counts
                    continue

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        out = log.read()
    if proc.returncode:
        # one line: the step's own error (its last line), the command to rerun for the whole story
        last = next((line for line in reversed(out.splitlines()) if line.strip()), "no output")
        raise UserError(f"benchmark step failed ({last.strip()[:500]}); rerun it alone to see all: {' '.join(args)}")
    return Measured(seconds, usage.ru_maxrss / 1024, out, peak_total[0])


def print_table(title: str, columns: list[str], rows: list[list[str]], note: str = "") -> None:
    """A rich table on stdout (progress and logs go to stderr); the first column left-aligned."""
    from rich.table import Table

    from shardtune.console import TableConsole

    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    out = TableConsole(width=140)
    out.print(table)
    if note:
        out.print(note)


def markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a markdown table, as RESULTS.md holds them."""
    return ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)] + \
        ["| " + " | ".join(row) + " |" for row in rows]


def write_report(path: Path, lines: list[str], what: str) -> None:
    """A benchmark's markdown report, written under a temporary name and renamed."""
    from shardtune.console import log
    from shardtune.files import atomic_open

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    log(f"{what}: table written to {path}")
