"""The manifests that sit beside each stage's output: the one place their formats live.

A manifest is written last, atomically; its presence means the folder is complete.
Downstream stages read it instead of asking the user to repeat flags.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import UserError
from .files import inside, read_json, verify_files, write_json

MANIFEST = "manifest.json"
ETL_FORMAT = "shardtune.etl/1"


def _read_manifest(folder: Path, fmt: str, what: str, command: str) -> dict[str, Any]:
    data = read_json(folder / MANIFEST, what)
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise UserError(f"{folder / MANIFEST} is not a shardtune {what}; run `shardtune {command}` to make one")
    return data


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a value read from JSON has the type a manifest field declares."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_conforms(k, args[0]) and _conforms(v, args[1])
                                               for k, v in value.items())
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def from_json(cls, data: dict[str, Any]):
    """The dataclass from its JSON, ignoring keys a newer version may have added; a field of the
    wrong type (an edited or foreign file) is a TypeError naming it, before anything uses it."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} is not a JSON object")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for name, value in data.items():
        if name in known and not _conforms(value, hints[name]):
            raise TypeError(f"{name} is {type(value).__name__} {str(value)[:40]!r}, not {hints[name]}")
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
    crc32: int | None = None  # zlib.crc32 of the whole file


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

    def verify(self, folder: Path) -> None:
        """The manifest adds up and every shard is there, unchanged: or a one-line error."""
        counts = [self.lines_read, self.records_kept, self.malformed, *self.dropped.values(),
                  *(s.rows for s in self.shards)]
        if not self.balanced() or any(not isinstance(c, int) or c < 0 for c in counts) or \
                sum(s.rows for s in self.shards) != self.records_kept:
            raise UserError(f"{folder / MANIFEST} does not add up (it was edited); re-run `shardtune etl`")
        verify_files(folder, self.shards, "ETL shard", "etl")

    def write(self, folder: Path) -> None:
        write_json(folder / MANIFEST, dataclasses.asdict(self))

    @classmethod
    def read(cls, folder: Path) -> "EtlManifest":
        data = _read_manifest(folder, ETL_FORMAT, "ETL manifest", "etl")
        try:
            data["inputs"] = [from_json(InputFile, i) for i in data["inputs"]]
            data["shards"] = [from_json(Shard, s) for s in data["shards"]]
            return from_json(cls, data)
        except (KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{folder / MANIFEST} is damaged ({e}); re-run `shardtune etl`") from None


TOKENS_FORMAT = "shardtune.tokens/1"


@dataclass
class TokenShard:
    file: str  # relative to the tokens folder: "train/tokens-00000.arrow"
    examples: int
    tokens: int
    bytes: int
    crc32: int | None = None  # zlib.crc32 of the whole file


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
    tokenizer_digest: str = ""  # tokenizer_digest() of the tokenizer that made the ids ("" before 2026-12-04)
    format: str = TOKENS_FORMAT
    shardtune_version: str = __version__

    def write(self, folder: Path) -> None:
        write_json(folder / MANIFEST, dataclasses.asdict(self))

    @classmethod
    def read(cls, folder: Path) -> "TokensManifest":
        data = _read_manifest(folder, TOKENS_FORMAT, "token manifest", "tokenize")
        try:
            data["splits"] = {k: from_json(SplitStats, {**v, "shards": [from_json(TokenShard, s) for s in v["shards"]]})
                              for k, v in data["splits"].items()}
            manifest = from_json(cls, data)
        except (KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{folder / MANIFEST} is damaged ({e}); re-run `shardtune tokenize`") from None
        if set(manifest.splits) != {"train", "val"}:
            raise UserError(f"{folder / MANIFEST} is damaged (splits {sorted(manifest.splits)}); re-run `shardtune tokenize`")
        if (wrong := manifest._out_of_range()) is not None:
            raise UserError(f"{folder / MANIFEST} is damaged ({wrong}); re-run `shardtune tokenize`")
        return manifest

    def _out_of_range(self) -> str | None:
        """What of the manifest no tokenize run writes (types are checked by from_json), or None."""
        from .template import PromptTemplate

        counts = [n for split in self.splits.values() for s in split.shards for n in (s.examples, s.tokens, s.bytes)]
        if not 0 < self.vocab_size <= 2**32:
            return f"vocab_size {self.vocab_size}"
        if not 0 <= self.eos_id < self.vocab_size:
            return f"eos_id {self.eos_id} for a vocabulary of {self.vocab_size}"
        if self.dtype not in ("uint16", "uint32") or (self.dtype == "uint16" and self.vocab_size > 2**16):
            return f"dtype {self.dtype} for a vocabulary of {self.vocab_size}"
        if self.max_length < 1 or any(n < 0 for n in counts):
            return "a negative count or length"
        try:
            template = PromptTemplate(self.template)
        except UserError as e:
            return str(e)
        if self.template_hash and template.hash != self.template_hash:  # the template edited after tokenize
            return "its template is not the one the shards were made with (template_hash)"
        return None

    def verify(self, folder: Path) -> None:
        """Every shard is there, unchanged, and the counts add up: or a one-line error."""
        for name, split in self.splits.items():
            if sum(s.examples for s in split.shards) != split.examples or \
                    sum(s.tokens for s in split.shards) != split.tokens:
                raise UserError(f"{folder / MANIFEST} does not add up for {name} (it was edited); "
                                "re-run `shardtune tokenize`")
        verify_files(folder, [s for split in self.splits.values() for s in split.shards], "token shard", "tokenize")

    def shard_paths(self, folder: Path, split: str) -> list[Path]:
        return [inside(folder, s.file, "the token manifest") for s in self.splits[split].shards]

    def shard_counts(self, split: str) -> list[tuple[int, int]]:
        """Each shard's (examples, tokens), which TokenShards checks against the files."""
        return [(s.examples, s.tokens) for s in self.splits[split].shards]


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
        from .template import PromptTemplate

        try:
            info = from_json(cls, read_json(folder / RUN_INFO, "run info"))
            if PromptTemplate(info.template).hash != info.template_hash:
                raise TypeError("its template is not the one the model was taught in (template_hash)")
            return info
        except (TypeError, UserError) as e:
            raise UserError(f"{folder / RUN_INFO} is damaged ({e}); export the model again, or remove the "
                            "file to use the folder as a plain Hugging Face model") from None
