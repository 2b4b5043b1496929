"""What `shardtune train` refuses before its first step, each in one line: a run folder that
is not empty (or, with --resume, not a shardtune run of the same data and shape), a
--max-length that leaves nothing to learn, and a model that cannot read the token shards.

Each check runs before anything is written, so a refused run leaves the folder as it was.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from shardtune.console import log
from shardtune.errors import UserError
from shardtune.files import read_json
from shardtune.lock import LOCK
from shardtune.manifest import TokensManifest
from shardtune.models import check_max_length
from shardtune.tokens.shards import TokenShards

from .config import TrainConfig

# What a run folder may hold, and the options --resume must keep (the data position depends on them).
RUN_FILES = {"config.json", "metrics.jsonl", "checkpoints", "final", "adapter", "tensorboard"}
RESUME_FIELDS = ("model", "from_scratch", "max_length", "batch_size", "grad_accum", "loss_on", "seed",
                 "length_buckets", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "quantize", "optim",
                 # and the course of the optimizer: a resume at another rate would not be the run continued
                 "lr", "weight_decay", "warmup_steps", "schedule", "clip_grad", "precision")


def check_run_folder(run: Path, config: TrainConfig, manifest: TokensManifest, tokens_dir: Path) -> None:
    """A new run needs an empty folder; --resume needs a shardtune run of the same data and shape."""
    if run.exists() and not run.is_dir():
        raise UserError(f"{run} is a file; give a folder with --out")
    entries = {p.name for p in run.iterdir()} - {LOCK} if run.exists() else set()
    if not config.resume and entries:
        raise UserError(f"run folder {run} is not empty; use --resume to continue that run, or choose another --out")
    if config.resume and entries:
        _check_same_run(run, entries, config, manifest, tokens_dir)


def _check_same_run(run: Path, entries: set[str], config: TrainConfig, manifest: TokensManifest,
                    tokens_dir: Path) -> None:
    """--resume continues only a shardtune run (its files alone, nothing is deleted otherwise)
    whose data position means the same: same token folder, batch, seed and model."""
    foreign = sorted(e for e in entries if e.removesuffix(".tmp") not in RUN_FILES)  # .tmp: a kill mid-write
    linked = sorted(e for e in entries if (run / e).is_symlink())
    if linked:  # a resume rewrites metrics.jsonl and config.json: through a link, into someone's file
        raise UserError(f"{run / linked[0]} is a link; a run's own files are files: move it away to resume")
    saved = read_json(run / "config.json", "run config") if (run / "config.json").exists() else None
    if foreign or not isinstance(saved, dict) or not isinstance(saved.get("train"), dict):
        what = f"it holds {', '.join(foreign[:3])}" if foreign else "it has no shardtune config.json"
        raise UserError(f"{run} is not a shardtune run ({what}); give the folder of the run to resume")
    mine = config.to_dict()
    differ = [f"--{k.replace('_', '-')} {saved['train'].get(k)!r} -> {mine[k]!r}" for k in RESUME_FIELDS
              if saved["train"].get(k) != mine[k]]
    if saved.get("tokens_fingerprint") != manifest.fingerprint:
        differ.append(f"token folder {saved.get('tokens')} -> {tokens_dir}")
    if differ:
        raise UserError(f"--resume would continue {run} with other settings, and the data position or the "
                        f"optimizer's course depends on them: {'; '.join(differ)}; resume with the run's own "
                        "(--max-steps and --epochs may change), or start a new --out")
    for final in ("final", "adapter"):
        if (run / final).exists() and not (run / final / "shardtune.json").exists():
            raise UserError(f"{run / final} holds files shardtune did not write; move them before resuming")


# What a resume from the command line takes from the run when left out, beyond RESUME_FIELDS: how long
# it runs (the schedule's length) and its habits; given, they may change.
INHERITED_FIELDS = RESUME_FIELDS + ("max_steps", "epochs", "eval_steps", "eval_examples", "save_steps",
                                    "save_total_limit", "log_steps", "max_bad_steps", "grad_checkpointing", "compile")


def resume_settings(run: Path, config: TrainConfig) -> TrainConfig:
    """For `train --resume` from the command line: the options that must stay as the run had them,
    and that the user did not set, taken from the run's config.json (a resume is the run continued;
    nanoGPT's resume likewise rebuilds from what the run saved). A folder that is not a readable run
    is left to check_run_folder to refuse."""
    try:
        saved = read_json(run / "config.json", "run config")["train"]
    except (UserError, OSError, KeyError, TypeError):
        return config
    given = getattr(config, "given", frozenset())
    taken = {k: saved[k] for k in INHERITED_FIELDS if k not in given and k in saved and saved[k] != getattr(config, k)}
    if not taken:
        return config
    log("train: --resume continues with the run's own " + ", ".join(f"--{k.replace('_', '-')} {v}"
                                                                     for k, v in taken.items()))
    return dataclasses.replace(config, **taken).check()


def check_checkpoint_config(path: Path, saved: dict, config: TrainConfig) -> None:
    """A checkpoint's own record of its run's settings (state.json) must agree with this run's:
    a checkpoint copied from another run would otherwise resume at another run's position."""
    mine = config.to_dict()
    differ = [f"{k} {saved[k]!r} (this run: {mine[k]!r})" for k in RESUME_FIELDS if k in saved and saved[k] != mine[k]]
    if differ:
        raise UserError(f"cannot resume from {path}: it was written by a run of other settings "
                        f"({'; '.join(differ[:3])}); delete that checkpoint to resume from an older one")


def check_something_to_learn(config: TrainConfig, train: TokenShards, val: TokenShards) -> None:
    """Refuse a --max-length that cuts every example before its answer (nothing to learn, a
    validation loss of 0/0). Counts the predicted positions as `collate` makes them."""
    for name, data in (("training", train), ("validation", val)):
        if not len(data):
            continue
        kept = np.minimum(data.lengths, config.max_length)
        first = np.minimum(data.prompt_lengths(), kept) if config.loss_on != "prompt+answer" else 0
        if int(np.maximum(kept - np.maximum(first, 1), 0).sum()) == 0:
            raise UserError(f"--max-length {config.max_length} leaves no token to learn from in the {name} examples "
                            f"(their prompts fill it); raise --max-length")


def check_model_reads_tokens(model, config: TrainConfig, manifest: TokensManifest, train: TokenShards,
                             val: TokenShards) -> None:
    """The model reads --max-length positions and knows every id in the shards."""
    check_max_length(config.model, model.config, config.max_length)
    model_vocab = model.get_input_embeddings().num_embeddings
    if model_vocab < manifest.vocab_size:
        raise UserError(f"the token shards come from {manifest.tokenizer!r} ({manifest.vocab_size:,} "
                        f"tokens) but model {config.model!r} knows {model_vocab:,}; tokenize with the "
                        "model's own tokenizer")
    largest = max(train.max_id(), val.max_id())  # an id past the embedding: a GPU assert
    if largest >= model_vocab:
        raise UserError(f"the token shards hold id {largest:,}, past the {model_vocab:,} ids of model "
                        f"{config.model!r}; the shards do not match their manifest: re-run `shardtune tokenize`")


def check_tokenizer_unchanged(tokenizer, manifest: TokensManifest, tokens_dir: Path, model: str) -> None:
    """The tokenizer that final/ will carry makes the ids the shards hold: a tokenizer folder
    edited or replaced since `tokenize` would ship beside a model trained on other ids. And a
    model folder that carries a tokenizer of its own was taught that one's ids: shards of
    another would be read as other words."""
    from shardtune.hub import is_local
    from shardtune.tokens.tokenizer import TOKENIZER_FILES, eos_id, load_tokenizer, tokenizer_digest

    if (manifest.tokenizer_digest and tokenizer_digest(tokenizer) != manifest.tokenizer_digest) or \
            eos_id(tokenizer) != manifest.eos_id:
        raise UserError(f"tokenizer {manifest.tokenizer!r} has changed since `shardtune tokenize` made {tokens_dir} "
                        "(it would give other ids, or another end-of-sequence id), or the manifest was edited; "
                        "re-run `shardtune tokenize --force`, or restore the tokenizer")
    folder = Path(model).expanduser()
    if not manifest.tokenizer_digest or not is_local(model) or not folder.is_dir() or \
            Path(manifest.tokenizer).expanduser().resolve() == folder.resolve() or \
            not any((folder / f).exists() for f in TOKENIZER_FILES):
        return
    if tokenizer_digest(load_tokenizer(model, say_fallback=False)) != manifest.tokenizer_digest:
        raise UserError(f"model {model} carries another tokenizer than {tokens_dir} was made with "
                        f"({manifest.tokenizer!r}): its ids would mean other words to it; tokenize with "
                        f"--tokenizer {model}")
