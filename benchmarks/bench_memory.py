"""`shardtune bench memory`: peak GPU memory of a training step, estimated without a GPU
(train/memory.py: fake tensors, every allocation counted in CUDA allocator blocks)."""

from __future__ import annotations

from dataclasses import dataclass

from shardtune.options import Config, add_command, option


@dataclass
class BenchMemoryConfig(Config):
    SECTION = "bench.memory"

    model: str = option("distilgpt2", "a preset shape", metavar="NAME")
    batch_size: int = option(16, "examples per step (the seed's 16)", min=1)
    max_length: int = option(256, "tokens per example, every row full (the seed's 256)", min=2)


def add_parser(sub) -> None:
    add_command(sub, "memory", BenchMemoryConfig, run, help="estimate a training step's peak GPU memory, no GPU needed",
                description="Run two training steps of this loop and of the seed's setup with fake tensors "
                "(shapes only, no arithmetic) and count every allocation, as "
                "torch.cuda.max_memory_allocated would: the worst case, every row at --max-length. "
                "Answers 'will it fit my card?' on any machine; benchmarks/RESULTS.md compares it with "
                "measured figures.")


def run(args, config) -> int:
    return bench_memory(config)


def bench_memory(config: BenchMemoryConfig) -> int:
    import torch

    from shardtune.errors import UserError
    from shardtune.hub import model_key
    from shardtune.models import FAMILIES, preset_family
    from shardtune.train.memory import estimate_peak_mb, shardtune_step

    from .common import print_table
    from .seed_train import seed_step

    model, batch, length = config.model, config.batch_size, config.max_length
    family = preset_family(model)
    if family is None:
        known = ", ".join(p for f in FAMILIES for p in f.presets)
        raise UserError(f"bench memory builds these shapes: {known}; not {model!r}")
    positions = family.presets[model_key(model)]["n_positions"]
    if length > positions:
        raise UserError(f"--max-length must be from 2 to {positions:,} (the positions {model} has)")
    rows = [
        ("shardtune train (bf16; fp16 on Turing)", estimate_peak_mb(
            shardtune_step, model, True, batch, length, torch.bfloat16)),
        ("shardtune train --grad-checkpointing", estimate_peak_mb(
            shardtune_step, model, True, batch, length, torch.bfloat16, True)),
        ("seed (Trainer, fp16, padded to 256)", estimate_peak_mb(
            seed_step, model, False, batch, length, torch.float16)),
    ]
    print_table(f"Estimated peak GPU memory (max_memory_allocated) of a training step: {model}, "
                f"batch {batch} x {length}, every row full, AdamW", ["approach", "estimated peak MB", "vs seed"],
                [[name, f"{mb:,.0f}", f"{mb / rows[-1][1]:.2f}x"] for name, mb in rows])
    return 0
