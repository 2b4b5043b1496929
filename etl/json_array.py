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

_STRING = rb'"(?:[^"\\\n]++|\\[^\n])*+"'  # a whole string on one line (JSON's have no raw newline)
# Outside strings: a run of anything but brackets, commas and quotes, whole strings included; it
# stops at the next structural byte, or at a quote whose string the buffer does not close.
_OUTSIDE = re.compile(rb'(?:[^"\[\]{},]++|' + _STRING + rb')*+')
_OUTSIDE_LINE = re.compile(rb'(?:[^"\[\]{},\n]++|' + _STRING + rb')*+')  # stops at newlines too
# The rest of a string's body, to its quote, or to a raw newline: JSON has none inside strings,
# so there the string (and its element) is broken, and the scan takes the newline as a separator.
_INSIDE = re.compile(rb'(?:[^"\\\n]++|\\[^\n])*+')
_BLANKS = b" \t\r\n"  # JSON's whitespace
_SPACE = re.compile(rb"[ \t\r\n]*+")
# The fast path: where an object would end if no `},` sits inside one of its strings; a guess that
# msgspec confirms (a JSON value's extent is unique). After _GUESSES misses an element is scanned.
_OBJECT_END = re.compile(rb"\}[ \t\r\n]*+([,\]])")
_GUESSES = 4
_QUOTE, _BACKSLASH, _NEWLINE, _COMMA, _CLOSE_ARRAY = ord('"'), ord("\\"), ord("\n"), ord(","), ord("]")
_OPENERS, _CLOSERS = frozenset(b"[{"), frozenset(b"]}")
_whole = msgspec.json.Decoder(msgspec.Raw).decode  # validates, building nothing (it recurses, though)


class _Scan:
    """Where the scan stands inside one element: depth (1 = between the array's elements),
    inside a string, right after a backslash there.

    Broken elements cost themselves alone where the frame allows it: a string cut by a raw newline
    ends its element at the newline, and so, in an array whose first lines hold one element each,
    does any newline inside an element (a record cut short carries on at the next line); a `}`
    between elements is part of the element before it, not the array's end. In a pretty-printed
    array, an element that opens more than it closes runs to the end: one broken_stream."""

    def __init__(self, one_per_line: bool = False) -> None:
        self.depth, self.in_string, self.escaped = 1, False, False
        self.broke = False  # the element ended at a raw newline, a broken one
        # An array whose first lines hold one element each: a newline inside an element is a break
        self.outside = _OUTSIDE_LINE if one_per_line else _OUTSIDE

    def end(self, buf: bytes, pos: int) -> int | None:
        """The index of the separator that ends the element (a comma at depth 1, or the closer of
        the array), or None when `buf` runs out first."""
        n = len(buf)
        while pos < n:
            if self.in_string:
                if self.escaped:  # the byte after a backslash that ended the buffer before
                    self.escaped = False
                else:
                    pos = _INSIDE.match(buf, pos).end()
                    if pos == n:
                        return None
                    if buf[pos] == _QUOTE:
                        self.in_string, pos = False, pos + 1
                        continue
                    if buf[pos] == _BACKSLASH:  # before a newline, or the buffer's last byte
                        pos += 1
                        if pos == n:
                            self.escaped = True
                            return None
                if buf[pos] != _NEWLINE:  # an escaped byte
                    pos += 1
                    continue
                self.in_string, self.depth, self.broke = False, 1, True  # a raw newline: a broken string
                return pos
            pos = self.outside.match(buf, pos).end()
            if pos == n:
                return None
            byte = buf[pos]
            if byte == _NEWLINE:  # (one element a line only) inside one, a line cut short
                if self.depth > 1:
                    self.depth, self.broke = 1, True
                    return pos
            elif byte == _QUOTE:
                self.in_string = True
            elif byte in _OPENERS:
                self.depth += 1
            elif byte in _CLOSERS:
                if self.depth > 1:
                    self.depth -= 1
                elif byte == _CLOSE_ARRAY:  # the array's own `]`
                    self.depth = 0
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
    buf, broken = b"", None
    for chunk in chunks:  # the opening bracket, past leading blanks, and the lines the layout is judged on
        if type(chunk) is BrokenStream:
            broken = chunk
            break
        buf = (buf + chunk).lstrip(_BLANKS)
        if len(buf) >= _LAYOUT_BYTES or (b"\n" in chunk and len(_layout_lines(buf)) >= _LAYOUT_LINES):
            break
    if buf[:1] != b"[":  # the reader judged otherwise: say so rather than guess
        yield broken or BrokenStream(b"not a JSON array: no '[' at its start")
        return
    one_per_line = _one_per_line(buf[:_LAYOUT_BYTES])
    if broken is not None:
        chunks = iter([broken])
    pos, after_comma, ends = 1, False, _ObjectEnds(buf)
    broke = False  # the element before ended at a raw newline: a comma may start this line
    while True:
        n = len(buf)
        if ends.buf is not buf:  # a new chunk (the guesses of one are kept across its scanned elements)
            ends = _ObjectEnds(buf)
        while True:  # whole elements inside this buffer
            begin, pos = pos, _SPACE.match(buf, pos).end()  # begin: just past the separator before
            if pos == n:
                break
            if broke and buf[pos] == _COMMA:  # the broken element's own separator (a comma-first layout)
                pos, broke, after_comma = pos + 1, False, True
                continue
            broke = False
            if buf[pos] == ord("]") and not after_comma:  # the end of the array (or of an empty one)
                yield from _rest(buf[pos + 1:], chunks)
                return
            guess = ends.object_at(pos) if buf[pos] == ord("{") else None
            if guess is None or (one_per_line and buf.find(b"\n", pos, guess.start()) >= 0):
                break  # (one element a line: one that spans lines is broken, as the scan finds)
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
        if broke and buf[pos] == _COMMA:  # as above, the comma past a chunk's end
            pos, broke, after_comma = pos + 1, False, True
            continue
        broke = False
        scan, parts, kept = _Scan(one_per_line), [], 0  # parts: the text from its first non-blank byte
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
            yield from _rest(buf[end + 1:], chunks)
            return
        # past a broken string's newline no comma was seen: a `]` next closes the array
        pos, after_comma, broke = end + 1, not scan.broke, scan.broke


_LAYOUT_LINES, _LAYOUT_BYTES = 8, 64 << 10


def _layout_lines(head: bytes) -> list[bytes]:
    """The first _LAYOUT_LINES non-blank complete lines after the `[`, within _LAYOUT_BYTES, each
    stripped of blanks and of the commas between elements."""
    lines = (line.strip(_BLANKS).strip(b",").strip(_BLANKS) for line in head[1:_LAYOUT_BYTES].split(b"\n")[:-1])
    return [line for line in lines if line][:_LAYOUT_LINES]


def _one_per_line(head: bytes) -> bool:
    """Whether the array's first lines (see _layout_lines; at least two) each hold one whole element:
    `[{...},`, `{...},`, `,{...}`, `{...}]`. Tools write arrays one way throughout (one line, one
    element a line, or indented), so the head tells the layout of the rest."""
    values = _layout_lines(head)
    for value in values:
        for text in (value, value[:-1] if value.endswith(b"]") else None):
            try:
                if text is not None:
                    _whole(text)
                    break
            except (msgspec.DecodeError, RecursionError):
                continue
        else:
            return False
    return len(values) >= 2


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
