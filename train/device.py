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
from shardtune.errors import UserError, first_line


@dataclass(frozen=True)
class Processes:
    """This process's place among torchrun's: `rank` writes when it is 0."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0


def processes() -> Processes:
    """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them; one process when WORLD_SIZE is unset
    or 1. A RANK left in a shell without a WORLD_SIZE is then ignored: it once made a plain run
    train, skip every write (only rank 0 writes) and end with nothing, silently."""
    def number(name: str) -> int | None:
        raw = os.environ.get(name)
        if raw is None:
            return None
        if not (raw.strip().isascii() and raw.strip().isdecimal()):
            raise UserError(f"{name}={raw!r} is not a process number; unset it, or launch with torchrun, which sets it")
        return int(raw)

    world = number("WORLD_SIZE")
    if world is None or world == 1:
        return Processes()
    if world == 0:
        raise UserError("WORLD_SIZE=0 counts no process; unset it, or launch with torchrun, which sets it")
    rank, local = number("RANK") or 0, number("LOCAL_RANK") or 0
    if rank >= world:
        raise UserError(f"RANK={rank} is not below WORLD_SIZE={world}; launch with torchrun, which sets both")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise UserError(f"WORLD_SIZE={world} asks for a distributed run, but {' and '.join(missing)} is not set; "
                        "unset WORLD_SIZE, or launch with torchrun, which sets them all")
    return Processes(rank, world, local)


RENDEZVOUS_S = 300  # how long a rank waits for the others (torchrun starts them together)


def join_processes(world: int, backend: str) -> None:
    """torch.distributed.init_process_group, bounded and interruptible. It blocks in C++ until every
    rank has come, where Ctrl-C and SIGTERM are not seen: a WORLD_SIZE left in a shell once made a
    plain run wait without a word until killed. It runs on a thread the main one waits for, so a
    signal ends the run, and gives up after RENDEZVOUS_S (SHARDTUNE_RENDEZVOUS_S) with one line."""
    import datetime
    import threading

    raw = os.environ.get("SHARDTUNE_RENDEZVOUS_S", str(RENDEZVOUS_S))
    try:
        wait = float(raw)
        if not 0 < wait < 1e6:
            raise ValueError
    except ValueError:
        raise UserError(f"SHARDTUNE_RENDEZVOUS_S={raw!r} is not a number of seconds; give one such as 300") from None
    where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    log(f"train: waiting up to {wait:g} s for the {world} processes of WORLD_SIZE={world} at {where}")
    failed: list[BaseException] = []

    def join() -> None:
        try:
            torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=wait))
        except BaseException as e:  # raised in the main thread below
            failed.append(e)

    thread = threading.Thread(target=join, name="shardtune-rendezvous", daemon=True)
    thread.start()
    thread.join(wait + 30)  # the store gives up after `wait`; the margin is for its own clean-up
    if thread.is_alive() or failed:
        why = f" ({first_line(failed[0])[:160]})" if failed else ""
        raise UserError(f"the other processes of WORLD_SIZE={world} did not join at {where} within {wait:g} s{why}; "
                        "launch every rank (torchrun --nproc_per_node N starts them all), or unset WORLD_SIZE")


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
