"""Run a command in its own process and measure wall time and peak RSS.

Each side of a benchmark runs in a fresh process so that one side's imports,
caches and allocator state never count against the other's memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from shardtune.errors import UserError


@dataclass
class Measured:
    seconds: float
    peak_rss_mb: float
    output: str


def run_measured(args: list[str]) -> Measured:
    """Run `python ARGS...`; its output goes to a temporary file so that we can
    reap the child ourselves with wait4, which reports that child's own peak RSS."""
    env = dict(os.environ, SHARDTUNE_PLAIN_LOGS="1", PYTHONUNBUFFERED="1")
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
