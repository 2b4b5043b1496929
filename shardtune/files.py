"""Crash-safe file writing: everything goes to a temporary name, then is renamed.

A rename within one folder is atomic on POSIX and Windows, so a reader (or the
next run) sees either the old complete file or the new complete file, never half.
Beside the writing: reads that stop at a bound (a manifest symlinked to /dev/zero is an
error, not an exhausted memory), checksums, and the checks on input and output paths.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError
from .lock import LOCK

TMP_SUFFIX = ".tmp"


def tmp_path(path: Path) -> Path:
    return path.with_name(path.name + TMP_SUFFIX)


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows cannot open folders
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, final: Path) -> None:
    """Rename a finished temporary file onto its final name, durably."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


def commit_folder(tmp: Path, final: Path) -> None:
    """Put a finished temporary folder in the place of `final` (the old one removed), durably. A
    kill between the two steps leaves the new folder whole under its temporary name."""
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    fsync_dir(final.parent)


def is_stream(path: Path) -> bool:
    """Whether writing `path` means writing a stream in place: a device, a pipe or a socket, or an
    open file of a process (`/dev/stdout` is a link to /proc/self/fd/1, which is a link to whatever
    the shell redirected it to: a file there is still the shell's stream, not ours to replace),
    itself or at any link on the way. (A file in /dev/shm is a file.)"""
    seen = 0
    while True:
        if str(path).startswith(("/proc/", "/dev/fd/")) or str(path) in ("/dev/stdout", "/dev/stderr"):
            return True
        if not path.is_symlink() or seen == 40:
            break
        target = Path(os.readlink(path))
        path, seen = (target if target.is_absolute() else path.parent / target), seen + 1
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


@contextmanager
def atomic_open(path: Path, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """open() that writes `path.tmp` and renames it onto `path` only on success. A device or a
    pipe (`--output /dev/stdout`) is a stream with nothing to replace: it is written in place.
    A link to a file has its target replaced (the link stays), and the temporary name is never
    followed: a link planted there would have us write into another file."""
    if is_stream(path):
        with open(path, mode, **kwargs) as f:
            yield f
        return
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    tmp = tmp_path(path)
    if tmp.is_symlink():
        tmp.unlink()
    try:
        with open(tmp, mode, opener=lambda name, flags: os.open(name, flags | getattr(os, "O_NOFOLLOW", 0), 0o666),
                  **kwargs) as f:
            yield f
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    commit(tmp, path)


def file_crc32(path: Path) -> int:
    """A cheap checksum of a whole file (zlib's CRC-32, about 1 GB/s), to catch a replaced or damaged shard."""
    import zlib

    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def inside(folder: Path, name: str, what: str) -> Path:
    """`folder / name` for a name read from a manifest, refused if it escapes the folder (../, absolute)."""
    path = (folder / name).resolve()
    if Path(name).is_absolute() or not path.is_relative_to(folder.resolve()):
        raise UserError(f"{what} names {name!r}, outside {folder}; the manifest was edited: re-run the stage")
    return path


def verify_files(folder: Path, entries: list, what: str, command: str) -> None:
    """Every file of a manifest's entries (`file`, `bytes`, `crc32`) is there once, whole and unchanged."""
    manifest = "the ETL manifest" if command == "etl" else "the token manifest"
    paths = [inside(folder, e.file, manifest) for e in entries]
    if len(set(paths)) != len(paths):  # one shard listed twice would be read twice
        twice = next(p for p in paths if paths.count(p) > 1)
        raise UserError(f"{folder}'s manifest lists {what} {twice.name} more than once (it was edited); "
                        f"re-run `shardtune {command}`")
    for path, entry in zip(paths, entries):
        verify_file(path, entry.bytes, entry.crc32, what, command)


def verify_file(path: Path, size: int, crc: int | None, what: str, command: str) -> None:
    """The file a manifest describes is there, whole and unchanged, or a one-line error naming it."""
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{what} {path} is missing; re-run `shardtune {command}`") from None
    if crc is None:  # every manifest since 2026-11 has one: without it a replaced file of the same size would pass
        raise UserError(f"{what} {path} has no checksum in its manifest (it was edited, or is older than "
                        f"checksums); re-run `shardtune {command}`")
    if actual != size or file_crc32(path) != crc:
        raise UserError(f"{what} {path} is not the file its manifest describes ({actual:,} bytes, expected "
                        f"{size:,}{' and its checksum' if actual == size else ''}); it was truncated or replaced: "
                        f"re-run `shardtune {command}`")


def write_json(path: Path, data: Any) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def read_small_file(path: Path, what: str, limit: int = 1 << 20) -> bytes:
    """The bytes of a file that should be small (a config, a template): one over `limit` is refused
    before it is held, so /dev/zero or a mistaken path cannot fill memory."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UserError(f"{what} {path} is larger than {limit >> 20} MB; give a small text file")
    return data


JSON_LIMIT = 64 << 20  # far above any manifest or state file shardtune writes (a 2M-line run's: kilobytes)


def read_json(path: Path, what: str) -> Any:
    """A JSON file shardtune wrote; read within JSON_LIMIT, so a replaced one cannot fill memory."""
    try:
        with open(path, "rb") as f:
            data = f.read(JSON_LIMIT + 1)
        if len(data) > JSON_LIMIT:
            raise UserError(f"{what} {path} is larger than {JSON_LIMIT >> 20} MB, so not one shardtune wrote; "
                            "re-run the stage that makes it")
        return json.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {what} {path}: {e}") from None
    except RecursionError:  # nested deeper than the decoder's stack: no manifest of ours
        raise UserError(f"cannot read {what} {path}: nested too deep to be one") from None


def check_not_device(path: Path, what: str) -> None:
    """Refuse a device or a terminal as a data input: /dev/zero or /dev/urandom would be read
    without end and a terminal would wait for typing, with nothing said. A file, a pipe or
    process substitution is read as usual; "-" means standard input."""
    if str(path) == "-":
        if sys.stdin is None:  # started with `<&-`
            raise UserError(f"{what} - is standard input, which is closed; pipe the data in (`... - < FILE`) "
                            "or name the file")
        if sys.stdin.isatty():
            raise UserError(f"{what} - is standard input, a terminal here; pipe the data in "
                            "(`... - < FILE`) or name the file")
        return
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing or unreadable: the caller's open says which, in its own words
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise UserError(f"{what} {path} is a device, not a file; give a file or a pipe")


def check_outside(out: Path, source: Path, what: str) -> None:
    """Refuse an --out that is the folder being read or inside it: the next run of the stage that
    wrote `source` would find a folder it did not write there (or, the other way, delete its input)."""
    src, dst = source.resolve(), out.resolve()
    if dst == src or src in dst.parents:
        raise UserError(f"--out {out} is {'' if dst == src else 'inside '}{what} {source} being read; "
                        "write to a folder of its own")


def check_output_dir(out: Path, owned: tuple[str, ...], manifest_name: str = "manifest.json",
                     subfolders: dict[str, str] | None = None) -> list[Path]:
    """The files of ours in `out` (a missing folder has none), or a one-line error if it is a file or
    holds anything else: we never delete what we did not write. Changes nothing."""
    subfolders = subfolders or {}
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} is a file; give a folder with --out")
    if not out.exists():
        return []

    def foreign(entry: Path) -> UserError:
        return UserError(f"output folder {out} holds {entry.relative_to(out)}, which is not this command's output; "
                         "choose an empty or new folder with --out")

    ours: list[Path] = []
    for entry in out.iterdir():
        if entry.name == LOCK:  # held by this run
            continue
        if entry.is_dir() and entry.name in subfolders:
            for inner in entry.iterdir():
                if not (inner.is_file() and inner.match(subfolders[entry.name] + "*")):
                    raise foreign(inner)
                ours.append(inner)
        elif entry.is_file() and any(Path(entry.name.removesuffix(TMP_SUFFIX)).match(p) for p in owned):
            ours.append(entry)
        else:
            raise foreign(entry)
    ours.sort(key=lambda p: p.name != manifest_name)  # manifest goes first
    return ours


def prepare_output_dir(out: Path, owned: tuple[str, ...], manifest_name: str = "manifest.json",
                       subfolders: dict[str, str] | None = None) -> None:
    """Make `out` ready for a fresh run of a stage.

    `owned` are glob patterns of the files this stage writes, `subfolders` maps
    each folder it writes to the pattern of its files. A folder holding anything
    else is refused (we never delete what we did not write). Our own leftovers,
    complete or from a killed run, are removed, the manifest first, so an
    interrupted re-run can never pass for a complete output.
    """
    ours = check_output_dir(out, owned, manifest_name, subfolders)
    out.mkdir(parents=True, exist_ok=True)
    for entry in ours:
        entry.unlink()
    if ours:
        fsync_dir(out)


def wide_encoding(head: bytes) -> str | None:
    """UTF-32 or UTF-16 (for iconv's -f), from the first four bytes; None for anything else.
    With a byte-order mark that is the mark. Without one, JSON text starts with two ASCII
    characters (`{"`, `[{`, whitespace), so the zero bytes around them give the width and
    the order, as RFC 4627 section 3 detects it. UTF-8 text never holds a zero byte there."""
    if head in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"):
        return "UTF-32"
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "UTF-16"
    if len(head) < 4 or b"\x00" not in head:
        return None
    zeros = tuple(b == 0 for b in head)
    return {(True, True, True, False): "UTF-32BE", (False, True, True, True): "UTF-32LE",
            (True, False, True, False): "UTF-16BE", (False, True, False, True): "UTF-16LE"}.get(zeros)
