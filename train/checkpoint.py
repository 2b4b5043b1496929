"""Checkpoints: everything needed to continue a run exactly, written atomically.

    RUN_DIR/checkpoints/step-00000500/
        model.safetensors, config.json   weights (save_pretrained, safetensors); with LoRA the
          or adapter_model.safetensors,  adapter alone, the base being rebuilt from the config
             adapter_config.json
        optimizer.pt                     optimizer state (trainable parameters): tensors and numbers only
        rng.pt                           torch CPU (and CUDA) generator states
        state.json                       step, data position, scaler, bad-step count, the config

A checkpoint is written to `step-N.tmp/` and renamed when complete, so a kill at
any moment leaves only whole checkpoints. Loading uses torch.load(weights_only=True):
nothing in a checkpoint is ever unpickled as arbitrary objects.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from shardtune.errors import UserError
from shardtune.files import commit_folder, read_small_file, tmp_path
from shardtune.manifest import from_json
from shardtune.models.adapters import load_weights, save_weights

PREFIX = "step-"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed
    bad_steps: int = 0
    scaler: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and not p.name.endswith(".tmp"))


def save_checkpoint(run_dir: Path, model, optimizer, state: TrainState, keep: int) -> Path:
    final = run_dir / "checkpoints" / f"{PREFIX}{state.step:08d}"
    tmp = tmp_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_weights(model, tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except BaseException as e:  # a full disk, a kill: no half checkpoint is left, the older ones stay
        shutil.rmtree(tmp, ignore_errors=True)
        # torch.save and safetensors report a failed write as RuntimeError or SafetensorError
        write_failed = isinstance(e, OSError) or type(e).__name__ in ("RuntimeError", "SafetensorError")
        if not write_failed:
            raise
        why = e.strerror if isinstance(e, OSError) and e.strerror else \
            "no space left on the device" if shutil.disk_usage(run_dir).free < 256 << 20 else str(e).splitlines()[0]
        last = checkpoint_dirs(run_dir)
        raise UserError(f"cannot write checkpoint {final.name}: {why}; the last whole checkpoint is "
                        f"{last[-1] if last else 'none'}") from None
    commit_folder(tmp, final)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def _read(path: Path, load, what: str):
    """One checkpoint file through `load`; a damaged or foreign file is a one-line UserError."""
    try:
        return load(path)
    except FileNotFoundError:
        raise UserError(f"cannot resume from {path.parent}: {path.name} is missing; delete that checkpoint "
                        "to resume from an older one") from None
    except Exception:  # a damaged file can make a loader raise almost anything (struct.error, EOFError, ...)
        raise UserError(f"cannot resume from {path.parent}: {path.name} is not a readable {what} (damaged, or "
                        "not written by shardtune); delete that checkpoint to resume from an older one") from None


# The state tensors that hold one value per parameter value (AdamW's moments; bitsandbytes'
# 8-bit ones): a fused kernel given one of another shape reads past its end (a segfault).
MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "state1", "state2")


def _check_moments(saved: dict, optimizer, stepped: bool) -> None:
    """Each saved moment has its parameter's shape, and there are moments at all once steps were
    taken (torch would load an emptied state and silently restart them from zero)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = saved["state"]
    if not isinstance(state, dict) or (not state and stepped):
        raise ValueError("it holds no moments")
    for index, entry in state.items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entry, dict):
            raise ValueError(f"a state for parameter {index!r} of {len(params)}")
        for name in MOMENTS:
            value = entry.get(name)
            if value is not None and (not isinstance(value, torch.Tensor) or value.shape != params[index].shape):
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"{name} of parameter {index} is {shape}, the parameter {tuple(params[index].shape)}")


def load_checkpoint(path: Path, model, optimizer, device: torch.device) -> TrainState:
    load_weights(model, path, _read)
    # weights_only: tensors, numbers and containers only; nothing is unpickled as code
    optim_state = _read(path / "optimizer.pt", lambda p: torch.load(p, map_location=device, weights_only=True),
                        "optimizer state")
    try:
        named = path.name.removeprefix(PREFIX)
        _check_moments(optim_state, optimizer, stepped=named.isascii() and named.isdecimal() and int(named) > 0)
        optimizer.load_state_dict(optim_state)
    except (ValueError, KeyError, RuntimeError, TypeError, AttributeError) as e:
        raise UserError(f"cannot resume from {path}: its optimizer state does not fit this model ({e}); delete "
                        "that checkpoint to resume from an older one") from None
    rng = _read(path / "rng.pt", lambda p: torch.load(p, weights_only=True), "random state")
    state = _read(path / "state.json", lambda p: json.loads(read_small_file(p, "state file")), "state file")
    try:
        state = from_json(TrainState, state)
        if min(state.step, state.epoch, state.batch_in_epoch, state.bad_steps) < 0:
            raise TypeError("a negative position")
        # the folder is named for its step when it is written: a state.json edited since says otherwise
        named = path.name.removeprefix(PREFIX)
        if (named.isascii() and named.isdecimal() and int(named) != state.step) or state.bad_steps > state.step:
            raise TypeError("a position that is not the checkpoint's")
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        return state
    except (TypeError, KeyError, RuntimeError):
        raise UserError(f"cannot resume from {path}: rng.pt or state.json is not shardtune's; delete that "
                        "checkpoint to resume from an older one") from None
