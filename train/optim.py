"""The optimizer, over the trainable parameters only (with LoRA, the adapters): fused AdamW,
or bitsandbytes' 8-bit AdamW, whose two moments take 2 bytes a parameter instead of 8; and
the learning-rate schedule it follows (warmup, then linear or cosine decay)."""

from __future__ import annotations

import math

import torch

from shardtune.errors import UserError
from shardtune.models.adapters import bitsandbytes

from .config import TrainConfig


def make_optimizer(model, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if config.optim == "adamw":
        # fused (CPU and CUDA): one kernel for every parameter, and it takes a found_inf tensor,
        # so a non-finite step is skipped on the device instead of being checked on the host
        return torch.optim.AdamW(groups, lr=config.lr, fused=True)
    if config.optim == "paged_adamw8bit" and device.type != "cuda":
        raise UserError("--optim paged_adamw8bit pages its state between GPU and host memory, so it needs CUDA; "
                        "use --optim adamw8bit here")
    bnb = bitsandbytes(f"--optim {config.optim}", "--optim adamw")
    cls = bnb.optim.PagedAdamW8bit if config.optim == "paged_adamw8bit" else bnb.optim.AdamW8bit
    return cls(groups, lr=config.lr)


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer can skip a step from a device flag (fused AdamW's found_inf)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * max(0.0, 1 - progress)
