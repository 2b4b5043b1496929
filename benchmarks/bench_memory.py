"""`shardtune bench memory`: peak GPU memory of a training step, estimated without a GPU
(train/memory.py and train/plan.py: fake tensors, every allocation counted in CUDA
allocator blocks), for this loop's ways to train and for the seed's setup."""

from __future__ import annotations

from dataclasses import dataclass

from shardtune.options import Config, add_command, option
from shardtune.train.config import PLAN_MAX_LENGTH


@dataclass
class BenchMemoryConfig(Config):
    SECTION = "bench.memory"

    model: str = option("distilgpt2", "a preset, or a folder holding config.json", metavar="NAME")
    batch_size: int = option(16, "examples per step (the seed's 16)", min=1, max=4096)
    max_length: int = option(256, "tokens per example, every row full (the seed's 256)", min=2, max=PLAN_MAX_LENGTH)


def add_parser(sub) -> None:
    add_command(sub, "memory", BenchMemoryConfig, run, help="estimate a training step's peak GPU memory, no GPU needed",
                description="Run two training steps of each way to train (full fine-tuning, 8-bit AdamW, LoRA, "
                "QLoRA; with and without checkpointing) and of the seed's setup with fake tensors (shapes "
                "only, no arithmetic) and count every allocation, as torch.cuda.max_memory_allocated would: the "
                "worst case, every row at --max-length. Answers 'will it fit my card?' on any machine; "
                "benchmarks/RESULTS.md compares it with measured figures.")


def run(args, config) -> int:
    return bench_memory(config)


def bench_memory(config: BenchMemoryConfig) -> int:
    import torch

    from shardtune.errors import UserError
    from shardtune.train.memory import estimate_peak_mb, shardtune_step
    from shardtune.train.plan import measure, model_config

    from .common import print_table
    from .seed_train import seed_step

    model, batch, length = config.model, config.batch_size, config.max_length
    hf = model_config(model)
    positions = getattr(hf, "n_positions", None) or getattr(hf, "max_position_embeddings", None) or length
    if length > positions:
        raise UserError(f"--max-length must be from 2 to {positions:,} (the positions {model} has)")
    rows = [("seed (Trainer, fp16, padded to 256)", estimate_peak_mb(seed_step, model, False, batch, length,
                                                                     torch.float16)),
            ("this loop, full fine-tuning (bf16 autocast)", estimate_peak_mb(shardtune_step, model, True, batch, length,
                                                                            torch.bfloat16)),
            ("this loop, full, --grad-checkpointing", estimate_peak_mb(shardtune_step, model, True, batch, length,
                                                                      torch.bfloat16, True))]
    for technique, label in (("full-8bit", "--optim adamw8bit"), ("lora", "--lora-r 16"),
                             ("qlora", "--lora-r 16 --quantize nf4")):
        for checkpointing in (False, True):
            mb = measure(model, technique, checkpointing, batch, length).peak_bytes / 2**20
            rows.append((f"this loop, {label}" + (", --grad-checkpointing" if checkpointing else ""), mb))
    print_table(f"Estimated peak GPU memory (max_memory_allocated) of a training step: {model}, "
                f"batch {batch} x {length}, every row full", ["approach", "estimated peak MB", "vs seed"],
                [[name, f"{mb:,.0f}", f"{mb / rows[0][1]:.2f}x"] for name, mb in rows])
    return 0
