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
def _plain_logs(monkeypatch):
    monkeypatch.setenv("SHARDTUNE_PLAIN_LOGS", "1")
