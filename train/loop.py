"""`shardtune train`: a plain PyTorch loop over the memory-mapped token shards.

Read top to bottom: Trainer.__init__ builds everything from the token manifest and
the config; run() evaluates, then repeats train_step() while
should_continue_training(), evaluating, logging and checkpointing on schedule;
finish() writes RUN_DIR/final in Hugging Face format.
Under `torchrun --nproc_per_node N` the same command trains with DDP: every rank
reads its own share of the batches, rank 0 alone writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import psutil
import torch

from shardtune.console import log, meter
from shardtune.errors import UserError
from shardtune.files import fsync_dir, write_json
from shardtune.manifest import RunInfo, TokensManifest

from .checkpoint import TrainState, checkpoint_dirs, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import collate, epoch_batches
from .model import AnswerLoss, batch_loss, choose_precision, enable_activation_checkpointing, load_model, summed_loss
from .tokens import TokenShards


def cap_gpu_memory(device: torch.device) -> None:
    """SHARDTUNE_GPU_MEMORY_GB=6 makes a big GPU behave like a 6 GB card (allocations past it fail)."""
    gb = float(os.environ.get("SHARDTUNE_GPU_MEMORY_GB", 0) or 0)
    if gb > 0:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, gb * 2**30 / total), device)


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * max(0.0, 1 - progress)


class Trainer:
    def __init__(self, tokens_dir: Path, run_dir: Path, config: TrainConfig) -> None:
        config.check()
        self.config, self.run_dir, self.tokens_dir = config, run_dir, tokens_dir
        self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.device = self._setup_device()
        self.main = self.rank == 0
        self.manifest = TokensManifest.read(tokens_dir)
        self.train_data = TokenShards(self.manifest.shard_paths(tokens_dir, "train"))
        self.val_data = TokenShards(self.manifest.shard_paths(tokens_dir, "val"))
        if len(self.train_data) == 0:
            raise UserError(f"{tokens_dir} holds no training examples")
        self._check_run_dir()

        torch.manual_seed(config.seed)
        self.model = load_model(config.model, config.from_scratch, self.manifest.vocab_size, self.manifest.eos_id)
        self._check_vocab()
        if config.grad_checkpointing:
            enable_activation_checkpointing(self.model)
        self.model.to(self.device).train()
        self.precision = choose_precision(self.device, config.precision)
        if self.device.type == "cuda" and torch.cuda.get_device_capability(self.device)[0] >= 8:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.loss_fn = AnswerLoss(self.model)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.loss_fn = torch.nn.parallel.DistributedDataParallel(self.loss_fn, device_ids=ids)
        if config.compile:
            self.loss_fn = torch.compile(self.loss_fn)
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, fused=self.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision.use_scaler)
        self.steps_per_epoch = len(self._batches(0)) // config.grad_accum
        if self.steps_per_epoch == 0:
            raise UserError(f"fewer training batches than --grad-accum {config.grad_accum}; lower it")
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self.state = TrainState(config=asdict(config))
        if config.resume:
            self._resume()
        self._epoch_cache: tuple[int, list] | None = None
        self.metrics_path = run_dir / "metrics.jsonl"

    # -- setup -------------------------------------------------------------------
    def _setup_device(self) -> torch.device:
        cuda = torch.cuda.is_available()
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
            cap_gpu_memory(device)
            return device
        return torch.device("cpu")

    def _check_run_dir(self) -> None:
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise UserError(f"{self.run_dir} is a file; give a folder with --out")
        if not self.config.resume and self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise UserError(f"run folder {self.run_dir} is not empty; use --resume to continue that run, "
                            "or choose another --out")
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def _check_vocab(self) -> None:
        model_vocab = self.model.get_input_embeddings().num_embeddings
        if model_vocab < self.manifest.vocab_size:
            raise UserError(f"the token shards come from {self.manifest.tokenizer!r} ({self.manifest.vocab_size:,} "
                            f"tokens) but model {self.config.model!r} knows {model_vocab:,}; tokenize with the "
                            "model's own tokenizer")

    def _resume(self) -> None:
        found = checkpoint_dirs(self.run_dir)
        if not found:
            log(f"train: no checkpoint in {self.run_dir} yet; starting from the beginning")
            return
        self.state = load_checkpoint(found[-1], self.model, self.optimizer, self.device)
        if self.state.scaler:
            self.scaler.load_state_dict(self.state.scaler)
        if self.main:  # forget what the interrupted run logged after its last checkpoint
            kept = [line for line in _read_lines(self.run_dir / "metrics.jsonl")
                    if json.loads(line)["step"] <= self.state.step]
            with open(self.run_dir / "metrics.jsonl", "w") as f:
                f.writelines(kept)
        log(f"train: resumed from {found[-1].name} (step {self.state.step:,} of {self.total_steps:,})")

    # -- data ----------------------------------------------------------------------
    def _batches(self, epoch: int) -> list[np.ndarray]:
        return epoch_batches(self.train_data.lengths, self.config.batch_size, self.config.seed, epoch,
                             rank=self.rank, world=self.world)

    def _next_micro_batches(self):
        """The grad_accum micro-batches of the next step, advancing the data position."""
        out = []
        while len(out) < self.config.grad_accum:
            if self._epoch_cache is None or self._epoch_cache[0] != self.state.epoch:
                self._epoch_cache = (self.state.epoch, self._batches(self.state.epoch))
            batches = self._epoch_cache[1]
            usable = len(batches) - len(batches) % self.config.grad_accum
            if self.state.batch_in_epoch >= usable:
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                continue
            out.append(self._collate(self.train_data, batches[self.state.batch_in_epoch]))
            self.state.batch_in_epoch += 1
        return out

    def _collate(self, data: TokenShards, indices):
        gpu = self.device.type == "cuda"
        multiple = self.config.pad_multiple or (16 if gpu else 1)
        return collate(data, indices, self.config.max_length, self.config.loss_on, self.manifest.eos_id,
                       pad_multiple=multiple, rows_multiple=256 if gpu else 1)

    def _autocast(self):
        if self.precision.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision.autocast_dtype)

    def _forward(self, batch):
        with self._autocast():
            return batch_loss(self.loss_fn, batch.to(self.device))

    # -- the loop ----------------------------------------------------------------
    def should_continue_training(self) -> bool:
        return self.state.step < self.total_steps

    def train_step(self) -> dict:
        micro = self._next_micro_batches()
        lr = lr_at(self.state.step, self.total_steps, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        predicted = sum(b.predicted for b in micro)
        total_loss = torch.zeros((), device=self.device)
        for i, batch in enumerate(micro):
            sync = i == len(micro) - 1 or self.world == 1
            ctx = contextlib.nullcontext() if sync or not hasattr(self.loss_fn, "no_sync") else self.loss_fn.no_sync()
            with ctx:
                loss = self._forward(batch) / max(predicted, 1)
                self.scaler.scale(loss).backward()
            total_loss += loss.detach()
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
        total_loss, grad_norm = torch.stack([total_loss, norm.to(total_loss)]).tolist()  # the step's one sync
        finite = math.isfinite(total_loss)
        if finite:
            self.scaler.step(self.optimizer)  # the fp16 scaler itself skips steps with inf/nan gradients
            self.state.bad_steps = 0
        else:
            self.state.bad_steps += 1
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        if self.state.bad_steps >= self.config.max_bad_steps:
            last = checkpoint_dirs(self.run_dir)
            raise UserError(f"the loss was not finite for {self.state.bad_steps} steps in a row; stopped. "
                            f"Last good checkpoint: {last[-1] if last else 'none'}. Try a lower --lr or --precision fp32")
        return {"loss": total_loss, "lr": lr, "grad_norm": grad_norm, "skipped": not finite,
                "real_tokens": sum(b.real_tokens for b in micro), "padded_tokens": sum(b.padded_tokens for b in micro)}

    def evaluate(self) -> dict:
        self.model.eval()
        n = len(self.val_data) if not self.config.eval_examples else min(len(self.val_data), self.config.eval_examples)
        order = epoch_batches(self.val_data.lengths[:n], self.config.batch_size, 0, 0, shuffle=False,
                              rank=self.rank, world=self.world)
        loss, tokens = summed_loss(self._forward, (self._collate(self.val_data, idx) for idx in order))
        if self.world > 1:
            t = torch.tensor([loss, tokens], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(t)
            loss, tokens = float(t[0]), float(t[1])
        self.model.train()
        mean = loss / tokens if tokens else float("nan")
        return {"val_loss": mean, "val_perplexity": math.exp(min(mean, 50)), "val_tokens": int(tokens)}

    def run(self) -> dict:
        c = self.config
        self._write_config()
        if self.state.step == 0:
            self._record({"type": "eval", "step": 0, **self.evaluate()})
        window = {"loss": 0.0, "steps": 0, "real": 0, "padded": 0, "start": time.perf_counter()}
        totals = {"real": 0, "padded": 0}
        with meter("train", self.total_steps, "steps", ("tokens",)) as progress:
            progress.update(self.state.step)
            while self.should_continue_training():
                m = self.train_step()
                for k, src in (("real", "real_tokens"), ("padded", "padded_tokens")):
                    window[k] += m[src]
                    totals[k] += m[src]
                window["loss"] += m["loss"] if not m["skipped"] else 0.0
                window["steps"] += 1
                step = self.state.step
                if step % c.log_steps == 0 or step == self.total_steps:
                    elapsed = time.perf_counter() - window["start"]
                    self._record({"type": "train", "step": step, "epoch": self.state.epoch,
                                  "loss": window["loss"] / window["steps"], "lr": m["lr"], "grad_norm": m["grad_norm"],
                                  "tokens_per_s": window["real"] * self.world / elapsed,
                                  "padding": window["padded"] / max(1, window["real"] + window["padded"]),
                                  "peak_memory_mb": self._peak_memory_mb()})
                    window = {"loss": 0.0, "steps": 0, "real": 0, "padded": 0, "start": time.perf_counter()}
                if step % c.eval_steps == 0 and step != self.total_steps:
                    self._record({"type": "eval", "step": step, **self.evaluate()})
                if step % c.save_steps == 0 and step != self.total_steps:
                    self._save()
                progress.update(step, tokens=totals["real"] * self.world,
                                extra=f"loss {m['loss']:.3f}  mem {self._peak_memory_mb():,.0f} MB")
        final_eval = {"type": "eval", "step": self.state.step, **self.evaluate()}
        self._record(final_eval)
        self._save()
        self.finish()
        padding = totals["padded"] / max(1, totals["real"] + totals["padded"])
        return {**final_eval, "steps": self.state.step, "padding": padding, "peak_memory_mb": self._peak_memory_mb()}

    # -- outputs -----------------------------------------------------------------
    def _peak_memory_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return psutil.Process().memory_info().rss / 2**20

    def _record(self, entry: dict) -> None:
        if not self.main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        if entry["type"] == "eval":
            log(f"step {entry['step']:>6}: val loss {entry['val_loss']:.4f}, perplexity {entry['val_perplexity']:.2f}")
        else:
            log(f"step {entry['step']:>6}: loss {entry['loss']:.4f}, lr {entry['lr']:.2e}, "
                f"{entry['tokens_per_s']:,.0f} tokens/s, padding {entry['padding']:.1%}, "
                f"grad norm {entry['grad_norm']:.2f}, peak memory {entry['peak_memory_mb']:,.0f} MB")

    def _write_config(self) -> None:
        if self.main:
            write_json(self.run_dir / "config.json", {"train": asdict(self.config), "tokens": str(self.tokens_dir)})

    def _save(self) -> None:
        if self.main:
            self.state.scaler = self.scaler.state_dict() if self.scaler.is_enabled() else {}
            save_checkpoint(self.run_dir, self.model, self.optimizer, self.state, self.config.save_total_limit)
        if self.world > 1:
            torch.distributed.barrier()

    def finish(self) -> None:
        """RUN_DIR/final: a Hugging Face model folder plus the tokenizer and how to prompt it."""
        if not self.main:
            return
        from .tokenizer import load_tokenizer

        final, tmp = self.run_dir / "final", self.run_dir / "final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(self.manifest.tokenizer).save_pretrained(tmp)
        RunInfo(template=self.manifest.template, template_hash=self.manifest.template_hash,
                tokenizer=self.manifest.tokenizer, max_length=self.config.max_length,
                train_config=asdict(self.config), tokens_dir=str(self.tokens_dir)).write(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        fsync_dir(self.run_dir)

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True) if path.exists() else []


def run_train(tokens_dir: Path, run_dir: Path, config: TrainConfig | None = None) -> dict:
    """Train; returns the final evaluation. CUDA running out of memory ends in one clear message."""
    config = config or TrainConfig()
    trainer = None
    try:
        trainer = Trainer(tokens_dir, run_dir, config)
        if trainer.main:
            log(f"train: {trainer.total_steps:,} steps of {config.batch_size} x {config.grad_accum} examples on "
                f"{trainer.device} ({trainer.precision.name}), {len(trainer.train_data):,} train / "
                f"{len(trainer.val_data):,} val examples; config: {asdict(config)}")
        return trainer.run()
    except torch.cuda.OutOfMemoryError:
        used = torch.cuda.memory_allocated() / 2**30
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        raise UserError(f"CUDA ran out of memory ({used:.1f} GiB in use of {total:.1f} GiB). Lower the memory: "
                        f"--batch-size {max(1, config.batch_size // 2)} --grad-accum {config.grad_accum * 2} "
                        f"(same effective batch), --grad-checkpointing, or a shorter --max-length") from None
    finally:
        if trainer is not None:
            trainer.close()
