"""The output folder's lock: one command writes a folder at a time.

`FOLDER/.shardtune.lock` holds the operating system's lock (flock on POSIX, msvcrt's byte
lock on Windows) while a command writes FOLDER, and one line naming who holds it. The lock
goes with the process however it ends (kill -9 included), so a stale file locks nothing.
"""

from __future__ import annotations

import contextlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UserError

LOCK = ".shardtune.lock"


@contextmanager
def locked(folder: Path, command: str) -> Iterator[None]:
    """Hold an exclusive lock on an output folder while a command writes it, so that two runs can
    never write one folder at once. The lock is the operating system's (flock): it goes with the
    process, however it ends (flock on POSIX, msvcrt's byte lock on Windows). The file names who holds it."""
    import datetime
    import socket

    if folder.exists() and not folder.is_dir():
        raise UserError(f"output path {folder} is a file; give a folder")
    created = False
    for _ in range(3):
        created = created or not folder.exists()
        handle = _open_lock(folder)
        try:
            _lock(handle)
        except (BlockingIOError, PermissionError):  # held: BlockingIOError on POSIX, PermissionError from msvcrt
            holder = _holder(handle)
            handle.close()
            raise UserError(f"{folder} is in use by {holder}; wait for it to finish or choose another folder") from None
        if _same_file(handle, folder / LOCK):
            break
        # A run that was ending removed the lock file (and its empty folder) between our open and our
        # lock: we hold a lock on a file nobody else can see. Start again on the file that is there now.
        _lock(handle, unlock=True)
        handle.close()
    else:
        raise UserError(f"cannot lock {folder}: its lock file keeps disappearing; is something deleting it?")
    handle.seek(0)
    handle.truncate()
    handle.write(f"shardtune {command} (pid {os.getpid()} on {socket.gethostname()}, since "
                 f"{datetime.datetime.now().isoformat(timespec='seconds')})\n")
    handle.flush()
    try:
        yield
    finally:
        handle.truncate(0)  # no holder any more
        with contextlib.suppress(OSError):  # the folder may have been removed under us
            if created and [p.name for p in folder.iterdir()] == [LOCK]:  # a refused command leaves no folder
                # Still locked, so no other run writes here; one that opened the file meanwhile sees it
                # gone once it gets the lock, and starts again.
                (folder / LOCK).unlink()
                folder.rmdir()
        _lock(handle, unlock=True)
        handle.close()


def _holder(handle) -> str:
    """Who holds a lock: the lock file's first line, bounded, if it is ours ("shardtune etl (pid ...)");
    a lock file of junk says nothing."""
    handle.seek(0)
    holder = (handle.read(4096).splitlines() or [""])[0].strip()[:200]
    return holder if holder.startswith("shardtune ") and holder.isprintable() else "another process"


def _open_lock(folder: Path):
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return open(folder / LOCK, "a+", encoding="utf-8", errors="replace")  # its holder line is read back
    except OSError as e:
        raise UserError(f"cannot write to {folder}: {e.strerror or e}") from None


def _same_file(handle, path: Path) -> bool:
    """Is the open, locked file still the one at `path`? (Not if it was unlinked after we opened it.)"""
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except OSError:
        return False


def _lock(handle, unlock: bool = False) -> None:
    """Take (without waiting) or give back the operating system's lock on an open file."""
    try:
        import fcntl
    except ImportError:  # Windows: lock the first byte
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK if unlock else msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(handle, fcntl.LOCK_UN if unlock else fcntl.LOCK_EX | fcntl.LOCK_NB)


@contextmanager
def reading(folder: Path, command: str) -> Iterator[None]:
    """Hold a shared lock on a folder another stage wrote while reading it: that stage's re-run
    (which takes the exclusive lock) is refused meanwhile, instead of swapping shards under the
    reader, and a reader is refused while it writes. Readers do not stop one another. A folder
    where no lock file can be made (read-only) is read unlocked: nothing can rewrite it either, and
    none is made in a folder that is not a stage's output (the reader then says what it is)."""
    try:
        if not (folder / LOCK).is_file() and not (folder / "manifest.json").is_file():
            raise FileNotFoundError
        handle = open(folder / LOCK, "a+", encoding="utf-8", errors="replace")
    except OSError:
        yield
        return
    try:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - Windows: msvcrt has no shared lock; read unlocked
            pass
        except BlockingIOError:
            holder = _holder(handle)
            raise UserError(f"{folder} is being written by {holder}; wait for it to finish, then run "
                            f"shardtune {command} again") from None
        if handle.tell() == 0:  # named for a writer refused meanwhile (readers share one line)
            handle.write(f"shardtune {command} (reading it, pid {os.getpid()})\n")
            handle.flush()
        yield
    finally:
        handle.close()  # closing gives the lock back
