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
from shardtune.files import check_outside, commit_folder, read_json, tmp_path, write_json
from shardtune.lock import LOCK, locked
from shardtune.manifest import RunInfo, TokensManifest
from shardtune.models import enable_activation_checkpointing, load_model, require_name
from shardtune.models.adapters import add_lora, is_peft, merge_adapter, quantize_nf4, unwrap
from shardtune.tokens.shards import TokenShards

from .checkpoint import TrainState, checkpoint_dirs, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import Prefetcher, collate, epoch_batches, length_buckets
from .device import cap_gpu_memory, choose_precision, peak_memory_mb
from .loss import AnswerLoss, batch_loss, summed_loss
from .metrics import MetricsLog, describe
from .optim import make_optimizer, skips_on_device


# What a run folder may hold, and the options --resume must keep (the data position depends on them).
RUN_FILES = {"config.json", "metrics.jsonl", "checkpoints", "final", "adapter", "tensorboard"}
RESUME_FIELDS = ("model", "from_scratch", "max_length", "batch_size", "grad_accum", "loss_on", "seed",
                 "length_buckets", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "quantize", "optim")


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * max(0.0, 1 - progress)


class Counters:
    """What the steps since the last log line add up to. The loss, the gradient norm and the
    non-finite count stay on the device, so that no step waits for the GPU; they are read
    back once per log line (and before an evaluation or a checkpoint)."""

    def __init__(self, device: torch.device, bad_run: int = 0) -> None:
        zero = lambda: torch.zeros((), device=device)  # noqa: E731
        self.loss, self.skipped, self.grad_norm = zero(), zero(), zero()
        self.bad_run = zero() + bad_run  # non-finite steps in a row, across log lines
        self.bad_max = self.bad_run.clone()  # the longest such run since the last read
        self.steps = self.real = self.padded = 0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, bad: torch.Tensor, real: int, padded: int) -> None:
        self.loss += torch.where(bad, 0.0, loss)
        self.skipped += bad
        self.bad_run = (self.bad_run + 1) * bad
        self.bad_max = torch.maximum(self.bad_max, self.bad_run)
        self.grad_norm = grad_norm
        self.steps, self.real, self.padded = self.steps + 1, self.real + real, self.padded + padded

    def read(self, world: int) -> dict:
        """The window's figures: the one read-back from the device, then a fresh window."""
        loss, skipped, grad_norm, bad_run, bad_max = torch.stack(
            [self.loss, self.skipped, self.grad_norm, self.bad_run, self.bad_max]).tolist()
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out = {"loss": loss / max(1, self.steps), "grad_norm": grad_norm, "skipped": int(skipped),
               "bad_run": int(bad_run), "bad_max": int(bad_max), "tokens_per_s": self.real * world / elapsed,
               "padding": self.padded / max(1, self.real + self.padded)}
        self.loss.zero_(), self.skipped.zero_(), self.bad_max.copy_(self.bad_run)
        self.steps = self.real = self.padded = 0
        self.start = time.perf_counter()
        return out


class Trainer:
    def __init__(self, tokens_dir: Path, run_dir: Path, config: TrainConfig) -> None:
        config = config.check()
        require_name(config.model)  # before the run folder is made
        if config.vram:
            from .plan import default_card, plan_for

            config, found = plan_for(config, config.vram)
            log(f"train: planned for {config.vram:g} GB: {' '.join(found.flags(config.lora_r or 16))} "
                f"(about {found.peak_mb:,.0f} MB, {found.tokens_per_s[default_card(config.vram)]:,.0f} tokens/s "
                f"on an {default_card(config.vram)})")
        self.config, self.run_dir, self.tokens_dir = config, run_dir, tokens_dir
        self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.is_rank0 = self.rank == 0  # the one process that writes
        self.device = self._setup_device()
        self._lock = contextlib.ExitStack()  # the run folder's lock, held by rank 0 until close()
        self.manifest = TokensManifest.read(tokens_dir)
        self.manifest.verify(tokens_dir)
        check_outside(run_dir, tokens_dir, "the token folder")
        shards = lambda split: TokenShards(self.manifest.shard_paths(tokens_dir, split),  # noqa: E731
                                           self.manifest.shard_counts(split))
        self.train_data, self.val_data = shards("train"), shards("val")
        if len(self.train_data) == 0:
            raise UserError(f"{tokens_dir} holds no training examples")
        self._check_something_to_learn()
        # Few shapes: batch lengths from a fixed set chosen from the data; on a GPU also a fixed
        # number of rows, and predicted positions rounded up, so matrix shapes repeat.
        lengths = np.concatenate([self.train_data.lengths, self.val_data.lengths])
        self.buckets = length_buckets(lengths, config.max_length, config.length_buckets) \
            if config.length_buckets else None
        gpu = self.device.type == "cuda"
        self.batch_rows, self.rows_multiple = (config.batch_size, 512) if gpu else (0, 1)
        self.metrics = MetricsLog(run_dir)
        try:
            self._check_run_dir()
            self.precision = choose_precision(self.device, config.precision)
            self.model = self._build_model()
            if self.device.type == "cuda" and torch.cuda.get_device_capability(self.device)[0] >= 8:
                torch.backends.cuda.matmul.allow_tf32 = True
                torch.backends.cudnn.allow_tf32 = True
            self.loss_fn = AnswerLoss(unwrap(self.model), body=self._compiled_body() if config.compile else None)
            if self.world > 1:
                ids = [self.device.index] if self.device.type == "cuda" else None
                self.loss_fn = torch.nn.parallel.DistributedDataParallel(self.loss_fn, device_ids=ids)
            self.optimizer = make_optimizer(self.model, config, self.device)
            self.trainable = [p for p in self.model.parameters() if p.requires_grad]
            self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision.use_scaler)
            self.steps_per_epoch = len(self._batches(0)) // config.grad_accum
            if self.steps_per_epoch == 0:
                raise UserError(f"fewer training batches than --grad-accum {config.grad_accum}; lower it")
            self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
            self.state = TrainState(config=config.to_dict())
            if config.resume:
                self._resume()
            if config.report_to == "tensorboard" and self.is_rank0:
                self.metrics.report_to_tensorboard(self.state.step + 1 if self.state.step else 0)
            self.counters = Counters(self.device, self.state.bad_steps)
            self.tokens = {"real": 0, "padded": 0}  # this process's, since it started
            self.lr = config.lr
            self._epoch_cache: tuple[int, list] | None = None  # used by the prefetch thread only
            self._prefetcher: Prefetcher | None = None
        except BaseException:
            self.metrics.close()
            self._lock.close()  # a run that never started holds nothing
            raise

    # -- setup -------------------------------------------------------------------
    def _build_model(self):
        """The model as configured: fresh (seeded) or loaded weights; a 4-bit base (QLoRA) or, for
        LoRA on a GPU, a 16-bit one; LoRA adapters; activation checkpointing."""
        c = self.config
        torch.manual_seed(c.seed)
        model = load_model(c.model, from_scratch=c.from_scratch, vocab_size=self.manifest.vocab_size,
                           eos_id=self.manifest.eos_id)
        self._check_vocab(model)
        compute = self.precision.autocast_dtype or torch.float32
        if c.quantize == "nf4":
            model = quantize_nf4(model, compute, self.device)
        elif c.lora_r and self.device.type == "cuda":
            model = model.to(compute)  # the frozen base in 16 bits: half the memory
        if c.lora_r:
            model = add_lora(model, c.lora_r, c.lora_alpha, c.lora_dropout, c.lora_targets)
        if c.grad_checkpointing:
            enable_activation_checkpointing(unwrap(model))
        return model.to(self.device).train()

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

    def _compiled_body(self):
        """torch.compile of the transformer body. On CUDA, mode "reduce-overhead" records CUDA
        graphs: a step's hundreds of kernel launches become one replay per shape, and the length
        buckets keep the shapes few. The output layer and loss stay eager (chunked)."""
        import torch._dynamo

        limit = (len(self.buckets) if self.buckets is not None else 64) + 8
        for name in ("recompile_limit", "cache_size_limit"):  # renamed across torch versions
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), limit))
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        return torch.compile(unwrap(self.model).base_model, mode=mode)

    def _check_run_dir(self) -> None:
        """A new run needs an empty folder; --resume needs a shardtune run of the same data and shape.
        Rank 0 then holds the folder's lock until the run ends."""
        run = self.run_dir
        if run.exists() and not run.is_dir():
            raise UserError(f"{run} is a file; give a folder with --out")
        entries = {p.name for p in run.iterdir()} - {LOCK} if run.exists() else set()
        if not self.config.resume and entries:
            raise UserError(f"run folder {run} is not empty; use --resume to continue that run, or choose another --out")
        if self.config.resume and entries:
            self._check_same_run(entries)  # before the lock: a folder that is not a run is not touched
        if self.is_rank0:
            self._lock.enter_context(locked(run, "train"))

    def _check_same_run(self, entries: set[str]) -> None:
        """--resume continues only a shardtune run (its files alone, nothing is deleted otherwise)
        whose data position means the same: same token folder, batch, seed and model."""
        run = self.run_dir
        foreign = sorted(e for e in entries if e.removesuffix(".tmp") not in RUN_FILES)  # .tmp: a kill mid-write
        saved = read_json(run / "config.json", "run config") if (run / "config.json").exists() else None
        if foreign or not isinstance(saved, dict) or not isinstance(saved.get("train"), dict):
            what = f"it holds {', '.join(foreign[:3])}" if foreign else "it has no shardtune config.json"
            raise UserError(f"{run} is not a shardtune run ({what}); give the folder of the run to resume")
        mine = self.config.to_dict()
        differ = [f"--{k.replace('_', '-')} {saved['train'].get(k)!r} -> {mine[k]!r}" for k in RESUME_FIELDS
                  if saved["train"].get(k) != mine[k]]
        if saved.get("tokens_fingerprint") != self.manifest.fingerprint:
            differ.append(f"token folder {saved.get('tokens')} -> {self.tokens_dir}")
        if differ:
            raise UserError(f"--resume would continue {run} with other settings, and the data position depends on "
                            f"them: {'; '.join(differ)}; resume with the run's own, or start a new --out")
        for final in ("final", "adapter"):
            if (run / final).exists() and not (run / final / "shardtune.json").exists():
                raise UserError(f"{run / final} holds files shardtune did not write; move them before resuming")

    def _check_something_to_learn(self) -> None:
        """Refuse a --max-length that cuts every example before its answer (nothing to learn, a
        validation loss of 0/0). Counts the predicted positions as `collate` makes them."""
        c = self.config
        for name, data in (("training", self.train_data), ("validation", self.val_data)):
            if not len(data):
                continue
            kept = np.minimum(data.lengths, c.max_length)
            first = np.minimum(data.prompt_lengths(), kept) if c.loss_on != "prompt+answer" else 0
            if int(np.maximum(kept - np.maximum(first, 1), 0).sum()) == 0:
                raise UserError(f"--max-length {c.max_length} leaves no token to learn from in the {name} examples "
                                f"(their prompts fill it); raise --max-length")

    def _check_vocab(self, model) -> None:
        positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
        if positions and self.config.max_length > positions:
            raise UserError(f"--max-length {self.config.max_length:,} is longer than model {self.config.model!r} can "
                            f"read ({positions:,} positions); use at most {positions:,}")
        model_vocab = model.get_input_embeddings().num_embeddings
        if model_vocab < self.manifest.vocab_size:
            raise UserError(f"the token shards come from {self.manifest.tokenizer!r} ({self.manifest.vocab_size:,} "
                            f"tokens) but model {self.config.model!r} knows {model_vocab:,}; tokenize with the "
                            "model's own tokenizer")
        largest = max(self.train_data.max_id(), self.val_data.max_id())  # an id past the embedding: a GPU assert
        if largest >= model_vocab:
            raise UserError(f"the token shards hold id {largest:,}, past the {model_vocab:,} ids of model "
                            f"{self.config.model!r}; the shards do not match their manifest: re-run `shardtune tokenize`")

    def _resume(self) -> None:
        found = checkpoint_dirs(self.run_dir)
        if not found:
            log(f"train: no checkpoint in {self.run_dir} yet; starting from the beginning")
            return
        self.state = load_checkpoint(found[-1], self.model, self.optimizer, self.device)
        if self.state.batch_in_epoch > len(self._batches(self.state.epoch)):
            raise UserError(f"cannot resume from {found[-1]}: its data position (batch {self.state.batch_in_epoch:,} "
                            "of the epoch) is past the epoch's end; it was edited, delete that checkpoint")
        if self.state.scaler:
            self.scaler.load_state_dict(self.state.scaler)
        if self.is_rank0:
            self.metrics.truncate_after(self.state.step)
        log(f"train: resumed from {found[-1].name} (step {self.state.step:,} of {self.total_steps:,})")

    # -- data ----------------------------------------------------------------------
    def _batches(self, epoch: int) -> list[np.ndarray]:
        return epoch_batches(self.train_data.lengths, self.config.batch_size, self.config.seed, epoch,
                             rank=self.rank, world=self.world, buckets=self.buckets)

    def _make_step(self, position: tuple[int, int]):
        """(the grad_accum micro-batches of the step at `position`, the position after it).
        Runs on the prefetch thread."""
        epoch, index = position
        micro = []
        while len(micro) < self.config.grad_accum:
            if self._epoch_cache is None or self._epoch_cache[0] != epoch:
                self._epoch_cache = (epoch, self._batches(epoch))
            batches = self._epoch_cache[1]
            if index >= len(batches) - len(batches) % self.config.grad_accum:
                epoch, index = epoch + 1, 0
                continue
            batch = self._collate(self.train_data, batches[index])
            micro.append(batch.pin() if self.device.type == "cuda" else batch)
            index += 1
        return micro, (epoch, index)

    def _next_step(self):
        """The next step's micro-batches and the data position after them, made ahead."""
        if self._prefetcher is None:
            self._prefetcher = Prefetcher(self._make_step, (self.state.epoch, self.state.batch_in_epoch))
        return self._prefetcher.next()

    def _collate(self, data: TokenShards, indices):
        return collate(data, indices, self.config.max_length, self.config.loss_on, self.manifest.eos_id,
                       buckets=self.buckets, rows_multiple=self.rows_multiple, batch_rows=self.batch_rows)

    def _autocast(self):
        if self.precision.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision.autocast_dtype)

    def _forward(self, batch):
        if self.config.compile and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration: graph outputs may be reused
        with self._autocast():
            return batch_loss(self.loss_fn, batch.to(self.device))

    # -- the loop ----------------------------------------------------------------
    def should_continue_training(self) -> bool:
        return self.state.step < self.total_steps

    def train_step(self) -> None:
        """One optimizer step. It never reads a device value back: the loss, the gradient norm
        and the non-finite check stay on the device (see Counters)."""
        micro, position = self._next_step()
        lr = lr_at(self.state.step, self.total_steps, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        predicted = max(1, sum(b.predicted for b in micro))
        loss = None
        for i, batch in enumerate(micro):
            last = i == len(micro) - 1
            with contextlib.nullcontext() if last or self.world == 1 else self.loss_fn.no_sync():
                part = self._forward(batch) / predicted
                self.scaler.scale(part).backward()
            loss = part.detach() if loss is None else loss + part.detach()
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.config.clip_grad)
        bad = ~(torch.isfinite(loss) & torch.isfinite(norm))
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # skips a step with inf/nan gradients, on the device
            self.scaler.update()
        elif skips_on_device(self.optimizer):
            self.optimizer.found_inf, self.optimizer.grad_scale = bad.float(), None  # the same skip
            self.optimizer.step()
            del self.optimizer.found_inf, self.optimizer.grad_scale
        elif not bool(bad):  # 8-bit AdamW cannot skip on the device: this reads the flag back every step
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.epoch, self.state.batch_in_epoch = position
        real, padded = sum(b.real_tokens for b in micro), sum(b.padded_tokens for b in micro)
        self.counters.add(loss, norm, bad, real, padded)
        self.tokens["real"] += real
        self.tokens["padded"] += padded
        self.lr = lr

    def evaluate(self) -> dict:
        self.model.eval()
        n = len(self.val_data) if not self.config.eval_examples else min(len(self.val_data), self.config.eval_examples)
        order = epoch_batches(self.val_data.lengths[:n], self.config.batch_size, 0, 0, shuffle=False,
                              rank=self.rank, world=self.world, buckets=self.buckets)
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
        with meter("train", self.total_steps, "steps", ("tokens",)) as progress:
            progress.update(self.state.step)
            while self.should_continue_training():
                self.train_step()
                step, last = self.state.step, self.state.step == self.total_steps
                if step % c.log_steps == 0 or last:
                    logged = self._log()
                    progress.update(extra=f"loss {logged['loss']:.3f}  mem {logged['peak_memory_mb']:,.0f} MB")
                if step % c.eval_steps == 0 and not last:
                    self._record({"type": "eval", "step": step, **self.evaluate()})
                if step % c.save_steps == 0 and not last:
                    self._save()
                progress.update(step, tokens=self.tokens["real"] * self.world)
        final_eval = self._final_eval()
        self._refuse_diverged(final_eval)
        self._save()
        self.finish()
        padding = self.tokens["padded"] / max(1, self.tokens["real"] + self.tokens["padded"])
        return {**final_eval, "steps": self.state.step, "padding": padding, "peak_memory_mb": peak_memory_mb(self.device)}

    def _final_eval(self) -> dict:
        """The evaluation at the last step; a finished run resumed has it logged already (evaluation
        is deterministic), and logging it again would repeat a step in metrics.jsonl and TensorBoard."""
        if self.state.step == self.total_steps:
            logged = [e for e in self.metrics.read("eval") if e["step"] == self.state.step and e.get("val_loss") is not None]
            if logged:
                return logged[-1]
        final_eval = {"type": "eval", "step": self.state.step, **self.evaluate()}
        self._record(final_eval)
        return final_eval

    def _log(self) -> dict:
        """Read the window back from the device, stop a diverging run, write the log line."""
        w = self.counters.read(self.world)
        self.state.bad_steps = w["bad_run"]
        if w["bad_max"] >= self.config.max_bad_steps:
            last = checkpoint_dirs(self.run_dir)
            raise UserError(f"the loss was not finite for {w['bad_max']} steps in a row; stopped. Last good "
                            f"checkpoint: {last[-1] if last else 'none'}. Try a lower --lr or --precision fp32")
        entry = {"type": "train", "step": self.state.step, "epoch": self.state.epoch, "loss": w["loss"],
                 "lr": self.lr, "grad_norm": w["grad_norm"], "tokens_per_s": w["tokens_per_s"],
                 "padding": w["padding"], "skipped": w["skipped"], "peak_memory_mb": peak_memory_mb(self.device)}
        self._record(entry)
        return entry

    # -- outputs -----------------------------------------------------------------
    def _record(self, entry: dict) -> None:
        if self.is_rank0:
            self.metrics.append(entry)
            log(describe(entry))

    def _write_config(self) -> None:
        if self.is_rank0:
            write_json(self.run_dir / "config.json", {"train": self.config.to_dict(), "tokens": str(self.tokens_dir),
                                                      "tokens_fingerprint": self.manifest.fingerprint})

    def _refuse_diverged(self, final_eval: dict) -> None:
        """Neither the last checkpoint nor final/ of a diverged model. Weights can stay finite and
        still overflow every activation (--lr 1e30 makes them ~1e30), so the validation loss is
        checked as well as the weights. Before the last save, so the last good checkpoint stays."""
        val_bad = final_eval["val_tokens"] > 0 and not math.isfinite(final_eval["val_loss"])
        if val_bad or not all(torch.isfinite(p).all() for p in self.trainable):
            last = checkpoint_dirs(self.run_dir)
            what = f"validation loss is {final_eval['val_loss']}" if val_bad else "weights are no longer finite numbers"
            raise UserError(f"training diverged: the model's {what}, so no model was written (last good checkpoint: "
                            f"{last[-1] if last else 'none'}); try a lower --lr, or --precision fp32")

    def _save(self) -> None:
        self.state.bad_steps = int(self.counters.bad_run)  # a read-back: checkpoints are rare
        if self.is_rank0:
            self.state.scaler = self.scaler.state_dict() if self.scaler.is_enabled() else {}
            save_checkpoint(self.run_dir, self.model, self.optimizer, self.state, self.config.save_total_limit)
        if self.world > 1:
            torch.distributed.barrier()

    def finish(self) -> None:
        """RUN_DIR/final: a Hugging Face model folder plus the tokenizer and how to prompt it; with
        LoRA also RUN_DIR/adapter, the adapter alone (peft loads it), and final/ has it merged in."""
        if not self.is_rank0:
            return
        model = self.model
        if is_peft(model):
            self._export(self.run_dir / "adapter", model.save_pretrained)
            model = self._merged()
        self._export(self.run_dir / "final", unwrap(model).save_pretrained)

    def _merged(self):
        """The trained adapter merged into a full-precision base, rebuilt as training built it."""
        if self.config.quantize == "none":
            return self.model.merge_and_unload()
        torch.manual_seed(self.config.seed)
        base = load_model(self.config.model, from_scratch=self.config.from_scratch,
                          vocab_size=self.manifest.vocab_size, eos_id=self.manifest.eos_id)
        return merge_adapter(base, self.run_dir / "adapter")

    def _export(self, folder: Path, save) -> None:
        """Write `save(folder)`, the tokenizer and shardtune.json to a temporary folder, then rename."""
        from shardtune.tokens.tokenizer import load_tokenizer

        tmp = tmp_path(folder)
        shutil.rmtree(tmp, ignore_errors=True)
        save(tmp, safe_serialization=True)
        load_tokenizer(self.manifest.tokenizer).save_pretrained(tmp)
        RunInfo(template=self.manifest.template, template_hash=self.manifest.template_hash,
                tokenizer=self.manifest.tokenizer, max_length=self.config.max_length,
                train_config=self.config.to_dict(), tokens_dir=str(self.tokens_dir),
                run_dir=str(self.run_dir.resolve()), vocab_size=self.manifest.vocab_size,
                eos_id=self.manifest.eos_id).write(tmp)
        commit_folder(tmp, folder)

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
        self.metrics.close()
        self._lock.close()
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_train(tokens_dir: Path, run_dir: Path, config: TrainConfig | None = None) -> dict:
    """Train; returns the final evaluation. CUDA running out of memory ends in one clear message."""
    config = config or TrainConfig()
    trainer = None
    try:
        trainer = Trainer(tokens_dir, run_dir, config)
        config = trainer.config  # as planned, with --vram
        if trainer.is_rank0:
            log(f"train: {trainer.total_steps:,} steps of {config.batch_size} x {config.grad_accum} examples on "
                f"{trainer.device} ({trainer.precision.name}), {len(trainer.train_data):,} train / "
                f"{len(trainer.val_data):,} val examples; config: {config.to_dict()}")
        return trainer.run()
    except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
        if isinstance(e, torch.cuda.OutOfMemoryError):
            used = torch.cuda.memory_allocated() / 2**30
            total = torch.cuda.get_device_properties(0).total_memory / 2**30
            what = f"CUDA ran out of memory ({used:.1f} GiB in use of {total:.1f} GiB)"
        elif "can't allocate memory" in str(e):  # torch's CPU allocator says so in a plain RuntimeError
            what = "the host ran out of memory"
        else:
            raise
        raise UserError(f"{what}. Lower the memory: --batch-size {max(1, config.batch_size // 2)} --grad-accum "
                        f"{config.grad_accum * 2} (same effective batch), --grad-checkpointing, or a shorter "
                        "--max-length") from None
    finally:
        if trainer is not None:
            trainer.close()
