"""Checkpoints: everything needed to continue a run exactly, written atomically.

    RUN_DIR/checkpoints/step-00000500/
        model.safetensors, config.json   weights (save_pretrained, safetensors)
        optimizer.pt                     AdamW state: tensors and numbers only
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
from shardtune.files import fsync_dir

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
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    fsync_dir(final.parent)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def load_checkpoint(path: Path, model, optimizer, device: torch.device) -> TrainState:
    from safetensors.torch import load_file

    try:
        weights = load_file(path / "model.safetensors", device=str(device))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or any(not k.endswith("lm_head.weight") for k in missing):  # lm_head is tied to the embeddings
            raise UserError(f"checkpoint {path} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})")
        if hasattr(model, "tie_weights"):
            model.tie_weights()
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
        rng = torch.load(path / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        return TrainState(**json.loads((path / "state.json").read_text()))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"cannot resume from {path}: {e}; delete it to resume from an older checkpoint") from None
