"""The device a run uses: its numeric precision, its memory cap and its peak memory.

Precision: bf16 where the GPU supports it (Ampere and newer), fp16 with a gradient
scaler on older GPUs such as the RTX 2060 (Turing has no bf16), fp32 on the CPU.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from shardtune.console import log
from shardtune.errors import UserError


@dataclass
class Precision:
    name: str  # bf16, fp16 or fp32
    autocast_dtype: torch.dtype | None
    use_scaler: bool


def choose_precision(device: torch.device, wanted: str = "auto") -> Precision:
    if device.type != "cuda":
        if wanted in ("bf16", "fp16"):
            log(f"train: {wanted} asked for, but there is no GPU; using fp32")
        return Precision("fp32", None, False)
    if wanted == "auto":
        wanted = "bf16" if torch.cuda.is_bf16_supported() and torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
    if wanted == "bf16":
        return Precision("bf16", torch.bfloat16, False)
    if wanted == "fp16":
        return Precision("fp16", torch.float16, True)
    return Precision("fp32", None, False)


def cap_gpu_memory(device: torch.device) -> None:
    """SHARDTUNE_GPU_MEMORY_GB=6 makes a big GPU behave like a 6 GB card (allocations past it fail);
    unset, empty or 0: no cap."""
    text = os.environ.get("SHARDTUNE_GPU_MEMORY_GB", "").strip()
    try:
        gb = float(text or 0)
    except ValueError:
        gb = math.nan
    if not 0 <= gb < math.inf:
        raise UserError(f"SHARDTUNE_GPU_MEMORY_GB must be a number of GB, e.g. 6 (got {text!r}); unset it for no cap")
    if gb > 0:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, gb * 2**30 / total), device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on a GPU; the process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except ImportError:  # pragma: no cover - Windows
        import psutil

        return psutil.Process().memory_info().peak_wset / 2**20
