"""One JSON array of records, cut into its elements' raw bytes, each decoded like an NDJSON line.

Only the array's frame is read here: where each element starts and ends. Parsing is left to
`read.decode_lines`, the same msgspec decoder and the same kinds as a line, so a broken element
(bad JSON, a lone escaped surrogate, a wrong type) costs itself alone, and a number past 64-bit
integers or doubles reads as it does in NDJSON. (A streaming parser's events, ijson over yajl, stop at
such a number and read the surrogate as "?": the array broke off there and the elements after it
went uncounted.) What cannot be re-synchronised is the frame itself: an array cut off before its
`]`, or data after it, is one broken_stream.

    [ws] element [ws] , [ws] element [ws] ]        element: any bytes, split at the commas
                                                   that sit outside strings at depth 1

An element longer than `limit` comes as a _TooLong holding its head (the rest is scanned, never
held), so memory holds one read chunk plus one element at most. An empty element (`[a,,b]`, or a
comma before the `]`) comes as b"", counted as a blank line.
"""

from __future__ import annotations

import re
import zlib
from typing import BinaryIO, Iterator

import msgspec

from .lines import CHUNK_BYTES, REJECT_BYTES, BrokenStream, _TooLong

_STRING = rb'"(?:[^"\\]++|\\.)*+"'
# Outside strings: a run of anything but brackets, commas and quotes, whole strings included; it
# stops at the next structural byte, or at a quote whose string the buffer does not close.
_OUTSIDE = re.compile(rb'(?:[^"\[\]{},]++|' + _STRING + rb')*+')
_INSIDE = re.compile(rb'(?:[^"\\]++|\\.)*+')  # the rest of a string's body, to its quote
_SPACE = re.compile(rb"[ \t\r\n]*+")
# The fast path: where an object would end if no `},` sits inside one of its strings; a guess that
# msgspec confirms (a JSON value's extent is unique), falling back to the scan after a few misses.
_OBJECT_END = re.compile(rb"\}[ \t\r\n]*+([,\]])")
_GUESSES = 4
_QUOTE, _BACKSLASH, _COMMA = ord('"'), ord("\\"), ord(",")
_OPENERS, _CLOSERS = frozenset(b"[{"), frozenset(b"]}")
_whole = msgspec.json.Decoder(msgspec.Raw).decode  # validates without building anything


class _Scan:
    """Where the scan stands inside one element: depth (1 = between the array's elements),
    inside a string, right after a backslash there."""

    def __init__(self) -> None:
        self.depth, self.in_string, self.escaped = 1, False, False

    def end(self, buf: bytes, pos: int) -> int | None:
        """The index of the separator that ends the element (a comma at depth 1, or the closer of
        the array), or None when `buf` runs out first."""
        n = len(buf)
        while pos < n:
            if self.in_string:
                if self.escaped:
                    pos, self.escaped = pos + 1, False
                    continue
                pos = _INSIDE.match(buf, pos).end()
                if pos == n:
                    return None
                if buf[pos] == _BACKSLASH:  # the last byte of the buffer: its escaped byte comes next
                    self.escaped = True
                    return None
                self.in_string, pos = False, pos + 1
                continue
            pos = _OUTSIDE.match(buf, pos).end()
            if pos == n:
                return None
            byte = buf[pos]
            if byte == _QUOTE:
                self.in_string = True
            elif byte in _OPENERS:
                self.depth += 1
            elif byte in _CLOSERS:
                self.depth -= 1
                if self.depth == 0:
                    return pos
            elif self.depth == 1:  # a comma between elements
                return pos
            pos += 1
        return None


def _fast_object(buf: bytes, view: memoryview, pos: int) -> re.Match | None:
    """The end of the object at `pos`, when a guess confirms it within the buffer."""
    at = pos
    for _ in range(_GUESSES):
        guess = _OBJECT_END.search(buf, at)
        if guess is None:
            return None
        try:
            _whole(view[pos:guess.start() + 1])
            return guess
        except msgspec.DecodeError:
            at = guess.start() + 1
    return None


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    """The stream's bytes, read a chunk at a time; a broken compressed stream ends with a BrokenStream."""
    while True:
        try:
            chunk = stream.read1(CHUNK_BYTES)  # one underlying read: a corrupt gzip loses nothing before it
        except (OSError, EOFError, zlib.error) as e:
            yield BrokenStream(f"compressed stream broken off: {e}".encode())
            return
        if not chunk:
            return
        yield chunk


def array_elements(stream: BinaryIO, limit: int) -> Iterator[bytes]:
    """The raw elements of the JSON array `stream` holds (its first non-blank byte is `[`), in order."""
    chunks = _chunks(stream)
    buf = b""
    for buf in chunks:  # the opening bracket, past leading blanks
        if type(buf) is BrokenStream:
            yield buf
            return
        buf = buf.lstrip(b" \t\r\n")
        if buf:
            break
    if buf[:1] != b"[":
        raise ValueError("array_elements needs a stream that starts with '['")
    pos, after_comma = 1, False
    while True:
        view, n = memoryview(buf), len(buf)
        while True:  # whole elements inside this buffer
            pos = _SPACE.match(buf, pos).end()
            if pos == n:
                break
            if buf[pos] == ord("]") and not after_comma:  # the end of the array (or of an empty one)
                yield from _rest(buf[pos + 1:], chunks)
                return
            guess = _fast_object(buf, view, pos) if buf[pos] == ord("{") else None
            if guess is None:
                break
            element = buf[pos:guess.start() + 1]
            yield element if len(element) <= limit else _TooLong(element[:REJECT_BYTES])
            if guess.group(1) == b"]":
                yield from _rest(buf[guess.end():], chunks)
                return
            pos, after_comma = guess.end(), True
        # One element by the scan, across chunks as it needs; then back to the fast path.
        scan, parts, held, head = _Scan(), [], 0, None
        start = pos
        while (end := scan.end(buf, pos)) is None:
            if head is None:
                parts.append(buf[start:])
                held += n - start
                if held > limit and held >= REJECT_BYTES:  # the head kept is whole
                    head, parts = _TooLong(b"".join(parts)[:REJECT_BYTES]), []
            buf = next(chunks, b"")
            if not buf or type(buf) is BrokenStream:
                yield buf or BrokenStream(b"JSON array cut off before its closing ']'")
                return
            start = pos = 0
            n = len(buf)
        element = (b"".join(parts) + buf[start:end]).strip(b" \t\r\n") if head is None else head
        if head is None and len(element) > limit:
            element = _TooLong(element[:REJECT_BYTES])
        closes = scan.depth == 0
        if element or not closes or after_comma:  # `[ ]` holds nothing; `[a, ]` an empty element
            yield element
        if closes:
            if buf[end] != ord("]"):
                yield BrokenStream(b"the JSON array closes with '}' instead of ']'")
                return
            yield from _rest(buf[end + 1:], chunks)
            return
        pos, after_comma = end + 1, True


def _rest(tail: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Whatever follows the array's `]`: blanks are nothing; anything else would go uncounted, so it
    is one broken_stream (read no further than its first non-blank byte)."""
    while True:
        if type(tail) is BrokenStream:
            yield tail
            return
        if tail.strip(b" \t\r\n"):
            yield BrokenStream(b"data after the end of the JSON array")
            return
        tail = next(chunks, b"")
        if not tail:
            return
