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

An element longer than `limit` (its text between separators, blanks included, as a line's is)
comes as a _TooLong holding its head; the rest is scanned, never held, so memory holds one read
chunk plus `limit` and one more chunk at most. An empty element (`[a,,b]`, or a comma before the
`]`) comes as b"", counted as a blank line. Python 3.11's possessive quantifiers (`++`, `*+`) keep
every pattern here linear: nothing is ever matched twice.
"""

from __future__ import annotations

import re
import zlib
from typing import BinaryIO, Iterator

import msgspec

from .lines import CHUNK_BYTES, REJECT_BYTES, BrokenStream, _TooLong

_STRING = rb'"(?:[^"\\]++|\\.)*+"'  # `.` takes any byte (DOTALL): a backslash escapes a newline too
# Outside strings: a run of anything but brackets, commas and quotes, whole strings included; it
# stops at the next structural byte, or at a quote whose string the buffer does not close.
_OUTSIDE = re.compile(rb'(?:[^"\[\]{},]++|' + _STRING + rb')*+', re.DOTALL)
_INSIDE = re.compile(rb'(?:[^"\\]++|\\.)*+', re.DOTALL)  # the rest of a string's body, to its quote
_BLANKS = b" \t\r\n"  # JSON's whitespace
_SPACE = re.compile(rb"[ \t\r\n]*+")
# The fast path: where an object would end if no `},` sits inside one of its strings; a guess that
# msgspec confirms (a JSON value's extent is unique). After _GUESSES misses an element is scanned.
_OBJECT_END = re.compile(rb"\}[ \t\r\n]*+([,\]])")
_GUESSES = 4
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPENERS, _CLOSERS = frozenset(b"[{"), frozenset(b"]}")
_whole = msgspec.json.Decoder(msgspec.Raw).decode  # validates, building nothing (it recurses, though)


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
                if buf[pos] == _BACKSLASH:  # only as the buffer's last byte: its escaped byte comes next
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


class _ObjectEnds:
    """The fast path's guesses in one buffer: where an object would end if no `},` sat inside one
    of its strings. The buffer is searched once, left to right, however its elements end (a search
    per element would scan the rest of the buffer each time: quadratic in elements that miss)."""

    def __init__(self, buf: bytes) -> None:
        self.buf, self.view = buf, memoryview(buf)
        self.found: re.Match | None = None
        self.none_from = len(buf) + 1  # no guess at or after this position

    def after(self, at: int) -> re.Match | None:
        if at >= self.none_from:
            return None
        if self.found is not None and self.found.start() >= at:
            return self.found
        found = _OBJECT_END.search(self.buf, at)
        if found is None:
            self.none_from = at
        else:
            self.found = found
        return found

    def object_at(self, pos: int) -> re.Match | None:
        """The end of the object at `pos`, when one of a few guesses is confirmed within the buffer."""
        at = pos
        for _ in range(_GUESSES):
            guess = self.after(at)
            if guess is None:
                return None
            try:
                _whole(self.view[pos:guess.start() + 1])
                return guess
            except msgspec.DecodeError:
                at = guess.start() + 1
            except RecursionError:  # nested past msgspec's limit: the scan finds its end, decode_lines says too_deep
                return None
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
    """The raw elements of the JSON array `stream` holds (its first non-blank byte is `[`), in order.

    An element's length, for `limit`, is all its text between its separators, blanks included, as
    a line's is; it comes stripped of those blanks, and a _TooLong's head starts at its first
    non-blank byte. None of this depends on where the read chunks happen to end (tested)."""
    chunks = _chunks(stream)
    buf = b""
    for buf in chunks:  # the opening bracket, past leading blanks
        if type(buf) is BrokenStream:
            yield buf
            return
        buf = buf.lstrip(_BLANKS)
        if buf:
            break
    if buf[:1] != b"[":
        raise ValueError("array_elements needs a stream that starts with '['")
    pos, after_comma, ends = 1, False, _ObjectEnds(buf)
    while True:
        n = len(buf)
        if ends.buf is not buf:  # a new chunk (the guesses of one are kept across its scanned elements)
            ends = _ObjectEnds(buf)
        while True:  # whole elements inside this buffer
            begin, pos = pos, _SPACE.match(buf, pos).end()  # begin: just past the separator before
            if pos == n:
                break
            if buf[pos] == ord("]") and not after_comma:  # the end of the array (or of an empty one)
                yield from _rest(buf[pos + 1:], chunks)
                return
            guess = ends.object_at(pos) if buf[pos] == ord("{") else None
            if guess is None:
                break
            separator = guess.start(1)
            yield buf[pos:guess.start() + 1] if separator - begin <= limit else \
                _TooLong(buf[pos:min(pos + REJECT_BYTES, separator)])
            if guess.group(1) == b"]":
                yield from _rest(buf[guess.end():], chunks)
                return
            pos, after_comma = guess.end(), True
        # One element by the scan, across chunks as it needs; then back to the fast path.
        held = pos - begin  # bytes of the element's text so far, its leading blanks included
        while pos == n:  # blanks to the end of the buffer: counted, not kept
            buf = next(chunks, b"")
            if not buf or type(buf) is BrokenStream:
                yield buf or BrokenStream(b"JSON array cut off before its closing ']'")
                return
            n, pos = len(buf), _SPACE.match(buf).end()
            held += pos
        scan, parts, kept = _Scan(), [], 0  # parts: the text from its first non-blank byte
        start = pos
        while (end := scan.end(buf, pos)) is None:
            held += n - start
            if kept <= limit or kept < REJECT_BYTES:  # past both, only a head is wanted
                parts.append(buf[start:])
                kept += n - start
            buf = next(chunks, b"")
            if not buf or type(buf) is BrokenStream:
                yield buf or BrokenStream(b"JSON array cut off before its closing ']'")
                return
            start = pos = 0
            n = len(buf)
        held += end - start
        text = b"".join(parts) + buf[start:end] if kept <= limit or kept < REJECT_BYTES else b"".join(parts)
        element = text.rstrip(_BLANKS) if held <= limit else _TooLong(text[:REJECT_BYTES])
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
        if tail.strip(_BLANKS):
            yield BrokenStream(b"data after the end of the JSON array")
            return
        tail = next(chunks, b"")
        if not tail:
            return
