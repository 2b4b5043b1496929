"""`shardtune train`: a plain PyTorch loop over the memory-mapped token shards.

Read top to bottom: Trainer.__init__ builds everything from the token manifest and
the config; run() evaluates, then repeats train_step() while
should_continue_training(), logging, evaluating and checkpointing on schedule;
finish() writes RUN_DIR/final in Hugging Face format. What the loop refuses before it
starts is in preflight.py, the export in export.py, the log window in counters.py.
Under `torchrun --nproc_per_node N` the same command trains with DDP: every rank
reads its own share of the batches, rank 0 alone writes.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import torch

from shardtune.console import log, meter
from shardtune.errors import UserError
from shardtune.files import check_outside, write_json
from shardtune.lock import locked, reading
from shardtune.manifest import TokensManifest
from shardtune.models import enable_activation_checkpointing, load_model, require_name
from shardtune.models.adapters import add_lora, quantize_nf4, unwrap
from shardtune.tokens.shards import TokenShards
from shardtune.tokens.tokenizer import load_tokenizer

from .checkpoint import TrainState, checkpoint_dirs, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .counters import Counters
from .data import Prefetcher, collate, epoch_batches, length_buckets
from .device import cap_gpu_memory, choose_precision, join_processes, peak_memory_mb, processes
from .export import export_model
from .loss import AnswerLoss, batch_loss, summed_loss
from .metrics import MetricsLog, describe
from .optim import lr_at, make_optimizer, skips_on_device
from .preflight import (check_checkpoint_config, check_model_reads_tokens, check_run_folder,
                        check_something_to_learn, check_tokenizer_unchanged)


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
        self.processes = processes()
        self.rank, self.world = self.processes.rank, self.processes.world
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
        check_something_to_learn(config, self.train_data, self.val_data)
        # final/ carries the tokenizer: loaded and checked before the model, and before any step
        self.tokenizer = load_tokenizer(self.manifest.tokenizer, say_fallback=False)
        check_tokenizer_unchanged(self.tokenizer, self.manifest, tokens_dir, config.model)
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
        check_model_reads_tokens(model, c, self.manifest, self.train_data, self.val_data)
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
            join_processes(self.world, "nccl" if cuda else "gloo")
        if cuda:
            device = torch.device("cuda", self.processes.local_rank)
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
        """The folder checks (preflight.py), then rank 0 holds the folder's lock until the run ends."""
        check_run_folder(self.run_dir, self.config, self.manifest, self.tokens_dir)
        if self.is_rank0:
            self._lock.enter_context(locked(self.run_dir, "train"))

    def _resume(self) -> None:
        found = checkpoint_dirs(self.run_dir)
        if not found:
            log(f"train: no checkpoint in {self.run_dir} yet; starting from the beginning")
            return
        self.state = load_checkpoint(found[-1], self.model, self.optimizer, self.device)
        check_checkpoint_config(found[-1], self.state.config, self.config)
        if self.state.batch_in_epoch > len(self._batches(self.state.epoch)):
            raise UserError(f"cannot resume from {found[-1]}: its data position (batch {self.state.batch_in_epoch:,} "
                            "of the epoch) is past the epoch's end; it was edited, delete that checkpoint")
        expected = self._position_after(self.state.step)
        if expected is not None and (self.state.epoch, self.state.batch_in_epoch) != expected:
            raise UserError(f"cannot resume from {found[-1]}: its data position (epoch {self.state.epoch}, batch "
                            f"{self.state.batch_in_epoch:,}) is not where {self.state.step:,} steps end (epoch "
                            f"{expected[0]}, batch {expected[1]:,}); it was edited: delete that checkpoint")
        if self.state.step > self.total_steps:
            raise UserError(f"{self.run_dir} is at step {self.state.step:,} already, past the {self.total_steps:,} "
                            "asked; give a larger --max-steps (or --epochs) to go on, or leave the run as it is")
        if self.state.scaler:
            self.scaler.load_state_dict(self.state.scaler)
        if self.is_rank0:
            self.metrics.truncate_after(self.state.step)
        log(f"train: resumed from {found[-1].name} (step {self.state.step:,} of {self.total_steps:,})")

    # -- data ----------------------------------------------------------------------
    def _position_after(self, steps: int) -> tuple[int, int] | None:
        """(epoch, micro-batch) where `steps` steps leave the data, as _make_step moves it: an epoch's
        last step leaves its position at the epoch's end, the next step wraps. None: no whole step."""
        epoch, accum = 0, self.config.grad_accum
        while True:
            per_epoch = len(self._batches(epoch)) // accum
            if per_epoch == 0:
                return None
            if steps <= per_epoch:
                return epoch, steps * accum
            steps, epoch = steps - per_epoch, epoch + 1

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
            logged = [e for e in self.metrics.read("eval") if e["step"] == self.state.step
                      and e.get("val_loss") is not None and isinstance(e.get("val_tokens"), int)]
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
        """RUN_DIR/final, and RUN_DIR/adapter with LoRA (export.py)."""
        if self.is_rank0:
            export_model(self.model, self.tokenizer, self.run_dir, self.config, self.manifest, self.tokens_dir)

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
    trainer, stack = None, contextlib.ExitStack()
    try:
        # a tokenize re-run meanwhile would replace the memory-mapped shards under the run
        stack.enter_context(reading(tokens_dir, "train"))
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
        stack.close()
