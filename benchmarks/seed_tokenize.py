"""The seed notebook's tokenization, kept only as the benchmark's baseline.

datasets.Dataset.map over the whole text (template + content, no EOS),
padding="max_length", truncation=True, max_length=256, labels copied from
input_ids, num_proc=1, saved with save_to_disk.
"""

from __future__ import annotations

import sys
from pathlib import Path

from shardtune.template import DEFAULT_TEMPLATE


def run(parquet_dir: Path, out: Path, tokenizer_name: str = "distilgpt2", max_length: int = 256) -> int:
    from datasets import Dataset

    from shardtune.tokens.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_name)
    tokenizer.pad_token = tokenizer.eos_token
    files = sorted(str(p) for p in parquet_dir.glob("part-*.parquet"))
    ds = Dataset.from_parquet(files, cache_dir=str(out.parent / "hf-cache"))

    def tokenize(batch):
        texts = [DEFAULT_TEMPLATE.format(title=t) + c for t, c in zip(batch["title"], batch["content"])]
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length)
        enc["labels"] = [list(ids) for ids in enc["input_ids"]]
        return enc

    ds = ds.map(tokenize, batched=True, num_proc=1, remove_columns=ds.column_names)
    ds.save_to_disk(str(out))
    return len(ds)


if __name__ == "__main__":
    print(run(Path(sys.argv[1]), Path(sys.argv[2])))
