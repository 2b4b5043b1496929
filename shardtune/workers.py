"""What every worker process shardtune starts does first (the ETL's and tokenize's pools)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from contextlib import contextmanager
from typing import Iterator

PR_SET_PDEATHSIG = 1  # linux/prctl.h
HELD = {signal.SIGINT, signal.SIGTERM}


def start_worker(parent: int) -> None:
    """What a pool's worker does first: leave Ctrl-C and SIGTERM to the main process, and end with it.

    A terminal's Ctrl-C (and `timeout`'s SIGTERM) reaches every process of the group. The main
    process stops the pool and cleans up; a worker interrupted too would print its own traceback,
    and one interrupted inside the pool's queue can hold its lock for ever, so that the main
    process's shutdown hangs."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # held since the worker started (see signals_held): now dropped
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)
    die_with_parent(parent)


@contextmanager
def signals_held() -> Iterator[None]:
    """Around a pool's submit(), which may start a worker process. A worker unpickles its
    initializer's arguments before start_worker() runs (tokenize's hold a tokenizer, whose
    transformers import takes seconds), and a Ctrl-C then printed a KeyboardInterrupt traceback
    from it. A thread's signal mask survives fork and exec, so SIGINT and SIGTERM blocked here
    arrive blocked in the worker, which drops them in start_worker(). Here they are only
    delayed: one that comes meanwhile is delivered when the call returns, or to another thread."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks, nor this problem's cause
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def die_with_parent(parent: int) -> None:
    """End this worker when the process that started it (`parent`) ends, however it ends: after a
    kill -9 of the command, a worker would otherwise block for ever sending a result that no one
    reads. Linux only (prctl); elsewhere the pool's own checks are all there is."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not glibc or musl: no prctl to call
        return
    if os.getppid() != parent:  # the parent was gone before the request took effect
        os._exit(1)
