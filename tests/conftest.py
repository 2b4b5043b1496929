"""Shared helpers: tests build tiny catalogue files inline, record by record."""

from __future__ import annotations

import json
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


@pytest.fixture(autouse=True)
def _plain_logs_and_no_network(monkeypatch):
    monkeypatch.setenv("SHARDTUNE_PLAIN_LOGS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no test may need the network


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from shardtune.train.tokenizer import load_tokenizer

    return load_tokenizer("distilgpt2")


def etl_folder(tmp_path: Path, records: list[dict]) -> Path:
    """A cleaned-Parquet folder, as `shardtune etl` writes it, from inline records."""
    from shardtune.etl.config import EtlConfig
    from shardtune.etl.pipeline import run_etl

    src = write_lines(tmp_path / "trn.json", records)
    run_etl([src], tmp_path / "clean", EtlConfig(min_content_chars=1))
    return tmp_path / "clean"
