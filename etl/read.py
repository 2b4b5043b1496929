"""Streaming readers for the catalogue: NDJSON, gzip-compressed NDJSON, or one JSON array.

Polars, pandas and streaming JSON parsers all abort a whole file at its first bad line. Here each
line is decoded on its own (msgspec, against the record schema), so a bad line
costs only itself: it comes back as a `Malformed` with its line number and raw
bytes, and reading goes on. Memory is bounded by the block, the read chunk and
`max_line_bytes`: a longer line is quarantined, and held whole only inside a span of a
plain file that is read in one call (`lines.WHOLE_SPAN_BYTES` at most); anywhere else it is
skipped while streaming. Splitting into lines is `lines.py`'s, a JSON array's elements `json_array.py`'s.

NDJSON is read as Blocks of raw lines, cut by line count and by bytes, which
`decode_lines` turns into records in a worker process: reading and splitting
lines is cheap C, decoding them is the per-line Python work that the cores share.
A Block's bounds depend only on the input and the options, so the output does not
depend on how many workers decoded it.
"""

from __future__ import annotations

import gzip
import os
import stat
import sys
import zlib
from bisect import bisect_left
from itertools import accumulate
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import msgspec

from shardtune.errors import UserError
from shardtune.files import check_not_device, wide_encoding

from .fields import Fields, Schema
from .fields import schema as record_schema
from .json_array import array_elements
from .lines import REJECT_BYTES, Block, BrokenStream, Replayed, Span, line_lists, read_ahead

@dataclass
class Malformed:
    line: int
    kind: str  # counted in the manifest: invalid_json, invalid_utf8, wrong_type, ...
    detail: str  # the decoder's own words, kept in rejects.jsonl
    raw: bytes


@dataclass
class Batch:
    records: list = field(default_factory=list)  # decoded records (structs of the field mapping's schema)
    malformed: list[Malformed] = field(default_factory=list)
    lines: int = 0  # input lines (or array elements) this batch covers
    position: int = 0  # bytes of the (compressed) input file consumed so far


def _classify(err: Exception, line: bytes = b"x") -> tuple[str, str]:
    """(kind, detail) of a decoding error."""
    detail = str(err).split("\n")[0] or type(err).__name__
    if not line.strip():
        return "blank_line", "blank line"
    if isinstance(err, UnicodeDecodeError) or "UTF-8" in detail:  # msgspec >= 0.19 says so in a DecodeError
        return "invalid_utf8", detail
    if isinstance(err, msgspec.ValidationError):
        return ("missing_field" if "missing required field" in detail else "wrong_type"), detail
    return "invalid_json", detail




def check_input(path: Path) -> None:
    """A missing input, a folder or a device, said without opening it (a pipe read to check it
    would lose what was read)."""
    check_not_device(path, "input")
    if str(path) == "-":
        return
    if path.is_dir():
        raise UserError(f"input {path} is a folder; give the JSON file(s) inside it")
    if not path.exists():
        raise UserError(f"input file not found: {path}")


# What other compressors' files start with: read as text, every line would be a reject
COMPRESSED = {b"\xfd7zXZ\x00": "xz", b"BZh": "bzip2", b"\x28\xb5\x2f\xfd": "zstd", b"\x1f\x8b": "gzip",
              b"PK\x03\x04": "zip", b"7z\xbc\xaf\x27\x1c": "7z"}


def _compression(head: bytes) -> str | None:
    if head[:3] == b"BZh" and head[3:4].isdigit():
        return "bzip2"
    return next((name for magic, name in COMPRESSED.items() if name != "bzip2" and head.startswith(magic)), None)


def _whole_value(line: bytes, record: bool = False) -> bool:
    """Whether a line is one whole JSON value (an object, with `record`)."""
    try:
        value = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return False
    return isinstance(value, dict) or not record


class InputReader:
    """Reads one input file in blocks or batches of at most `batch_lines` lines and about `batch_bytes`."""

    def __init__(self, path: Path, batch_lines: int, max_line_bytes: int, batch_bytes: int = 8 << 20,
                 schema: Schema | None = None) -> None:
        self.path = path
        self.schema = schema or record_schema(Fields())
        self.batch_lines, self.batch_bytes = batch_lines, batch_bytes
        self.max_line_bytes = max_line_bytes
        try:
            check_input(path)
            if str(path) == "-":  # standard input, streamed like a pipe
                self.raw: BinaryIO = sys.stdin.buffer
            else:
                self.raw = open(path, "rb")
        except FileNotFoundError:
            raise UserError(f"input file not found: {path}") from None
        except PermissionError:
            raise UserError(f"cannot read input file {path}: permission denied") from None
        except OSError as e:
            raise UserError(f"cannot read input file {path}: {e.strerror or e}") from None
        self.size = os.fstat(self.raw.fileno()).st_size if stat.S_ISREG(os.fstat(self.raw.fileno()).st_mode) \
            else 0  # a pipe: its progress shows no total
        magic = self.raw.peek(2)[:2]  # peek, not read + seek: a pipe cannot seek
        self.gzipped = magic == b"\x1f\x8b"
        # GzipFile buffers by itself and hands over every line decoded before a
        # truncated end; a larger buffer on top would lose the lines around the break.
        stream: BinaryIO = gzip.GzipFile(fileobj=self.raw, mode="rb") if self.gzipped else self.raw
        # The head the format is judged on, handed out again to whichever reader reads the stream;
        # a compressed stream broken within it is quarantined after the lines before the break.
        self.head, error = read_ahead(stream, max_line_bytes)
        self.stream = Replayed(stream, self.head, error)
        self._broken = error if not self.head else None  # kept: a gzip cut in its header raises only once
        head = self.head
        encoding, packed = wide_encoding(head[:4]), _compression(head)
        if encoding or packed or (b"\n" not in head and b"}\r" in head):  # every line would be a reject
            self.close()
            if encoding:
                raise UserError(f"input {path} is {encoding} text; convert it to UTF-8 first "
                                f"(iconv -f {encoding} -t UTF-8 ... > {path.stem}-utf8.json)")
            if packed:
                inside = " inside gzip" if self.gzipped else ""
                raise UserError(f"input {path} is {packed}-compressed{inside}; shardtune reads plain or "
                                "gzip-compressed JSON: decompress it first")
            raise UserError(f"input {path} ends its lines with a lone CR (classic Mac); convert them first "
                            f"(tr '\\r' '\\n' < {path} > {path.stem}-lf.json)")

    def close(self) -> None:
        self.stream.close()
        self.raw.close()

    def _consumed(self) -> int:
        """Bytes of the (compressed) input read so far; 0 where a pipe cannot tell."""
        try:
            return self.raw.tell()
        except OSError:
            return 0

    def is_array(self) -> bool:
        """A file starting with `[` is one JSON array, unless its first line is a whole JSON
        value with more data after it: then it is NDJSON whose first record is a bare array."""
        head = self.head[3:] if self.head.startswith(b"\xef\xbb\xbf") else self.head  # a byte-order mark, then blanks
        head = head.lstrip(b" \t\r\n")
        if head[:1] != b"[":
            return False
        first, newline, rest = head.partition(b"\n")
        if not newline or not rest.strip():
            return True
        if _whole_value(first):
            return False
        # "[" then the first element: a (pretty-printed) array; unless the next lines are whole
        # records, each on its line: NDJSON whose first line is broken ("[1, 2"), which costs that line
        # alone. (An array's lines end in commas, or start with them, or hold parts of a record.)
        following = [line for line in rest.split(b"\n")[:-1] if line.strip()][:2]
        return not following or not all(_whole_value(line, record=True) for line in following)

    def batches(self) -> Iterator[Batch | Block | Span]:
        """For NDJSON, Spans of a plain file (the workers read them) or Blocks of raw lines from a
        compressed file or a pipe (read here), or of a JSON array's elements."""
        try:
            if self._broken is not None:
                raise self._broken
            array = self.is_array()
        except (OSError, EOFError, zlib.error) as e:
            batch = Batch(lines=1, position=self.size)
            batch.malformed.append(Malformed(1, "broken_stream", f"unreadable compressed stream: {e}", b""))
            yield batch
            return
        if array:
            yield from self._array_batches()
        elif not self.gzipped and str(self.path) != "-" and self.size > 0:  # a regular file: in spans
            # (a file of /proc says it is empty and is not: it is read as a stream, like a pipe)
            yield from self._spans()
        else:
            yield from self._blocks()

    def _spans(self) -> Iterator[Span]:
        """Spans of about batch_bytes, each ending after the first newline past its share: their
        bounds depend on the file alone. Finding a bound reads forward, holding nothing."""
        start = 0
        while start < self.size:
            end = min(self._line_end(start + self.batch_bytes), self.size)
            yield Span(str(self.path), start, end, end)
            start = end
        now = os.fstat(self.raw.fileno()).st_size
        if now != self.size:  # written to or cut while read: the spans no longer describe it
            raise UserError(f"input {self.path} changed while it was read ({self.size:,} bytes, then {now:,}); "
                            "re-run when it is complete")

    def _line_end(self, offset: int) -> int:
        """The offset just past the first newline at or after `offset - 1`."""
        fd, at = self.raw.fileno(), offset - 1
        while at < self.size:
            piece = os.pread(fd, 1 << 16, at)
            if not piece:  # the file was cut short while read: the check after the last span says so
                break
            found = piece.find(b"\n")
            if found >= 0:
                return at + found + 1
            at += len(piece)
        return self.size

    def _blocks(self) -> Iterator[Block]:
        """Consecutive lines, closed by the line that makes batch_lines of them or batch_bytes (newlines
        counted), so a block's bounds depend on the input alone, never on how it was read."""
        lines: list[bytes] = []
        size, number = 0, 1
        for chunk in line_lists(self.stream, self.max_line_bytes):
            while chunk:
                ends = list(accumulate(map(len, chunk)))  # bytes to the end of each line, newlines aside
                by_bytes = bisect_left(range(len(chunk)), self.batch_bytes - size, key=lambda k: ends[k] + k + 1)
                cut = min(by_bytes, self.batch_lines - len(lines) - 1)  # index of the block's last line here
                if cut >= len(chunk):
                    lines.extend(chunk)
                    size += ends[-1] + len(chunk)
                    break
                lines.extend(chunk[:cut + 1])
                yield Block.of(lines, number, self._consumed())
                number += len(lines)
                lines, size, chunk = [], 0, chunk[cut + 1:]
        if lines:
            yield Block.of(lines, number, self.size)

    def _array_batches(self) -> Iterator[Block]:
        """A JSON array's raw elements in Blocks cut by count and by bytes, as lines are: the
        workers decode each element as they would the same text on its own line."""
        if self.stream.peek(3)[:3] == b"\xef\xbb\xbf":  # a byte-order mark is not JSON
            self.stream.read1(3)  # (the head holds it: read1 gives all three)
        elements: list[bytes] = []
        size, number = 0, 1
        for element in array_elements(self.stream, self.max_line_bytes):
            elements.append(element)
            size += len(element) + 1
            if len(elements) >= self.batch_lines or size >= self.batch_bytes:
                yield Block.of_elements(elements, number, self._consumed())
                number += len(elements)
                elements, size = [], 0
        if elements:
            yield Block.of_elements(elements, number, self.size)


def decode_lines(lines: list[bytes], first_line: int, position: int, max_line_bytes: int, schema: Schema) -> Batch:
    """The records of raw lines; each line that is not one goes to `malformed`."""
    batch = Batch(lines=len(lines), position=position)
    keep, flag, decode = batch.records.append, batch.malformed.append, schema.decode
    for lineno, line in enumerate(lines, first_line):
        if type(line) is bytes and len(line) <= max_line_bytes:
            try:
                keep(decode(line))
            except (msgspec.DecodeError, UnicodeDecodeError) as e:
                flag(Malformed(lineno, *_classify(e, line), line[:REJECT_BYTES].rstrip(b"\r")))
            except RecursionError:  # nested deeper than the decoder's stack
                flag(Malformed(lineno, "too_deep", "nested too deep", line[:REJECT_BYTES]))
        elif type(line) is BrokenStream:
            flag(Malformed(lineno, "broken_stream", line.decode(), b""))
        else:
            flag(Malformed(lineno, "line_too_long", f"line longer than {max_line_bytes} bytes", line[:REJECT_BYTES]))
    return batch
