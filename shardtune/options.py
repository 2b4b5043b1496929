"""Options, defined once: each command's settings are a dataclass whose fields carry
their own help text, type and range (`option(...)`). From that one definition come the
command-line flags, the command's TOML table and its `--help`, and one `check()`
validates a value however it arrived: default < TOML table < flag.

    @dataclass
    class EtlConfig(Config):
        SECTION = "etl"
        shard_rows: int = option(100_000, "rows per Parquet shard", min=1)

This module imports nothing heavy: `shardtune --help` builds every parser from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar, get_type_hints

import tomllib

from .errors import UserError
from .files import read_small_file

C = TypeVar("C", bound="Config")

# The largest whole number any option takes unless its own range says otherwise: more than any
# count a run can reach, and what every C library's int holds (larger ones overflowed in them).
MAX_INT = 2**31 - 1


def option(default: Any, help: str, *, min: float | None = None, max: float | None = None,
           above: float | None = None, below: float | None = None, choices: tuple[str, ...] | None = None,
           metavar: str | None = None, group: str | None = None) -> Any:
    """A config field with its help text and range. `min`/`max` are inclusive, `above` and
    `below` exclusive; floats must also be finite. `group` titles a section of `--help`."""
    return field(default=default, metadata={"help": help, "min": min, "max": max, "above": above, "below": below,
                                            "choices": choices, "metavar": metavar, "group": group})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _range_text(meta: dict) -> str:
    parts = []
    if meta.get("above") is not None:
        parts.append(f"above {meta['above']:g}")
    if meta.get("min") is not None:
        parts.append(f"at least {meta['min']:,}")
    if meta.get("max") is not None:
        parts.append(f"at most {meta['max']:,}")
    if meta.get("below") is not None:
        parts.append(f"below {meta['below']:g}")
    return " and ".join(parts)


def _type_name(kind: type) -> str:
    return {bool: "true or false", int: "a whole number", float: "a finite number", str: "text"}[kind]


def check_value(name: str, kind: type, meta: dict, value: Any, label: str = "") -> Any:
    """The value, validated against its field's type and range (an int is accepted for a float).
    `label` names where it came from in the error; the flag by default."""
    if kind is int and meta.get("max") is None:
        meta = {**meta, "max": MAX_INT}
    expected = " ".join(filter(None, [_type_name(kind), _range_text(meta)]))
    if meta.get("choices"):
        expected = "one of " + ", ".join(meta["choices"])
    problem = UserError(f"{label or flag(name)} must be {expected} (got {value!r})")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise problem
    if kind is float and not math.isfinite(value):
        raise problem
    if meta.get("choices") and value not in meta["choices"]:
        raise problem
    if kind in (int, float):
        low, high, above, below = meta.get("min"), meta.get("max"), meta.get("above"), meta.get("below")
        if (low is not None and value < low) or (high is not None and value > high) or \
                (above is not None and value <= above) or (below is not None and value >= below):
            raise problem
    return value


class Config:
    """Base of the per-command config dataclasses. SECTION names the TOML table."""

    SECTION: ClassVar[str] = ""

    @classmethod
    def field_types(cls) -> dict[str, type]:
        hints = get_type_hints(cls)
        return {f.name: hints[f.name] for f in fields(cls)}  # type: ignore[arg-type]

    def check(self: C) -> C:
        """Validate every field, then the rules that tie fields together; returns self."""
        types = self.field_types()
        for f in fields(self):  # type: ignore[arg-type]
            setattr(self, f.name, check_value(f.name, types[f.name], f.metadata, getattr(self, f.name)))
        self.validate()
        return self

    def validate(self) -> None:
        """Rules across fields; a subclass raises UserError naming the flags."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], where: str) -> C:
        """From a TOML table or a saved config; unknown keys are an error naming the known ones."""
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        values = {}
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in names:
                known = f"known: {', '.join(sorted(names))}" if names else "it takes no keys"
                raise UserError(f"unknown key {key!r} in {where}; {known}")
            values[name] = value
        return cls(**values)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        text = read_small_file(path, "config file").decode("utf-8")
        return tomllib.loads(text.removeprefix("\ufeff"))  # a byte-order mark (Windows editors) is no TOML
    except RecursionError:
        raise UserError(f"cannot read config file {path}: nested too deep") from None
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a folder; give a TOML file") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text; save it as UTF-8") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"cannot read config file {path}: {e}") from None


# Every command's table, filled in as the parsers are built: one file may hold the tables of
# several commands, but a table of none (a typo: [trian]) is an error, not silently skipped.
SECTIONS: set[str] = set()


def _check_tables(path: Path, document: dict[str, Any]) -> None:
    def walk(table: dict[str, Any], prefix: str) -> None:
        for key, value in table.items():
            name = prefix + key
            if name in SECTIONS:
                continue
            if isinstance(value, dict) and any(s.startswith(name + ".") for s in SECTIONS):
                walk(value, name + ".")  # [bench] holds [bench.etl], [bench.gpu], ...
                continue
            what = f"a table [{name}] that no command reads" if isinstance(value, dict) else \
                f"a key {name!r} outside any command's table"
            raise UserError(f"{path} has {what}; the tables: {', '.join(f'[{s}]' for s in sorted(SECTIONS))}")

    walk(document, "")


def config_path(text: str) -> Path:
    """--config's type: an empty name would be the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give a TOML file")
    return Path(text)


def toml_table(path: Path, section: str) -> dict[str, Any]:
    """The (possibly dotted, e.g. "bench.etl") table of a TOML file; {} when absent."""
    table: Any = read_toml(path)
    _check_tables(path, table)
    for part in section.split("."):
        table = table.get(part, {}) if isinstance(table, dict) else None
        if not isinstance(table, dict):
            raise UserError(f"[{section}] in {path} must be a table")
    return table


def add_config_flags(parser: argparse.ArgumentParser, cls: type[Config]) -> None:
    """--config FILE, then one flag per field. Flags default to None, so that the TOML
    table and the field defaults show through when a flag is not given."""
    SECTIONS.add(cls.SECTION)
    parser.add_argument("--config", type=config_path, metavar="FILE",
                        help=f"TOML file whose [{cls.SECTION}] table sets any option below that shows a default "
                        "(the paths and switches of this one run, such as --out, are given as arguments); flags "
                        "override it")
    groups: dict[str | None, Any] = {None: parser}
    types = cls.field_types()
    for f in fields(cls):  # type: ignore[arg-type]
        meta, kind = f.metadata, types[f.name]
        if "help" not in meta:
            continue
        title = meta.get("group")
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        extra = "; " + _range_text(meta) if _range_text(meta) else ""
        default = f.default if not isinstance(f.default, str) or "\n" not in f.default else "(see README)"
        text = f"{meta['help']} (default: {default}{extra})".replace("%", "%%")
        target = groups[title]
        if kind is bool:
            target.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=text)
        else:
            metavar = meta.get("metavar") or {int: "N", float: "X", str: "TEXT"}[kind]
            target.add_argument(flag(f.name), dest=f.name, type=kind, default=None, choices=meta.get("choices"),
                                metavar=metavar if not meta.get("choices") else None, help=text)
    parser.set_defaults(_config_class=cls)


def config_from_args(args: argparse.Namespace) -> Any:
    """The command's config: defaults < its TOML table (--config) < flags; validated."""
    cls: type[Config] = args._config_class
    values: dict[str, Any] = {}
    if getattr(args, "config", None) is not None:
        values.update({k.replace("-", "_"): v for k, v in toml_table(args.config, cls.SECTION).items()})
        where = f"[{cls.SECTION}] of {args.config}"
    else:
        where = "the options"
    config = cls.from_dict(values, where)
    types = cls.field_types()
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name in values:  # a file's value is checked even where a flag overrides it: it is wrong either way
            check_value(f.name, types[f.name], f.metadata, values[f.name], f"{f.name} in {where}")
        given = getattr(args, f.name, None)
        if given is not None:
            setattr(config, f.name, given)
    # which options the user set, by file or flag (train --resume takes the run's own for the rest)
    config.given = frozenset(values) | {f.name for f in fields(cls) if getattr(args, f.name, None) is not None}
    try:
        return config.check()
    except UserError as e:  # a rule across fields names flags; say which of them the file set
        from_file = [name for name in re.findall(r"--([a-z0-9-]+)", str(e))
                     if name.replace("-", "_") in values and getattr(args, name.replace("-", "_"), None) is None]
        if not from_file:
            raise
        keys = ", ".join(f"--{name} is {name.replace('-', '_')}" for name in dict.fromkeys(from_file))
        raise UserError(f"{e} ({keys} in {where})") from None


def add_command(sub, name: str, cls: type[Config], run, help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand whose options are `cls`'s fields; it calls `run(args, config)` with the
    validated config (defaults < TOML < flags). Returns the parser for positional arguments."""
    parser = sub.add_parser(name, help=help, description=description)
    add_config_flags(parser, cls)
    parser.set_defaults(run=lambda args: run(args, config_from_args(args)), _parser=parser)
    return parser
