"""RUN_DIR/final: a Hugging Face model folder plus the tokenizer and how to prompt it
(shardtune.json, a RunInfo); with LoRA also RUN_DIR/adapter, the adapter alone (peft loads
it), while final/ has it merged in. Each folder is written under a temporary name and
renamed, so a kill mid-export leaves no half a model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from shardtune.files import commit_folder, tmp_path
from shardtune.manifest import RunInfo, TokensManifest
from shardtune.models import load_model
from shardtune.models.adapters import is_peft, merge_adapter, unwrap

from .config import TrainConfig


def export_model(model, tokenizer, run_dir: Path, config: TrainConfig, manifest: TokensManifest,
                 tokens_dir: Path) -> None:
    """Write RUN_DIR/final (and RUN_DIR/adapter with LoRA) from the trained `model`, with the
    `tokenizer` that made the token shards."""
    info = RunInfo(template=manifest.template, template_hash=manifest.template_hash, tokenizer=manifest.tokenizer,
                   max_length=config.max_length, train_config=config.to_dict(), tokens_dir=str(tokens_dir),
                   run_dir=str(run_dir.resolve()), vocab_size=manifest.vocab_size, eos_id=manifest.eos_id)
    if is_peft(model):
        _export(run_dir / "adapter", model.save_pretrained, tokenizer, info)
        model = _merged(model, run_dir, config, manifest)
    _export(run_dir / "final", unwrap(model).save_pretrained, tokenizer, info)


def _merged(model, run_dir: Path, config: TrainConfig, manifest: TokensManifest):
    """The trained adapter merged into a full-precision base, rebuilt as training built it."""
    if config.quantize == "none":
        return model.merge_and_unload()
    torch.manual_seed(config.seed)
    base = load_model(config.model, from_scratch=config.from_scratch, vocab_size=manifest.vocab_size,
                      eos_id=manifest.eos_id)
    return merge_adapter(base, run_dir / "adapter")


def _export(folder: Path, save, tokenizer, info: RunInfo) -> None:
    """Write `save(folder)`, the tokenizer and shardtune.json to a temporary folder, then rename;
    a failure (a full disk) removes the temporary folder."""
    tmp = tmp_path(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        info.write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_folder(tmp, folder)
