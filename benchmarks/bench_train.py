"""`shardtune bench train`: this loop against the seed's Trainer setup, same model and tokens, one run."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from shardtune.options import Config, add_command, option


@dataclass
class BenchTrainConfig(Config):
    SECTION = "bench.train"

    lines: int = option(20_000, "lines to generate", min=1)
    model: str = option("", "model (default: tiny on the CPU, the distilgpt2 shape with fresh weights on a GPU)",
                        metavar="NAME")
    steps: int = option(0, "steps per side, the second half timed (0: 40 on the CPU, 200 on a GPU)", min=0)
    batch_size: int = option(16, "examples per step (the seed's 16)", min=1)
    workdir: str = option("runs/bench-train", "scratch folder", metavar="DIR")

    def validate(self) -> None:
        from shardtune.errors import UserError

        if 0 < self.steps < 4:
            raise UserError("--steps must be at least 4 (the second half is timed)")


def add_parser(sub) -> None:
    add_command(sub, "train", BenchTrainConfig, run, help="this training loop vs the seed's Hugging Face Trainer",
                description="Train the same model on the same tokens with `shardtune train` and with the "
                "seed's Trainer setup (DataCollatorForLanguageModeling, padding to 256, fp16 on CUDA, "
                "fused AdamW), each in its own process; print useful (non-padding) tokens/s over the "
                "second half of the steps and peak GPU memory (or RSS on CPU). "
                "SHARDTUNE_GPU_MEMORY_GB=6 emulates a 6 GB card on a bigger GPU.")


def run(args, config) -> int:
    return bench_train(config)


def bench_train(config: BenchTrainConfig) -> int:
    import torch

    from shardtune.console import log
    from shardtune.models import is_fresh_only
    from shardtune.train.metrics import MetricsLog

    from .common import device_name, print_table, run_measured, synth_input

    cuda = torch.cuda.is_available()
    model = config.model or ("distilgpt2" if cuda else "tiny")
    steps = config.steps or (200 if cuda else 40)
    batch_size, workdir = config.batch_size, Path(config.workdir)
    tokens, etl_dir = workdir / "tokens", workdir / "etl"
    if not (tokens / "manifest.json").exists():
        src = synth_input(workdir, config.lines, 0.0)
        run_measured(["-m", "shardtune.cli", "etl", str(src), "--out", str(etl_dir)])
        run_measured(["-m", "shardtune.cli", "tokenize", str(etl_dir), "--out", str(tokens)])
    scratch = not is_fresh_only(model) and not Path(model).exists()
    half = steps // 2
    run_dir = workdir / "run-shardtune"
    shutil.rmtree(run_dir, ignore_errors=True)
    log(f"bench train: shardtune train ({model}, {steps} steps of {batch_size}) ...")
    ours = run_measured(["-m", "shardtune.cli", "train", str(tokens), "--out", str(run_dir), "--model", model,
                         *(["--from-scratch"] if scratch else []), "--max-steps", str(steps),
                         "--batch-size", str(batch_size), "--log-steps", str(half), "--eval-steps", str(10**9),
                         "--save-steps", str(10**9), "--eval-examples", "64"])
    steady = MetricsLog(run_dir).read("train")[-1]  # the second half of the steps
    log("bench train: the seed's Trainer setup ...")
    seed_dir = workdir / "run-seed"
    shutil.rmtree(seed_dir, ignore_errors=True)
    seed = run_measured(["-m", "shardtune.benchmarks.seed_train", str(etl_dir), str(seed_dir), model,
                         "1" if scratch else "0", str(steps), str(batch_size)])
    seed_result = json.loads((seed_dir / "result.json").read_text())

    ours_mem = steady["peak_memory_mb"] if cuda else ours.peak_rss_mb
    seed_mem = seed_result["peak_gpu_mb"] if cuda else seed.peak_rss_mb
    rows = [["shardtune train", f"{steady['tokens_per_s']:,.0f}", f"{steady['padding']:.1%}", f"{ours_mem:,.0f}"],
            ["seed (Trainer, padded to 256)", f"{seed_result['useful_tokens_per_s']:,.0f}",
             f"{seed_result['padding']:.1%}", f"{seed_mem:,.0f}"],
            ["ratio", f"{steady['tokens_per_s'] / seed_result['useful_tokens_per_s']:.2f}x", "",
             f"{ours_mem / seed_mem:.2f}x"]]
    print_table(f"Training {model} at batch {batch_size} x up to 256 tokens, {steps} steps (second half timed), "
                f"{device_name()}", ["approach", "useful tokens/s", "padding",
                                     "peak GPU MB (max_memory_allocated)" if cuda else "peak RSS MB"], rows)
    return 0
