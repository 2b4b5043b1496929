"""Shared helpers: tests build tiny catalogue files inline, record by record."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


def rec(title: str = "Girls Ballet Tutu Neon Pink", content: str = "High quality 3 layer ballet tutu, 12 inches long.",
        uid: str = "B000000001", **extra) -> dict:
    return {"uid": uid, "title": title, "content": content, "target_ind": [1, 2], "target_rel": [1.0, 1.0], **extra}


def write_lines(path: Path, items: list) -> Path:
    """Write NDJSON: dicts are encoded, bytes and str are written as they are."""
    with open(path, "wb") as f:
        for item in items:
            if isinstance(item, dict):
                item = json.dumps(item, ensure_ascii=False)
            f.write((item.encode() if isinstance(item, str) else item) + b"\n")
    return path


# No test may need the network. Set at import, so module-scoped fixtures are covered too.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(autouse=True)
def _plain_logs(monkeypatch):
    monkeypatch.setenv("SHARDTUNE_PLAIN_LOGS", "1")


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from shardtune.tokens.tokenizer import load_tokenizer

    return load_tokenizer("distilgpt2")


def etl_folder(tmp_path: Path, records: list[dict]) -> Path:
    """A cleaned-Parquet folder, as `shardtune etl` writes it, from inline records."""
    from shardtune.etl.config import EtlConfig
    from shardtune.etl.pipeline import run_etl

    src = write_lines(tmp_path / "trn.json", records)
    run_etl([src], tmp_path / "clean", EtlConfig(min_content_chars=1))
    return tmp_path / "clean"


def synth_tokens(folder: Path, lines: int, seed: int, template: str | None = None) -> Path:
    """`lines` generated products, cleaned, then tokenized to 64 tokens with a 10% validation split."""
    from shardtune.etl.config import EtlConfig
    from shardtune.etl.pipeline import run_etl
    from shardtune.data.synth import write_synth
    from shardtune.tokens.config import TokenizeConfig
    from shardtune.tokens.tokenize import run_tokenize

    write_synth(folder / "trn.json", lines, seed=seed)
    run_etl([folder / "trn.json"], folder / "clean", EtlConfig())
    options = {"template": template} if template else {}
    run_tokenize(folder / "clean", folder / "tokens", TokenizeConfig(max_length=64, val_fraction=0.1, **options))
    return folder / "tokens"


def kill_then_resume(monkeypatch, tokens: Path, run: Path, config, at_step: int, between=None) -> None:
    """Train into `run` until a KeyboardInterrupt at step `at_step` (a kill between checkpoints),
    call `between()` to look at what the kill left, then resume the same run to its end."""
    from shardtune.train.config import TrainConfig
    from shardtune.train.loop import Trainer, run_train

    original = Trainer.train_step

    def dies(self):
        if self.state.step == at_step:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", dies)
    with pytest.raises(KeyboardInterrupt):
        run_train(tokens, run, config)
    monkeypatch.setattr(Trainer, "train_step", original)
    if between is not None:
        between()
    run_train(tokens, run, TrainConfig(**{**config.to_dict(), "resume": True}))
