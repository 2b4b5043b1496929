"""Which keys of a catalogue record hold its id, title and content: the field mapping.

AmazonTitles' `trn.json` has flat `uid`, `title`, `content`; other catalogues name them
otherwise and nest them (Amazon's newer metadata: `parent_asin`, `title`, `description` as a
list of strings; a shop's export: `product.name`, `details.description`). A mapping is three
dotted paths. From it a msgspec schema is built once, nested structs for nested paths, so a
line is still decoded in C against exactly the fields it needs (other keys are skipped
unparsed). A list of strings is joined with spaces; a numeric id becomes text.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any, Callable

import msgspec

from shardtune.errors import UserError

ROLES = ("id", "title", "content")
LEAF_TYPES = {"id": str | int, "title": str | list[str], "content": str | list[str]}


@dataclass(frozen=True)
class Fields:
    id: str = "uid"
    title: str = "title"
    content: str = "content"

    def paths(self) -> dict[str, tuple[str, ...]]:
        return {role: tuple(getattr(self, role).split(".")) for role in ROLES}


@dataclass(frozen=True)
class Schema:
    type: Any  # the msgspec Struct type a line decodes into
    decode: Callable[[bytes], Any]
    getters: tuple[Callable[[Any], Any], ...]  # id, title, content of a decoded record

    def columns(self, records: list) -> dict[str, list[str]]:
        """uid, title and content columns of decoded records, as text."""
        out = {}
        for name, get in zip(("uid", "title", "content"), self.getters):
            values = list(map(get, records))
            if set(map(type, values)) - {str}:  # lists joined, numbers as text; all-text columns pass as they are
                values = [v if type(v) is str else " ".join(map(str, v)) if type(v) is list else str(v) for v in values]
            out[name] = values
        return out


@functools.lru_cache(maxsize=8)
def schema(fields: Fields) -> Schema:
    """The record schema of a mapping: nested Structs for nested paths, attributes f0, f1, ..."""
    tree: dict = {}
    for role, path in fields.paths().items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise UserError(f"--{role}-field {'.'.join(path)} goes inside a field that another flag names as text")
        if path[-1] in node:
            raise UserError(f"--{role}-field {'.'.join(path)} is also named by another field flag; give each its own")
        node[path[-1]] = role
    attrs: dict[str, str] = {}

    def build(node: dict, prefix: str, name: str) -> Any:
        specs = []
        for i, (key, child) in enumerate(node.items()):
            attr = f"f{i}"
            if isinstance(child, dict):
                specs.append((attr, build(child, f"{prefix}{attr}.", f"{name}_{i}"), msgspec.field(name=key)))
            else:
                attrs[child] = prefix + attr
                specs.append((attr, LEAF_TYPES[child], msgspec.field(name=key)))
        return msgspec.defstruct(name, specs, gc=False)

    record = build(tree, "", "Record")
    return Schema(record, msgspec.json.Decoder(record).decode, tuple(attrgetter(attrs[role]) for role in ROLES))


SAMPLE_LINES = 200  # lines the field check reads


def check_fields(path: Path, fields: Fields, max_line_bytes: int = 1 << 20, array: bool = False) -> None:
    """Fail fast, naming the keys found, when most of a file's first JSON objects lack a mapped field
    (most likely another catalogue's names). Reads only the first lines of a plain or gzip file (the
    first elements of a JSON `array`), each at most `max_line_bytes` (a longer one is not judged: the
    reader quarantines it)."""
    import gzip
    import zlib
    from itertools import islice

    from .json_array import array_elements

    if str(path) == "-" or not path.is_file():
        return  # a pipe can be read once only: the reader's quarantine is the check there
    lines = []
    try:
        with open(path, "rb") as raw:
            head = raw.read(2)
        with (gzip.open if head == b"\x1f\x8b" else open)(path, "rb") as f:
            if array:
                if f.read(3) != b"\xef\xbb\xbf":  # past a byte-order mark, as the reader reads it
                    f.seek(0)
                elements = islice(array_elements(f, max_line_bytes), 2 * SAMPLE_LINES)
                lines = [e for e in elements if type(e) is bytes and e.strip()][:SAMPLE_LINES]
            else:
                while len(lines) < SAMPLE_LINES and (line := f.readline(max_line_bytes + 1)):
                    if len(line) > max_line_bytes:
                        break
                    if line.strip():
                        lines.append(line)
    except (OSError, EOFError, zlib.error):
        pass  # a broken stream: the reader quarantines what it cannot read
    objects = []
    for line in lines:
        try:
            value = msgspec.json.decode(line)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            continue
        if isinstance(value, dict):
            objects.append(value)
    if len(objects) < 10:
        return  # not enough to judge
    missing = [role for role, p in fields.paths().items() if sum(not _has(o, p) for o in objects) > len(objects) / 2]
    if missing:
        keys = sorted({k for o in objects for k in _keys(o)})[:30]
        names = ", ".join(f"{r} field {getattr(fields, r)!r}" for r in missing)
        raise UserError(f"most of the first {len(objects)} records of {path} have no {names}; their keys are "
                        f"{', '.join(keys)}; map yours with --id-field, --title-field and --content-field "
                        "(dotted for nested keys, e.g. --content-field details.description)")


def _has(obj: Any, path: tuple[str, ...]) -> bool:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return False
        obj = obj[key]
    return True


def _keys(obj: dict, prefix: str = "") -> list[str]:
    """Every key, nested ones dotted, two levels deep."""
    out = []
    for key, value in obj.items():
        out.append(prefix + key)
        if isinstance(value, dict) and not prefix:
            out += _keys(value, key + ".")
    return out
