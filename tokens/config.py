"""The tokenize stage's options (apart from the encoder, so `--help` needs no numpy or pyarrow)."""

from __future__ import annotations

from dataclasses import dataclass

from shardtune.errors import UserError
from shardtune.options import Config, option
from shardtune.template import DEFAULT_TEMPLATE, PromptTemplate


@dataclass
class TokenizeConfig(Config):
    SECTION = "tokenize"

    tokenizer: str = option("distilgpt2", "Hugging Face tokenizer name or folder", metavar="NAME")
    max_length: int = option(256, "tokens per example: prompt + answer + EOS (the question is kept whole, the "
                             "answer cut)", min=2, max=1 << 20)
    val_fraction: float = option(0.01, "share of products (by title) held out for validation", min=0, below=1)
    template: str = option(DEFAULT_TEMPLATE, "prompt template with {title}")
    batch_examples: int = option(8192, "examples encoded at a time (bounds memory)", min=1)
    shard_tokens: int = option(50_000_000, "tokens per shard file", min=1)
    fast: bool = option(True, "use tiktoken for GPT-2's BPE when it gives Hugging Face's exact ids")
    workers: int = option(0, "encoding processes; 0 for one per CPU core", min=0)
    force: bool = option(False, "redo even when the output is up to date")

    def validate(self) -> None:
        PromptTemplate(self.template)
        if not self.tokenizer.strip():
            raise UserError("--tokenizer must name a tokenizer (e.g. distilgpt2) or a folder holding one")
