"""Raw NDJSON lines: a stream or a span of a plain file split into lines, in bounded memory.

The layer under `read`: nothing here decodes JSON. A line over the limit comes as a
_TooLong holding its head, a compressed stream that breaks off ends with a BrokenStream;
`read.decode_lines` quarantines both. Spans and Blocks are what the main process hands to
the workers (see `read.InputReader.batches`).
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

REJECT_BYTES = 1024  # raw text kept per malformed line
CHUNK_BYTES = 4 << 20  # bytes read at a time


class _TooLong(bytes):
    """The head of a line longer than max_line_bytes; the rest was skipped unread into memory."""


class BrokenStream(bytes):
    """Marks where a stream broke off, a compressed one or a JSON array's frame (its text is the reason)."""


@dataclass
class Span:
    """Lines [start, end) of a plain NDJSON file, by byte offsets: a worker reads them itself.
    Its lines are numbered from 1; the main process adds the lines before it."""

    path: str
    start: int
    end: int
    position: int


@dataclass
class Block:
    """Raw NDJSON lines, the number of the first, and the input bytes read after them. The lines
    travel to a worker joined by newlines (one bytes object pickles as one copy, thousands of
    small ones do not); a line judged while streaming (too long, a broken stream) travels as
    an empty line plus its marker in `marked`."""

    data: bytes
    first_line: int
    position: int
    marked: dict[int, bytes] = field(default_factory=dict)

    @classmethod
    def of(cls, lines: list[bytes], first_line: int, position: int) -> "Block":
        marked = {i: line for i, line in enumerate(lines) if type(line) is not bytes}
        if marked:
            lines = [b"" if i in marked else line for i, line in enumerate(lines)]
        return cls(b"\n".join(lines), first_line, position, marked)

    @classmethod
    def of_elements(cls, elements: list[bytes], first: int, position: int) -> "Block":
        """A JSON array's raw elements as a Block: one that spans lines (a pretty-printed array)
        travels whole in `marked`, as a too-long line's head does."""
        spanning = {i: e for i, e in enumerate(elements) if type(e) is bytes and b"\n" in e}
        block = cls.of([b"" if i in spanning else e for i, e in enumerate(elements)] if spanning else elements,
                       first, position)
        block.marked.update(spanning)
        return block

    def lines(self) -> list[bytes]:
        lines = self.data.split(b"\n")
        for i, marker in self.marked.items():
            lines[i] = marker
        return lines


HEAD_LINES = 3  # non-blank lines the format check wants whole: the first and the two after it


def read_ahead(stream: BinaryIO, max_line_bytes: int) -> tuple[bytes, Exception | None]:
    """The input's first bytes, enough to judge its format: its first HEAD_LINES non-blank lines
    whole, or up to HEAD_LINES lines' worth of max_line_bytes, or all of it. (peek() returns only
    what a buffer happens to hold: 4 KB of a file, 8 KB of gzip, whatever has come down a pipe.)
    A compressed stream that breaks meanwhile gives what came before, and the error."""
    parts: list[bytes] = []
    size, lines, limit = 0, 0, HEAD_LINES * (max_line_bytes + 1) + (64 << 10)
    while size < limit and lines < HEAD_LINES:
        try:
            chunk = stream.read1(64 << 10)
        except (OSError, EOFError, zlib.error) as e:
            return b"".join(parts), e
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
        if b"\n" in chunk:  # count the complete non-blank lines so far (a few splits of a bounded head)
            lines = sum(1 for line in b"".join(parts).split(b"\n")[:-1] if line.strip(b" \t\r\xef\xbb\xbf"))
    return b"".join(parts), None


class Replayed:
    """A stream whose first bytes, read ahead to judge the format, are handed out again first;
    an error met while reading ahead is raised once they are (where the stream broke)."""

    def __init__(self, stream: BinaryIO, head: bytes, error: Exception | None) -> None:
        self.stream, self.head, self.error = stream, head, error

    def read1(self, n: int = -1) -> bytes:
        if self.head:
            n = len(self.head) if n is None or n < 0 else n
            out, self.head = self.head[:n], self.head[n:]
            return out
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return self.stream.read1(n)

    def peek(self, n: int = 1) -> bytes:
        return self.head or (b"" if self.error is not None else self.stream.peek(n))

    def close(self) -> None:
        self.stream.close()


def line_lists(stream: BinaryIO, limit: int, first: bool = True) -> Iterator[list[bytes]]:
    """Raw lines, one list per read chunk (splitting in C keeps the per-line cost low).

    A line over `limit` bytes comes as a _TooLong holding its head (the rest is skipped
    without being held), and a corrupt compressed stream ends with a BrokenStream. `first`:
    the stream starts the file, where a UTF-8 byte-order mark is not part of the first record.
    """
    tail = b""
    too_long: _TooLong | None = None
    while True:
        try:
            # read1: one underlying read, so a corrupt gzip loses no line decoded before it
            chunk = stream.read1(CHUNK_BYTES)
        except (OSError, EOFError, zlib.error) as e:  # truncated or corrupt gzip
            yield [BrokenStream(f"compressed stream broken off: {e}".encode())]
            return
        if not chunk:
            break
        if first and chunk.startswith(b"\xef\xbb\xbf"):
            chunk = chunk[3:]
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


class _Range(io.RawIOBase):
    """Bytes [start, end) of a file, read as a stream."""

    def __init__(self, path: str, start: int, end: int) -> None:
        self.file = open(path, "rb", buffering=0)
        self.file.seek(start)
        self.left = end - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        if n <= 0:
            return 0
        got = self.file.readinto(memoryview(buffer)[:n]) or 0
        self.left -= got
        return got

    def close(self) -> None:
        self.file.close()
        super().close()


WHOLE_SPAN_BYTES = 32 << 20  # a span up to this size is read in one call


def span_lines(span: Span, max_line_bytes: int) -> list[bytes]:
    """The lines of a span, read by the worker itself: nothing crosses a pipe. A span is read
    whole and split once (less than half the cost of streaming it through a buffer), unless a
    line far over max_line_bytes makes it long: then it streams, holding no more than that limit."""
    if span.end - span.start <= WHOLE_SPAN_BYTES:
        with open(span.path, "rb", buffering=0) as f:
            pieces, at = [], span.start
            while at < span.end and (piece := os.pread(f.fileno(), span.end - at, at)):
                pieces.append(piece)  # one piece, unless the file system reads short (NFS, FUSE)
                at += len(piece)
        data = b"".join(pieces)  # one piece comes back as it is, uncopied
        if span.start == 0 and data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        lines = data.split(b"\n")
        if not lines[-1]:  # the span's last newline, or nothing at all
            lines.pop()
        return lines  # a line over max_line_bytes is quarantined by decode_lines
    with io.BufferedReader(_Range(span.path, span.start, span.end), CHUNK_BYTES) as stream:
        return [line for chunk in line_lists(stream, max_line_bytes, first=span.start == 0) for line in chunk]
