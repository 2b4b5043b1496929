"""`shardtune train`: a plain PyTorch loop over the memory-mapped token shards.

Read top to bottom: Trainer.__init__ builds everything from the token manifest and
the config; run() evaluates, then repeats train_step() while
should_continue_training(), logging, evaluating and checkpointing on schedule;
finish() writes RUN_DIR/final in Hugging Face format.
Under `torchrun --nproc_per_node N` the same command trains with DDP: every rank
reads its own share of the batches, rank 0 alone writes.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from shardtune.console import log, meter
from shardtune.errors import UserError
from shardtune.files import fsync_dir, write_json
from shardtune.manifest import RunInfo, TokensManifest
from shardtune.models import enable_activation_checkpointing, load_model
from shardtune.tokens.shards import TokenShards

from .checkpoint import TrainState, checkpoint_dirs, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import collate, epoch_batches
from .device import cap_gpu_memory, choose_precision, peak_memory_mb
from .loss import AnswerLoss, batch_loss, summed_loss
from .metrics import MetricsLog, describe


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * max(0.0, 1 - progress)


class Window:
    """Loss, tokens and time since the last log line."""

    def __init__(self) -> None:
        self.loss, self.steps, self.real, self.padded = 0.0, 0, 0, 0
        self.start = time.perf_counter()

    def add(self, step: dict) -> None:
        self.loss += 0.0 if step["skipped"] else step["loss"]
        self.steps += 1
        self.real += step["real_tokens"]
        self.padded += step["padded_tokens"]

    def padding(self) -> float:
        return self.padded / max(1, self.real + self.padded)

    def tokens_per_s(self, world: int) -> float:
        return self.real * world / max(time.perf_counter() - self.start, 1e-9)


class Trainer:
    def __init__(self, tokens_dir: Path, run_dir: Path, config: TrainConfig) -> None:
        self.config, self.run_dir, self.tokens_dir = config.check(), run_dir, tokens_dir
        self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.is_rank0 = self.rank == 0  # the one process that writes
        self.device = self._setup_device()
        self.manifest = TokensManifest.read(tokens_dir)
        self.train_data = TokenShards(self.manifest.shard_paths(tokens_dir, "train"))
        self.val_data = TokenShards(self.manifest.shard_paths(tokens_dir, "val"))
        if len(self.train_data) == 0:
            raise UserError(f"{tokens_dir} holds no training examples")
        self._check_run_dir()
        self.metrics = MetricsLog(run_dir)

        torch.manual_seed(config.seed)
        self.model = load_model(config.model, from_scratch=config.from_scratch,
                                vocab_size=self.manifest.vocab_size, eos_id=self.manifest.eos_id)
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
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, fused=self.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision.use_scaler)
        self.steps_per_epoch = len(self._batches(0)) // config.grad_accum
        if self.steps_per_epoch == 0:
            raise UserError(f"fewer training batches than --grad-accum {config.grad_accum}; lower it")
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self.state = TrainState(config=config.to_dict())
        if config.resume:
            self._resume()
        self._epoch_cache: tuple[int, list] | None = None

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
        if self.is_rank0:
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
        if self.is_rank0:
            self.metrics.truncate_after(self.state.step)
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
        window, total = Window(), Window()
        with meter("train", self.total_steps, "steps", ("tokens",)) as progress:
            progress.update(self.state.step)
            while self.should_continue_training():
                m = self.train_step()
                window.add(m)
                total.add(m)
                step, last = self.state.step, self.state.step == self.total_steps
                if step % c.log_steps == 0 or last:
                    self._record({"type": "train", "step": step, "epoch": self.state.epoch,
                                  "loss": window.loss / window.steps, "lr": m["lr"], "grad_norm": m["grad_norm"],
                                  "tokens_per_s": window.tokens_per_s(self.world), "padding": window.padding(),
                                  "peak_memory_mb": peak_memory_mb(self.device)})
                    window = Window()
                if step % c.eval_steps == 0 and not last:
                    self._record({"type": "eval", "step": step, **self.evaluate()})
                if step % c.save_steps == 0 and not last:
                    self._save()
                progress.update(step, tokens=total.real * self.world,
                                extra=f"loss {m['loss']:.3f}  mem {peak_memory_mb(self.device):,.0f} MB")
        final_eval = {"type": "eval", "step": self.state.step, **self.evaluate()}
        self._record(final_eval)
        self._save()
        self.finish()
        return {**final_eval, "steps": self.state.step, "padding": total.padding(),
                "peak_memory_mb": peak_memory_mb(self.device)}

    # -- outputs -----------------------------------------------------------------
    def _record(self, entry: dict) -> None:
        if self.is_rank0:
            self.metrics.append(entry)
            log(describe(entry))

    def _write_config(self) -> None:
        if self.is_rank0:
            write_json(self.run_dir / "config.json", {"train": self.config.to_dict(), "tokens": str(self.tokens_dir)})

    def _save(self) -> None:
        if self.is_rank0:
            self.state.scaler = self.scaler.state_dict() if self.scaler.is_enabled() else {}
            save_checkpoint(self.run_dir, self.model, self.optimizer, self.state, self.config.save_total_limit)
        if self.world > 1:
            torch.distributed.barrier()

    def finish(self) -> None:
        """RUN_DIR/final: a Hugging Face model folder plus the tokenizer and how to prompt it."""
        if not self.is_rank0:
            return
        from shardtune.tokens.tokenizer import load_tokenizer

        final, tmp = self.run_dir / "final", self.run_dir / "final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(self.manifest.tokenizer).save_pretrained(tmp)
        RunInfo(template=self.manifest.template, template_hash=self.manifest.template_hash,
                tokenizer=self.manifest.tokenizer, max_length=self.config.max_length,
                train_config=self.config.to_dict(), tokens_dir=str(self.tokens_dir),
                run_dir=str(self.run_dir.resolve())).write(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        fsync_dir(self.run_dir)

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_train(tokens_dir: Path, run_dir: Path, config: TrainConfig | None = None) -> dict:
    """Train; returns the final evaluation. CUDA running out of memory ends in one clear message."""
    config = config or TrainConfig()
    trainer = None
    try:
        trainer = Trainer(tokens_dir, run_dir, config)
        if trainer.is_rank0:
            log(f"train: {trainer.total_steps:,} steps of {config.batch_size} x {config.grad_accum} examples on "
                f"{trainer.device} ({trainer.precision.name}), {len(trainer.train_data):,} train / "
                f"{len(trainer.val_data):,} val examples; config: {config.to_dict()}")
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
