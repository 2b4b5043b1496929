"""The `shardtune` command line: one subcommand per stage (bodies in commands.py,
each a thin shell over the stage's public entry function). User mistakes end as
one line on stderr and exit code 2; nothing here prints a traceback for them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .commands import cmd_bench, cmd_demo, cmd_etl, cmd_eval, cmd_generate, cmd_synth, cmd_tokenize, cmd_train
from .errors import UserError

EPILOG = "Stages: synth -> etl -> tokenize -> train -> generate/eval. Run `shardtune COMMAND --help` for details."


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, section: str, config_cls: type, helps: dict[str, str]) -> None:
    """--config FILE, then one flag per config field, defaulting to None so the TOML file's
    [section] table and the defaults show through."""
    import dataclasses

    parser.add_argument("--config", type=Path, metavar="FILE", help=f"TOML file; its [{section}] table sets defaults")
    for f in dataclasses.fields(config_cls):
        if f.name not in helps:
            continue
        text = f"{helps[f.name]} (default: {f.default})"
        if f.type in ("bool", bool):
            parser.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=text)
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type), str)
            parser.add_argument(_flag(f.name), dest=f.name, type=kind, default=None, metavar="N" if kind is int else "X",
                                help=text)


def build_parser() -> argparse.ArgumentParser:
    from .etl.config import EtlConfig
    from .train.config import TrainConfig
    from .train.tokenize import TokenizeConfig

    parser = argparse.ArgumentParser(prog="shardtune", description="Fine-tune a causal LM on a big, messy product "
                                     "catalogue on a 6-12 GB GPU: streaming ETL, pre-tokenized shards, a lean "
                                     "training loop.", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"shardtune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("etl", help="clean catalogue JSON into sharded Parquet",
                       description="Stream NDJSON (.json/.jsonl, optionally .gz) or a JSON array of catalogue "
                       "records into cleaned, deduplicated Parquet shards (uid, title, content). Every line is "
                       "accounted for in DIR/manifest.json; malformed lines go to DIR/rejects.jsonl.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="catalogue file(s): NDJSON, .gz or a JSON array")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (new, empty, or an earlier etl output)")
    add_config_flags(p, "etl", EtlConfig, {
        "min_content_chars": "drop records whose cleaned content is shorter",
        "shard_rows": "rows per Parquet shard",
        "batch_lines": "lines processed at a time (bounds memory)",
        "max_line_bytes": "quarantine longer lines without reading them into memory",
        "keep_dropped": "also write DIR/dropped.parquet with every filtered record and its reason",
    })
    p.set_defaults(func=cmd_etl)

    p = sub.add_parser("tokenize", help="pre-tokenize cleaned Parquet into memory-mapped token shards",
                       description="Turn an etl output folder into Arrow token shards (train/ and val/, split by a "
                       "stable hash of the title) that training memory-maps. Each example is the prompt template "
                       "filled with the title, then the content and EOS. Skips the work when the output is "
                       "already up to date.")
    p.add_argument("parquet_dir", type=Path, metavar="PARQUET_DIR", help="folder written by `shardtune etl`")
    p.add_argument("--out", type=Path, required=True, metavar="TOKENS_DIR", help="output folder")
    p.add_argument("--template-file", type=Path, metavar="FILE", help="read the prompt template from this file")
    add_config_flags(p, "tokenize", TokenizeConfig, {
        "tokenizer": "Hugging Face tokenizer name or folder",
        "max_length": "tokens per example (question kept whole, answer truncated)",
        "val_fraction": "share of products held out for validation",
        "template": "prompt template with {title}",
        "batch_examples": "examples encoded at a time",
        "shard_tokens": "tokens per shard file",
        "fast": "use tiktoken for GPT-2's BPE when identical to Hugging Face",
        "workers": "encoding processes, 0 for one per CPU core",
        "force": "redo even when the output is up to date",
    })
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("train", help="fine-tune a causal LM on token shards",
                       description="Fine-tune a causal language model on `shardtune tokenize` shards with a lean "
                       "PyTorch loop: no compute on padding, loss on answers, mixed precision chosen from the GPU, "
                       "fused AdamW, atomic safetensors checkpoints and exact resume. Writes RUN_DIR/final (a "
                       "Hugging Face model folder), RUN_DIR/metrics.jsonl and RUN_DIR/checkpoints/. Under "
                       "`torchrun --nproc_per_node N` it trains with DistributedDataParallel.")
    p.add_argument("tokens_dir", type=Path, metavar="TOKENS_DIR", help="folder written by `shardtune tokenize`")
    p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run folder")
    add_config_flags(p, "train", TrainConfig, {
        "model": "Hugging Face causal LM name or folder, or the preset 'tiny'",
        "from_scratch": "fresh weights in the named GPT-2-family architecture",
        "epochs": "passes over the training examples",
        "max_steps": "stop after this many optimizer steps (0: all epochs)",
        "batch_size": "examples per micro-batch",
        "grad_accum": "micro-batches per optimizer step",
        "lr": "peak learning rate",
        "weight_decay": "AdamW weight decay",
        "warmup_steps": "linear warmup steps",
        "schedule": "decay after warmup: linear or cosine",
        "max_length": "cut longer examples to this many tokens",
        "clip_grad": "gradient norm clipping",
        "loss_on": "'answer' or 'prompt+answer' (the seed's)",
        "eval_steps": "evaluate every N steps",
        "eval_examples": "validation examples per evaluation (0: all)",
        "save_steps": "checkpoint every N steps",
        "save_total_limit": "checkpoints kept",
        "log_steps": "log a line every N steps",
        "seed": "random seed (weights, data order, dropout)",
        "precision": "auto, bf16, fp16 or fp32",
        "pad_multiple": "round batch lengths up to a multiple of N (0: 16 on GPU, 1 on CPU)",
        "grad_checkpointing": "recompute activations to save GPU memory",
        "compile": "torch.compile the model",
        "max_bad_steps": "non-finite losses in a row before stopping",
        "resume": "continue from the newest checkpoint in RUN_DIR",
    })
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="answer questions about products with a trained model",
                       description="Answer a question about a product (its title, or a sentence about it) with a "
                       "trained model, asked in the prompt template it was trained with (read from the model "
                       "folder's shardtune.json). Streams the answer on a terminal; stops at EOS or "
                       "--max-new-tokens.")
    p.add_argument("model", metavar="MODEL_DIR", help="a run's final/ folder, or any Hugging Face causal LM")
    p.add_argument("question", nargs="?", metavar="QUESTION", help="e.g. 'Girls Ballet Tutu Neon Pink'")
    p.add_argument("--interactive", action="store_true", help="ask questions in a loop (Ctrl-D or 'exit' ends it)")
    p.add_argument("--input", type=Path, metavar="FILE", help="one question per line, or JSONL with a 'title' field")
    p.add_argument("--output", type=Path, metavar="FILE", help="JSONL answers for --input (default: INPUT.answers.jsonl)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="questions generated together (default: 8)")

    def sampling_flags(q: argparse.ArgumentParser, temperature: float) -> None:
        q.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="(default: 128)")
        q.add_argument("--temperature", type=float, default=temperature, help=f"0 for greedy (default: {temperature})")
        q.add_argument("--top-p", type=float, default=0.9, help="(default: 0.9)")
        q.add_argument("--top-k", type=int, default=50, help="(default: 50)")
        q.add_argument("--repetition-penalty", type=float, default=1.2, help="(default: 1.2)")
        q.add_argument("--seed", type=int, default=0, help="(default: 0)")

    sampling_flags(p, 0.7)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("eval", help="compare a model before and after fine-tuning",
                       description="Perplexity on answer tokens, ROUGE-L, token F1 and the EOS rate of greedy "
                       "answers on held-out products, for the base and the tuned model; writes report.md, "
                       "report.json and loss.png.")
    p.add_argument("--base", required=True, help="the model before fine-tuning (name, folder, or 'tiny')")
    p.add_argument("--tuned", required=True, help="the fine-tuned model (a run's final/ folder)")
    p.add_argument("--data", type=Path, required=True, metavar="TOKENS_DIR", help="token folder with a val split")
    p.add_argument("--out", type=Path, default=Path("runs/eval"), metavar="DIR", help="report folder (default: runs/eval)")
    p.add_argument("--samples", type=int, default=100, metavar="N", help="products answered by both (default: 100)")
    p.add_argument("--eval-examples", type=int, default=1000, metavar="N", help="examples for perplexity (default: 1000)")
    p.add_argument("--max-new-tokens", type=int, default=96, metavar="N", help="(default: 96)")
    p.add_argument("--seed", type=int, default=0, help="sample seed (default: 0)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="the whole pipeline on the bundled sample, offline, in minutes",
                       description="etl -> tokenize -> train -> eval -> a few answers on the bundled sample "
                       "(or --input), with the tiny model on a CPU by default; every artefact under --out.")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR", help="(default: runs/demo)")
    p.add_argument("--input", type=Path, nargs="+", metavar="FILE", help="catalogue file(s) instead of the bundled sample")
    p.add_argument("--model", default="tiny", help="model to fine-tune (default: tiny; e.g. distilgpt2 with a network)")
    p.add_argument("--steps", type=int, default=200, metavar="N", help="training steps (default: 200)")
    p.add_argument("--samples", type=int, default=30, metavar="N", help="products answered in the report (default: 30)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synth", help="generate trn.json-like test data",
                       description="Write N lines shaped like the AmazonTitles trn.json (quirks included), "
                       "deterministic by --seed; gzip-compressed when OUT ends in .gz.")
    p.add_argument("out", type=Path, metavar="OUT", help="file to write")
    p.add_argument("--lines", type=int, default=10_000, metavar="N", help="lines to write (default: 10000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--malformed-rate", type=float, default=0.0, metavar="P",
                   help="share of lines made malformed, to exercise error handling (default: 0)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("bench", help="measure a stage against the seed notebook's approach",
                       description="Benchmarks that print throughput and memory side by side with the seed's "
                       "approach, in one run.")
    bsub = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    b = bsub.add_parser("etl", help="the streaming cleaner vs json.loads + regex clean_text per line",
                        description="Generate N lines (or use --input), run `shardtune etl` and the seed's "
                        "per-line cleaner on the same file, each in its own process, and print lines/s, MB/s "
                        "and peak RSS.")
    b.add_argument("--lines", type=int, default=200_000, metavar="N", help="lines to generate (default: 200000)")
    b.add_argument("--input", type=Path, help="benchmark on this file instead of generated data")
    b.add_argument("--malformed-rate", type=float, default=0.001, metavar="P", help="(default: 0.001)")
    b.add_argument("--workdir", type=Path, default=Path("runs/bench-etl"), help="scratch folder (default: runs/bench-etl)")
    b.set_defaults(func=cmd_bench)
    b = bsub.add_parser("tokenize", help="token shards vs the seed's padded datasets.map",
                        description="Generate N lines, clean them, then tokenize the same Parquet with "
                        "`shardtune tokenize` and with the seed's datasets.map (padding to 256, labels copied, "
                        "num_proc=1); print examples/s, tokens/s, bytes on disk and peak RSS, and check the ids agree.")
    b.add_argument("--lines", type=int, default=200_000, metavar="N", help="lines to generate (default: 200000)")
    b.add_argument("--workdir", type=Path, default=Path("runs/bench-tokenize"),
                   help="scratch folder (default: runs/bench-tokenize)")
    b.set_defaults(func=cmd_bench)
    b = bsub.add_parser("train", help="this training loop vs the seed's Hugging Face Trainer",
                        description="Train the same model on the same tokens with `shardtune train` and with the "
                        "seed's Trainer setup (DataCollatorForLanguageModeling, padding to 256, fp16 on CUDA, "
                        "fused AdamW), each in its own process; print useful (non-padding) tokens/s over the "
                        "second half of the steps and peak GPU memory (or RSS on CPU). "
                        "SHARDTUNE_GPU_MEMORY_GB=6 emulates a 6 GB card on a bigger GPU.")
    b.add_argument("--lines", type=int, default=20_000, metavar="N", help="lines to generate (default: 20000)")
    b.add_argument("--model", default=None, help="model (default: tiny on CPU, distilgpt2 shape with fresh weights on a GPU)")
    b.add_argument("--steps", type=int, default=None, metavar="N", help="steps per side (default: 40 on CPU, 200 on a GPU)")
    b.add_argument("--batch-size", type=int, default=16, metavar="N", help="(default: 16, the seed's)")
    b.add_argument("--workdir", type=Path, default=Path("runs/bench-train"), help="scratch folder (default: runs/bench-train)")
    b.set_defaults(func=cmd_bench)
    b = bsub.add_parser("memory", help="estimate a training step's peak GPU memory, no GPU needed",
                        description="Run two training steps of this loop and of the seed's setup with fake tensors "
                        "(shapes only, no arithmetic) and count every allocation, as "
                        "torch.cuda.max_memory_allocated would: the worst case, every row at --max-length. "
                        "Answers 'will it fit my card?' on any machine; benchmarks/RESULTS.md compares it with "
                        "measured figures.")
    b.add_argument("--model", default="distilgpt2", help="a GPT-2-family shape (default: distilgpt2)")
    b.add_argument("--batch-size", type=int, default=16, metavar="N", help="(default: 16, the seed's)")
    b.add_argument("--max-length", type=int, default=256, metavar="N", help="(default: 256, the seed's)")
    b.set_defaults(func=cmd_bench)
    b = bsub.add_parser("generate", help="answers/s and time to first token, single and batched",
                        description="Greedy answers to generated product titles: plain model.generate one question "
                        "at a time (the seed's way) against `shardtune generate` with batches of 1, 8 and 32; "
                        "prints answer tokens/s (up to EOS), answers/s and time to first token.")
    b.add_argument("--model", type=Path, default=Path("runs/demo/run/final"),
                   help="a trained model folder (default: runs/demo/run/final, from `shardtune demo`)")
    b.add_argument("--questions", type=int, default=64, metavar="N", help="(default: 64)")
    b.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="(default: 64)")
    b.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"shardtune {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"shardtune {args.command}: interrupted; outputs were left consistent, re-run to finish",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
