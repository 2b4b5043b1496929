"""`shardtune bench train`: this loop against the seed's Trainer setup, same model and tokens, one run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from rich.console import Console
from rich.table import Table

from shardtune.console import log
from shardtune.errors import UserError

from .etl_bench import machine, synth_input
from .measure import run_measured


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        cap = os.environ.get("SHARDTUNE_GPU_MEMORY_GB")
        return torch.cuda.get_device_name(0) + (f", capped at {cap} GB" if cap else "")
    return "CPU: " + machine()


def bench_train(lines: int, model: str, steps: int, batch_size: int, workdir: Path) -> int:
    import torch

    if steps < 4:
        raise UserError("--steps must be at least 4 (the second half is timed)")
    workdir.mkdir(parents=True, exist_ok=True)
    tokens, etl_dir = workdir / "tokens", workdir / "etl"
    if not (tokens / "manifest.json").exists():
        src = synth_input(workdir, lines, 0.0)
        run_measured(["-m", "shardtune.cli", "etl", str(src), "--out", str(etl_dir)])
        run_measured(["-m", "shardtune.cli", "tokenize", str(etl_dir), "--out", str(tokens)])
    scratch = model != "tiny" and not Path(model).exists()
    half = steps // 2
    run_dir = workdir / "run-shardtune"
    shutil.rmtree(run_dir, ignore_errors=True)
    log(f"bench train: shardtune train ({model}, {steps} steps of {batch_size}) ...")
    ours = run_measured(["-m", "shardtune.cli", "train", str(tokens), "--out", str(run_dir), "--model", model,
                         *(["--from-scratch"] if scratch else []), "--max-steps", str(steps),
                         "--batch-size", str(batch_size), "--log-steps", str(half), "--eval-steps", str(10**9),
                         "--save-steps", str(10**9), "--eval-examples", "64"])
    train_logs = [e for e in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                  if e["type"] == "train"]
    steady = train_logs[-1]  # the second half of the steps
    log("bench train: the seed's Trainer setup ...")
    seed_dir = workdir / "run-seed"
    shutil.rmtree(seed_dir, ignore_errors=True)
    seed = run_measured(["-m", "shardtune.benchmarks.seed_train", str(etl_dir), str(seed_dir), model,
                         "1" if scratch else "0", str(steps), str(batch_size)])
    seed_result = json.loads((seed_dir / "result.json").read_text())

    cuda = torch.cuda.is_available()
    mem_head = "peak GPU MB (max_memory_allocated)" if cuda else "peak RSS MB"
    ours_mem = steady["peak_memory_mb"] if cuda else ours.peak_rss_mb
    seed_mem = seed_result["peak_gpu_mb"] if cuda else seed.peak_rss_mb
    table = Table(title=f"Training {model} at batch {batch_size} x up to 256 tokens, {steps} steps "
                        f"(second half timed), {device_name()}")
    for col in ("approach", "useful tokens/s", "padding", mem_head):
        table.add_column(col, justify="left" if col == "approach" else "right")
    table.add_row("shardtune train", f"{steady['tokens_per_s']:,.0f}", f"{steady['padding']:.1%}", f"{ours_mem:,.0f}")
    table.add_row("seed (Trainer, padded to 256)", f"{seed_result['useful_tokens_per_s']:,.0f}",
                  f"{seed_result['padding']:.1%}", f"{seed_mem:,.0f}")
    table.add_row("ratio", f"{steady['tokens_per_s'] / seed_result['useful_tokens_per_s']:.2f}x", "",
                  f"{ours_mem / seed_mem:.2f}x")
    Console(width=140).print(table)
    return 0
