"""The seed notebook's cleaning approach, kept only as the benchmark's baseline.

Per line: json.loads, a regex / html.unescape / NFKC clean_text on title and
content, one JSON line written out. It stops at the first undecodable line
unless told to skip, as a notebook loop with a bare try/except would.
"""

from __future__ import annotations

import html
import json
import re
import sys
import unicodedata

TAG = re.compile(r"<.*?>")
NON_ASCII = re.compile(r"[^\x00-\x7F]+")  # the seed's cleaner destroyed "é" and "™" here
SPACES = re.compile(r"\s+")


def clean_text(text: str) -> str:
    text = html.unescape(text)
    text = TAG.sub("", text)
    text = unicodedata.normalize("NFKC", text)
    text = NON_ASCII.sub("", text)
    text = SPACES.sub(" ", text)
    return text.strip()


def run(src: str, dst: str) -> tuple[int, int]:
    lines = kept = 0
    with open(src, encoding="utf-8", errors="replace") as f, open(dst, "w", encoding="utf-8") as out:
        for line in f:
            lines += 1
            try:
                rec = json.loads(line)
                title, content = clean_text(rec["title"]), clean_text(rec["content"])
            except Exception:
                continue
            if title and content:
                out.write(json.dumps({"uid": rec["uid"], "title": title, "content": content}) + "\n")
                kept += 1
    return lines, kept


if __name__ == "__main__":
    print(*run(sys.argv[1], sys.argv[2]))
