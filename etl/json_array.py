"""One JSON array of records, streamed element by element (ijson) with the nesting bounded."""

from __future__ import annotations

from typing import BinaryIO, Iterator

import ijson
import msgspec

MAX_DEPTH = 64  # a catalogue record nests a few levels; deeper is a broken file or an attack
TOO_DEEP = object()  # stands for an array element nested deeper than MAX_DEPTH, never built
_OPEN = {"start_map": dict, "start_array": list}


def array_items(stream: BinaryIO) -> Iterator[object]:
    """The elements of a JSON array, built from ijson's flat events (no per-event prefix strings,
    whose length grows with the depth) with the nesting bounded: an element deeper than MAX_DEPTH
    comes as TOO_DEEP, skipped without being built, so memory stays bounded whatever the input."""
    events = ijson.basic_parse(stream, use_float=True)
    for event, _ in events:
        if event != "start_array":
            raise ijson.JSONError("the file is not a JSON array")
        break
    stack: list = []  # containers being built, innermost last
    keys: list = []  # the pending key of each map on the stack
    skipped = 0  # depth inside an element that is too deep
    for event, value in events:
        if skipped:
            skipped += 1 if event in _OPEN else -1 if event in ("end_map", "end_array") else 0
            if not skipped and not stack:
                yield TOO_DEEP
            continue
        if event in _OPEN:
            if len(stack) >= MAX_DEPTH:  # drop the whole element: skip to its end, counting depth
                skipped = len(stack) + 1
                stack.clear(), keys.clear()
                continue
            stack.append(_OPEN[event]())
            keys.append(None)
            continue
        if event == "map_key":
            keys[-1] = value
            continue
        if event in ("end_map", "end_array"):
            if not stack:  # the end of the top array: anything after it is data that would go uncounted
                for _ in events:
                    raise ijson.JSONError("data after the end of the JSON array")
                return
            value, _ = stack.pop(), keys.pop()
        if not stack:
            yield value
        elif isinstance(stack[-1], dict):
            stack[-1][keys[-1]] = value
        else:
            stack[-1].append(value)


def encodable(obj: object) -> bool:
    try:
        msgspec.json.encode(obj)
        return True
    except (TypeError, msgspec.EncodeError):
        return False
