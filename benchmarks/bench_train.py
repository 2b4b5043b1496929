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


def train_ours(tokens: Path, run_dir: Path, model: str, steps: int, batch_size: int, *flags: str,
               env: dict | None = None) -> dict:
    """`shardtune train` in its own process: the second half's useful tokens/s, padding and peak
    memory (GPU memory allocated, or the process's RSS on the CPU), and the process's seconds."""
    from shardtune.models import is_fresh_only
    from shardtune.train.metrics import MetricsLog

    from .common import run_measured

    scratch = not is_fresh_only(model) and not Path(model).exists()
    shutil.rmtree(run_dir, ignore_errors=True)
    measured = run_measured(["-m", "shardtune.cli", "train", str(tokens), "--out", str(run_dir), "--model", model,
                             *(["--from-scratch"] if scratch else []), "--max-steps", str(steps),
                             "--batch-size", str(batch_size), "--log-steps", str(steps // 2),
                             "--eval-steps", str(10**9), "--save-steps", str(10**9), "--eval-examples", "64", *flags],
                            env)
    steady = MetricsLog(run_dir).read("train")[-1]  # the second half of the steps
    return {"tokens_per_s": steady["tokens_per_s"], "padding": steady["padding"], "seconds": measured.seconds,
            "peak_mb": steady["peak_memory_mb"], "rss_mb": measured.peak_rss_mb}


def train_seed(etl_dir: Path, out: Path, model: str, steps: int, batch_size: int, env: dict | None = None) -> dict:
    """The seed's Trainer setup in its own process (seed_train.py), same figures as train_ours."""
    from shardtune.models import is_fresh_only

    from .common import run_measured

    scratch = not is_fresh_only(model) and not Path(model).exists()
    shutil.rmtree(out, ignore_errors=True)
    measured = run_measured(["-m", "shardtune.benchmarks.seed_train", str(etl_dir), str(out), model,
                             "1" if scratch else "0", str(steps), str(batch_size)], env)
    result = json.loads((out / "result.json").read_text())
    return {"tokens_per_s": result["useful_tokens_per_s"], "padding": result["padding"], "seconds": measured.seconds,
            "peak_mb": result["peak_gpu_mb"] if result["peak_gpu_mb"] is not None else measured.peak_rss_mb,
            "rss_mb": measured.peak_rss_mb}


def bench_train(config: BenchTrainConfig) -> int:
    import torch

    from shardtune.console import log
    from shardtune.errors import UserError
    from shardtune.manifest import TokensManifest
    from shardtune.models import check_model

    from .common import device_name, print_table, run_measured, scratch_dir, synth_input

    cuda = torch.cuda.is_available()
    model = config.model or ("distilgpt2" if cuda else "tiny")
    steps = config.steps or (200 if cuda else 40)
    check_model(model)  # before the data is made
    batch_size, workdir = config.batch_size, scratch_dir(config.workdir)
    tokens, etl_dir = workdir / "tokens", workdir / "etl"
    if not (tokens / "manifest.json").exists():
        src = synth_input(workdir, config.lines, 0.0)
        run_measured(["-m", "shardtune.cli", "etl", str(src), "--out", str(etl_dir)])
        run_measured(["-m", "shardtune.cli", "tokenize", str(etl_dir), "--out", str(tokens)])
    examples = TokensManifest.read(tokens).splits["train"].examples
    if batch_size > examples:  # the seed's figures would count a batch it never had
        raise UserError(f"--batch-size {batch_size:,} is more than the {examples:,} training examples that "
                        f"--lines {config.lines:,} gave; raise --lines or lower --batch-size")
    log(f"bench train: shardtune train ({model}, {steps} steps of {batch_size}) ...")
    ours = train_ours(tokens, workdir / "run-shardtune", model, steps, batch_size)
    log("bench train: the seed's Trainer setup ...")
    seed = train_seed(etl_dir, workdir / "run-seed", model, steps, batch_size)
    memory = "peak_mb" if cuda else "rss_mb"
    rows = [["shardtune train", f"{ours['tokens_per_s']:,.0f}", f"{ours['padding']:.1%}", f"{ours[memory]:,.0f}"],
            ["seed (Trainer, padded to 256)", f"{seed['tokens_per_s']:,.0f}", f"{seed['padding']:.1%}",
             f"{seed[memory]:,.0f}"],
            ["ratio", f"{ours['tokens_per_s'] / seed['tokens_per_s']:.2f}x", "", f"{ours[memory] / seed[memory]:.2f}x"]]
    print_table(f"Training {model} at batch {batch_size} x up to 256 tokens, {steps} steps (second half timed), "
                f"{device_name()}", ["approach", "useful tokens/s", "padding",
                                     "peak GPU MB (max_memory_allocated)" if cuda else "peak RSS MB"], rows)
    return 0
