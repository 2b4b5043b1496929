"""Streaming readers for the catalogue: NDJSON, gzip-compressed NDJSON, or one JSON array.

Polars, pandas and ijson all abort a whole file at its first bad line. Here each
line is decoded on its own (msgspec, against the record schema), so a bad line
costs only itself: it comes back as a `Malformed` with its line number and raw
bytes, and reading goes on. Memory is bounded by the batch, the read chunk and
`max_line_bytes`: a longer line is skipped while streaming, never held whole.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import ijson
import msgspec

from shardtune.errors import UserError

REJECT_BYTES = 1024  # raw text kept per malformed line
CHUNK_BYTES = 4 << 20  # bytes read at a time


class Record(msgspec.Struct, gc=False):  # gc=False: millions of them, no cycles possible
    """The fields shardtune uses; label arrays and other keys are skipped unparsed."""

    uid: str
    title: str
    content: str


class _TooLong(bytes):
    """The head of a line longer than max_line_bytes; the rest was skipped unread into memory."""


class _Broken(bytes):
    """Marks where a compressed stream broke off (its text is the reason)."""


@dataclass
class Malformed:
    line: int
    kind: str  # counted in the manifest: invalid_json, invalid_utf8, wrong_type, ...
    detail: str  # the decoder's own words, kept in rejects.jsonl
    raw: bytes


@dataclass
class Batch:
    records: list[Record] = field(default_factory=list)
    malformed: list[Malformed] = field(default_factory=list)
    lines: int = 0  # input lines (or array elements) this batch covers
    position: int = 0  # bytes of the (compressed) input file consumed so far

    def columns(self) -> dict[str, list[str]]:
        recs = self.records
        return {"uid": [r.uid for r in recs], "title": [r.title for r in recs], "content": [r.content for r in recs]}


def _classify(err: Exception, line: bytes = b"x") -> tuple[str, str]:
    """(kind, detail) of a decoding error."""
    detail = str(err).split("\n")[0] or type(err).__name__
    if not line.strip():
        return "blank_line", "blank line"
    if isinstance(err, UnicodeDecodeError):
        return "invalid_utf8", detail
    if isinstance(err, msgspec.ValidationError):
        return ("missing_field" if "missing required field" in detail else "wrong_type"), detail
    return "invalid_json", detail


PEEK_BYTES = 65536  # how far the format check looks


class InputReader:
    """Reads one input file in batches of at most `batch_lines` lines."""

    def __init__(self, path: Path, batch_lines: int, max_line_bytes: int) -> None:
        self.path = path
        self.batch_lines = batch_lines
        self.max_line_bytes = max_line_bytes
        try:
            if path.is_dir():
                raise UserError(f"input {path} is a folder; give the JSON file(s) inside it")
            self.raw: BinaryIO = open(path, "rb")
        except FileNotFoundError:
            raise UserError(f"input file not found: {path}") from None
        except PermissionError:
            raise UserError(f"cannot read input file {path}: permission denied") from None
        except OSError as e:
            raise UserError(f"cannot read input file {path}: {e.strerror or e}") from None
        self.size = path.stat().st_size  # 0 for a pipe: its progress shows no total
        magic = self.raw.peek(2)[:2]  # peek, not read + seek: a pipe cannot seek
        # GzipFile buffers by itself and hands over every line decoded before a
        # truncated end; a larger buffer on top would lose the lines around the break.
        self.stream: BinaryIO = gzip.GzipFile(fileobj=self.raw, mode="rb") if magic == b"\x1f\x8b" else self.raw

    def close(self) -> None:
        self.stream.close()
        self.raw.close()

    def _consumed(self) -> int:
        """Bytes of the (compressed) input read so far; 0 where a pipe cannot tell."""
        try:
            return self.raw.tell()
        except OSError:
            return 0

    def _is_array(self) -> bool:
        """A file starting with `[` is one JSON array, unless its first line is a whole JSON
        value with more data after it: then it is NDJSON whose first record is a bare array."""
        head = self.stream.peek(PEEK_BYTES)[:PEEK_BYTES].lstrip(b"\xef\xbb\xbf \t\r\n")
        if head[:1] != b"[":
            return False
        first, newline, rest = head.partition(b"\n")
        if not newline or not rest.strip():
            return True
        try:
            msgspec.json.decode(first)
        except msgspec.DecodeError:
            return True  # "[" then the first element: a (pretty-printed) array
        return False

    def batches(self) -> Iterator[Batch]:
        try:
            array = self._is_array()
        except (OSError, EOFError, zlib.error) as e:
            batch = Batch(lines=1, position=self.size)
            batch.malformed.append(Malformed(1, "broken_stream", f"unreadable compressed stream: {e}", b""))
            yield batch
            return
        yield from (self._array_batches() if array else self._line_batches())

    def _line_lists(self) -> Iterator[list[bytes]]:
        """Raw lines, one list per read chunk (splitting in C keeps the per-line cost low).

        A line over max_line_bytes comes as a _TooLong holding its head (the rest is
        skipped without being held), and a corrupt compressed stream ends with a _Broken.
        """
        limit, tail, first = self.max_line_bytes, b"", True
        too_long: _TooLong | None = None
        while True:
            try:
                # read1: one underlying read, so a corrupt gzip loses no line decoded before it
                chunk = self.stream.read1(CHUNK_BYTES)
            except (OSError, EOFError, zlib.error) as e:  # truncated or corrupt gzip
                yield [_Broken(f"compressed stream broken off: {e}".encode())]
                return
            if not chunk:
                break
            if first and chunk.startswith(b"\xef\xbb\xbf"):
                chunk = chunk[3:]  # a UTF-8 byte-order mark is not part of the first record
            first = False
            lines: list[bytes] = []
            if too_long is not None:
                end = chunk.find(b"\n")
                if end < 0:
                    continue
                lines.append(too_long)
                too_long, chunk = None, chunk[end + 1:]
            parts = (tail + chunk).split(b"\n") if tail else chunk.split(b"\n")
            tail = parts.pop()
            if len(tail) > limit:
                too_long, tail = _TooLong(tail[:REJECT_BYTES]), b""
            yield lines + parts if lines else parts
        if too_long is not None:
            yield [too_long]
        elif tail:  # a last line without a newline
            yield [tail]

    def _line_batches(self) -> Iterator[Batch]:
        decode = msgspec.json.Decoder(Record).decode
        limit = self.max_line_bytes
        batch, lineno = Batch(), 0
        for lines in self._line_lists():
            keep = batch.records.append
            for line in lines:
                lineno += 1
                batch.lines += 1
                if type(line) is bytes and len(line) <= limit:
                    try:
                        keep(decode(line))
                    except (msgspec.DecodeError, UnicodeDecodeError) as e:
                        kind, detail = _classify(e, line)
                        batch.malformed.append(Malformed(lineno, kind, detail, line[:REJECT_BYTES].rstrip(b"\r")))
                elif type(line) is _Broken:
                    batch.malformed.append(Malformed(lineno, "broken_stream", line.decode(), b""))
                else:
                    batch.malformed.append(Malformed(lineno, "line_too_long", f"line longer than {limit} bytes",
                                                     line[:REJECT_BYTES]))
                if batch.lines >= self.batch_lines:
                    batch.position = self._consumed()
                    yield batch
                    batch = Batch()
                    keep = batch.records.append
        batch.position = self.size
        yield batch

    def _array_batches(self) -> Iterator[Batch]:
        batch, index = Batch(), 0
        items = ijson.items(self.stream, "item", use_float=True)
        while True:
            try:
                obj = next(items)
            except StopIteration:
                break
            except (ijson.JSONError, UnicodeDecodeError, OSError, EOFError, zlib.error) as e:
                # A broken array cannot be re-synchronised: the rest of the file is one reject.
                index += 1
                batch.lines += 1
                batch.malformed.append(Malformed(index, "broken_stream", f"JSON array broken off: {_classify(e)[1]}", b""))
                break
            index += 1
            batch.lines += 1
            try:
                batch.records.append(msgspec.convert(obj, Record))
            except msgspec.ValidationError as e:
                raw = msgspec.json.encode(obj)[:REJECT_BYTES] if _encodable(obj) else repr(obj).encode()[:REJECT_BYTES]
                batch.malformed.append(Malformed(index, *_classify(e), raw))
            if batch.lines >= self.batch_lines:
                batch.position = self._consumed()
                yield batch
                batch = Batch()
        batch.position = self.size
        yield batch


def _encodable(obj: object) -> bool:
    try:
        msgspec.json.encode(obj)
        return True
    except (TypeError, msgspec.EncodeError):
        return False
