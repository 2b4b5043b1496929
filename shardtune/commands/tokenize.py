"""`shardtune tokenize PARQUET_DIR --out TOKENS_DIR`: cleaned Parquet -> memory-mapped token shards."""

from __future__ import annotations

from pathlib import Path

from shardtune.errors import UserError
from shardtune.options import add_command
from shardtune.tokens.config import TokenizeConfig


def add_parser(sub) -> None:
    p = add_command(sub, "tokenize", TokenizeConfig, run, help="pre-tokenize cleaned Parquet into memory-mapped token shards",
                    description="Turn an etl output folder into Arrow token shards (train/ and val/, split by a "
                    "stable hash of the title) that training memory-maps. Each example is the prompt template "
                    "filled with the title, then the content and EOS. Skips the work when the output is "
                    "already up to date.")
    p.add_argument("parquet_dir", type=Path, metavar="PARQUET_DIR", help="folder written by `shardtune etl`")
    p.add_argument("--out", type=Path, required=True, metavar="TOKENS_DIR", help="output folder")
    p.add_argument("--template-file", type=Path, metavar="FILE", help="read the prompt template from this file")


def run(args, config) -> int:
    from shardtune.console import say
    from shardtune.files import read_small_file
    from shardtune.tokens.tokenize import run_tokenize

    if args.template_file is not None:
        if getattr(args, "template", None) is not None:  # one would be ignored: say so
            raise UserError("give --template or --template-file, not both")
        try:  # utf-8-sig: an editor's byte-order mark is not the template's first character
            config.template = read_small_file(args.template_file, "--template-file").decode("utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read --template-file {args.template_file}: {getattr(e, 'strerror', None) or e}") from None
    m = run_tokenize(args.parquet_dir, args.out, config)
    tr, va = m.splits["train"], m.splits["val"]
    say(f"{tr.examples:,} train / {va.examples:,} val examples, {tr.tokens + va.tokens:,} tokens "
        f"({m.dtype}, {m.tokenizer_backend}); truncated {tr.truncated + va.truncated:,}, "
        f"dropped {m.dropped_prompt_too_long:,} -> {args.out}")
    return 0
