"""`shardtune train TOKENS_DIR --out RUN_DIR`: fine-tune a causal LM on token shards."""

from __future__ import annotations

from pathlib import Path

from shardtune.options import add_command
from shardtune.train.config import TrainConfig


def add_parser(sub) -> None:
    p = add_command(sub, "train", TrainConfig, run, help="fine-tune a causal LM on token shards",
                    description="Fine-tune a causal language model on `shardtune tokenize` shards with a lean "
                    "PyTorch loop: no compute on padding, loss on answers, mixed precision chosen from the GPU, "
                    "fused AdamW, atomic safetensors checkpoints and exact resume. Writes RUN_DIR/final (a "
                    "Hugging Face model folder), RUN_DIR/metrics.jsonl and RUN_DIR/checkpoints/. Under "
                    "`torchrun --nproc_per_node N` it trains with DistributedDataParallel.")
    p.add_argument("tokens_dir", type=Path, metavar="TOKENS_DIR", help="folder written by `shardtune tokenize`")
    p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run folder")


def run(args, config) -> int:
    from shardtune.console import say
    from shardtune.train.device import processes
    from shardtune.train.loop import run_train
    from shardtune.train.metrics import describe_eval

    if config.resume:  # the options a resume must keep, and the user left out, are the run's own
        from shardtune.train.preflight import resume_settings

        config = resume_settings(args.out, config)
    result = run_train(args.tokens_dir, args.out, config)
    if processes().rank == 0:  # under torchrun, one summary line
        say(f"{result['steps']:,} steps: {describe_eval(result)}, "
            f"padding {result['padding']:.1%} -> {args.out / 'final'}")
    return 0
