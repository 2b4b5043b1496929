"""The training run's config: one typed object, saved in the run folder and in every checkpoint.

Defaults are the seed notebook's (3 epochs, batch 16, lr 5e-5, weight decay 0.01,
max length 256, a checkpoint every 500 steps keeping 1, a log line every 100 steps).
"""

from __future__ import annotations

from dataclasses import dataclass

from shardtune.errors import UserError


@dataclass
class TrainConfig:
    model: str = "distilgpt2"  # Hugging Face name or folder, or the preset "tiny"
    from_scratch: bool = False  # fresh weights in the named architecture (offline: required for hub names)
    epochs: int = 3
    max_steps: int = 0  # stop after this many optimizer steps (0: run all epochs)
    batch_size: int = 16  # examples per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_steps: int = 0
    schedule: str = "linear"  # linear or cosine decay after warmup (linear is Trainer's default)
    max_length: int = 256  # longer examples are cut (answer end dropped)
    clip_grad: float = 1.0
    loss_on: str = "answer"  # "answer", or "prompt+answer" as the seed did
    eval_steps: int = 500
    eval_examples: int = 2000  # validation examples per evaluation (0: all)
    save_steps: int = 500
    save_total_limit: int = 1
    log_steps: int = 100
    seed: int = 42
    precision: str = "auto"  # auto (bf16 on Ampere+, fp16 on older GPUs, fp32 on CPU), bf16, fp16, fp32
    pad_multiple: int = 0  # round batch lengths up to this (0: 16 on a GPU, where repeating shapes are fast; 1 on CPU)
    grad_checkpointing: bool = False
    compile: bool = False
    max_bad_steps: int = 10  # non-finite losses in a row before the run stops
    resume: bool = False  # continue from the newest checkpoint in the run folder

    def check(self) -> None:
        positive = ("batch_size", "grad_accum", "max_length", "eval_steps", "save_steps", "log_steps", "max_bad_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.epochs < 1 and self.max_steps < 1:
            raise UserError("give --epochs or --max-steps of at least 1")
        if self.lr <= 0:
            raise UserError("--lr must be positive")
        if self.schedule not in ("linear", "cosine"):
            raise UserError("--schedule must be linear or cosine")
        if self.loss_on not in ("answer", "prompt+answer"):
            raise UserError("--loss-on must be 'answer' or 'prompt+answer'")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise UserError("--precision must be auto, bf16, fp16 or fp32")
        if self.save_total_limit < 1:
            raise UserError("--save-total-limit must be at least 1")
