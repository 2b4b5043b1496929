"""Rolling shard writers: what the ETL's Parquet writer and the tokenizer's Arrow writer
share (a shard is written under its temporary name and renamed when full), and a thread
that drives one in the background.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .files import commit, tmp_path


class RollingShardWriter:
    """What every shard writer shares: the open shard is written under its temporary
    name and renamed when full (or at close()), so a folder never holds a partial shard
    under a final name; abort() deletes the open one. A subclass opens and closes its
    format's writer and describes each finished shard for the manifest."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.shards: list = []  # one manifest entry per finished shard
        self._writer: Any = None

    def _path(self) -> Path:
        raise NotImplementedError

    def _open_writer(self, tmp: Path) -> Any:
        raise NotImplementedError

    def _close_writer(self) -> None:
        raise NotImplementedError

    def _describe(self, path: Path) -> Any:
        raise NotImplementedError

    def _ensure_open(self) -> None:
        if self._writer is None:
            self._writer = self._open_writer(tmp_path(self._path()))

    def _finish_shard(self) -> None:
        self._close_writer()
        self._writer = None
        path = self._path()
        commit(tmp_path(path), path)
        self.shards.append(self._describe(path))

    def close(self) -> list:
        if self._writer is not None:
            self._finish_shard()
        return self.shards

    def abort(self) -> None:
        if self._writer is not None:
            self._close_writer()
            self._writer = None
            tmp_path(self._path()).unlink(missing_ok=True)


class InBackground:
    """A shard writer driven from a thread: `write(item)` queues the item and returns, and the
    thread writes the items in order (Parquet's compression runs in C without the GIL, beside
    the Python that prepares the next batch). At most `depth` items wait; an error in the
    thread is raised by the next write or by close()."""

    _STOP = object()

    def __init__(self, target: RollingShardWriter, depth: int = 2) -> None:
        import queue
        import threading

        self.target, self.error = target, None
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="shardtune-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not self._STOP:
            if self.error is None:
                try:
                    self.target.write(item)
                except BaseException as e:  # raised in the caller's thread
                    self.error = e

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def write(self, item: Any) -> None:
        self._raise()
        self._queue.put(item)

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(self._STOP)
            self._thread.join()

    def close(self) -> list:
        self._stop()
        self._raise()
        return self.target.close()

    def abort(self) -> None:
        self._stop()
        self.target.abort()
