"""Typed stage configs: dataclass defaults < TOML file section < command-line flags.

Each stage owns a small dataclass (etl.EtlConfig, ...). This module only knows how
to fill one from a TOML table and flag overrides, with clear errors for typos.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import UserError

T = TypeVar("T")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"cannot read config file {path}: {e}") from None


def _coerce(name: str, kind: Any, value: Any) -> Any:
    if kind in (int, float, str, bool) and not isinstance(value, kind):
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"config value {name} = {value!r} should be a {kind.__name__}")
    return value


def build(cls: type[T], section: str, config_file: Path | None = None, **overrides: Any) -> T:
    """Make a `cls` from its defaults, `[section]` of the TOML file, then non-None overrides."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if config_file is not None:
        table = read_toml(config_file).get(section, {})
        if not isinstance(table, dict):
            raise UserError(f"[{section}] in {config_file} must be a table")
        for key, value in table.items():
            field = key.replace("-", "_")
            if field not in names:
                raise UserError(f"unknown key {key!r} in [{section}] of {config_file}; known: {', '.join(sorted(names))}")
            values[field] = _coerce(key, hints[field], value)
    values.update({k: v for k, v in overrides.items() if v is not None and k in names})
    return cls(**values)


def as_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
