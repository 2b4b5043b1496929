"""The manifests that sit beside each stage's output: the one place their formats live.

A manifest is written last, atomically; its presence means the folder is complete.
Downstream stages read it instead of asking the user to repeat flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import UserError
from .files import read_json, write_json

MANIFEST = "manifest.json"
ETL_FORMAT = "shardtune.etl/1"


def _read_manifest(folder: Path, fmt: str, what: str, command: str) -> dict[str, Any]:
    data = read_json(folder / MANIFEST, what)
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise UserError(f"{folder / MANIFEST} is not a shardtune {what}; run `shardtune {command}` to make one")
    return data


def _build(cls, data: dict[str, Any]):
    """The dataclass from its JSON, ignoring keys a newer version may have added."""
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class InputFile:
    path: str
    bytes: int
    lines_read: int = 0
    records_kept: int = 0
    malformed: int = 0


@dataclass
class Shard:
    file: str
    rows: int
    bytes: int


@dataclass
class EtlManifest:
    """What `shardtune etl` produced. Every input line lands in exactly one count:
    lines_read == records_kept + sum(dropped.values()) + malformed."""

    inputs: list[InputFile]
    lines_read: int
    records_kept: int
    dropped: dict[str, int]
    malformed: int
    malformed_reasons: dict[str, int]
    shards: list[Shard]
    options: dict[str, Any]
    duration_s: float
    columns: list[str] = field(default_factory=lambda: ["uid", "title", "content"])
    format: str = ETL_FORMAT
    shardtune_version: str = __version__

    def balanced(self) -> bool:
        return self.lines_read == self.records_kept + sum(self.dropped.values()) + self.malformed

    def write(self, folder: Path) -> None:
        write_json(folder / MANIFEST, dataclasses.asdict(self))

    @classmethod
    def read(cls, folder: Path) -> "EtlManifest":
        data = _read_manifest(folder, ETL_FORMAT, "ETL manifest", "etl")
        data["inputs"] = [InputFile(**i) for i in data["inputs"]]
        data["shards"] = [Shard(**s) for s in data["shards"]]
        return _build(cls, data)


TOKENS_FORMAT = "shardtune.tokens/1"


@dataclass
class TokenShard:
    file: str  # relative to the tokens folder: "train/tokens-00000.arrow"
    examples: int
    tokens: int
    bytes: int


@dataclass
class SplitStats:
    examples: int = 0
    tokens: int = 0
    answer_tokens: int = 0
    truncated: int = 0  # answers cut to fit max_length (these end without EOS)
    shards: list[TokenShard] = field(default_factory=list)


@dataclass
class TokensManifest:
    """What `shardtune tokenize` produced; `shardtune train` reads it instead of asking again."""

    source: str  # the ETL folder
    tokenizer: str  # name or path as given
    tokenizer_backend: str  # tiktoken or huggingface
    vocab_size: int
    eos_id: int
    dtype: str  # uint16 or uint32
    template: str
    template_hash: str
    max_length: int
    val_fraction: float
    splits: dict[str, SplitStats]
    dropped_prompt_too_long: int
    length_histogram: dict[str, list[int]]  # {"edges": [...], "counts": [...]} over all examples
    fingerprint: str  # of the inputs and options: a re-run with the same one has nothing to do
    options: dict[str, Any]
    duration_s: float
    format: str = TOKENS_FORMAT
    shardtune_version: str = __version__

    def write(self, folder: Path) -> None:
        write_json(folder / MANIFEST, dataclasses.asdict(self))

    @classmethod
    def read(cls, folder: Path) -> "TokensManifest":
        data = _read_manifest(folder, TOKENS_FORMAT, "token manifest", "tokenize")
        data["splits"] = {k: SplitStats(**{**v, "shards": [TokenShard(**s) for s in v["shards"]]})
                          for k, v in data["splits"].items()}
        return _build(cls, data)

    def shard_paths(self, folder: Path, split: str) -> list[Path]:
        return [folder / s.file for s in self.splits[split].shards]


RUN_INFO = "shardtune.json"


@dataclass
class RunInfo:
    """Beside a trained model (RUN_DIR/final/shardtune.json): how it was taught, so
    that generation asks in the same template and tokenizer."""

    template: str
    template_hash: str
    tokenizer: str
    max_length: int
    train_config: dict[str, Any]
    tokens_dir: str
    run_dir: str = ""  # the run folder (metrics.jsonl, checkpoints), as an absolute path
    vocab_size: int = 0  # the shards' tokenizer: what an adapter's base is rebuilt with
    eos_id: int = 0
    format: str = "shardtune.run/1"
    shardtune_version: str = __version__

    def write(self, folder: Path) -> None:
        write_json(folder / RUN_INFO, dataclasses.asdict(self))

    @classmethod
    def read(cls, folder: Path) -> "RunInfo | None":
        """None for a model folder that shardtune did not train (any Hugging Face model)."""
        if not (folder / RUN_INFO).exists():
            return None
        return _build(cls, read_json(folder / RUN_INFO, "run info"))
