"""The training run's config: one typed object, saved in the run folder and in every checkpoint.

Defaults are the seed notebook's (3 epochs, batch 16, lr 5e-5, weight decay 0.01,
max length 256, a checkpoint every 500 steps keeping 1, a log line every 100 steps).
"""

from __future__ import annotations

from dataclasses import dataclass

from shardtune.errors import UserError
from shardtune.options import Config, option

MODEL, DATA, OPTIM, LOOP, SPEED = "model", "data", "optimization", "schedule and outputs", "speed and memory"
# The planner traces a step per option on fake tensors, its cost growing with the tokens of a batch:
# about 20 s here at 8,192 tokens an example, minutes at 65,536.
PLAN_MAX_LENGTH = 8192
ADAPT = "LoRA, QLoRA and fitting a card"


@dataclass
class TrainConfig(Config):
    SECTION = "train"

    model: str = option("distilgpt2", "Hugging Face causal LM name or folder, or a preset ('tiny')",
                        metavar="NAME", group=MODEL)
    from_scratch: bool = option(False, "fresh weights in the named architecture (offline: required for hub names)",
                                group=MODEL)

    max_length: int = option(256, "cut longer examples to this many tokens", min=2, max=1 << 20, group=DATA)
    batch_size: int = option(16, "examples per micro-batch", min=1, group=DATA)
    grad_accum: int = option(1, "micro-batches per optimizer step", min=1, group=DATA)
    loss_on: str = option("answer", "tokens that carry the loss ('prompt+answer' is the seed's)",
                          choices=("answer", "prompt+answer"), group=DATA)
    seed: int = option(42, "random seed: weights, data order, dropout", min=0, max=2**32 - 1, group=DATA)

    lr: float = option(5e-5, "peak learning rate", above=0, group=OPTIM)
    weight_decay: float = option(0.01, "AdamW weight decay", min=0, group=OPTIM)
    warmup_steps: int = option(0, "linear warmup steps", min=0, group=OPTIM)
    schedule: str = option("linear", "decay after warmup", choices=("linear", "cosine"), group=OPTIM)
    clip_grad: float = option(1.0, "clip the gradient norm to this", above=0, group=OPTIM)

    epochs: int = option(3, "passes over the training examples", min=0, group=LOOP)
    max_steps: int = option(0, "stop after this many optimizer steps (0: all epochs)", min=0, group=LOOP)
    eval_steps: int = option(500, "evaluate every N steps", min=1, group=LOOP)
    eval_examples: int = option(2000, "validation examples per evaluation (0: all)", min=0, group=LOOP)
    save_steps: int = option(500, "checkpoint every N steps", min=1, group=LOOP)
    save_total_limit: int = option(1, "checkpoints kept", min=1, group=LOOP)
    log_steps: int = option(100, "log a line every N steps", min=1, group=LOOP)
    max_bad_steps: int = option(10, "non-finite losses in a row before the run stops (checked when a line is "
                                "logged, so up to --log-steps late: steps never wait to read the loss)", min=1,
                                group=LOOP)
    resume: bool = option(False, "continue from the newest checkpoint in RUN_DIR", group=LOOP)
    report_to: str = option("none", "also log to TensorBoard, under RUN_DIR/tensorboard (needs the tensorboard "
                            "package)", choices=("none", "tensorboard"), group=LOOP)

    precision: str = option("auto", "auto: bf16 on Ampere and newer, fp16 with a scaler on older GPUs, fp32 on "
                            "the CPU", choices=("auto", "bf16", "fp16", "fp32"), group=SPEED)
    length_buckets: int = option(16, "batch lengths come from at most N fixed lengths, chosen from the data to "
                                 "pad least (0: pad each batch to its longest example)", min=0, max=256, group=SPEED)
    grad_checkpointing: bool = option(False, "recompute activations in the backward pass to save GPU memory",
                                      group=SPEED)
    compile: bool = option(False, "torch.compile the model body (with CUDA graphs on a GPU)", group=SPEED)

    lora_r: int = option(0, "train LoRA adapters of this rank instead of every weight (0: full fine-tuning)",
                         min=0, max=4096, group=ADAPT)
    lora_alpha: float = option(16.0, "LoRA scaling: the update is multiplied by alpha / r", above=0, group=ADAPT)
    lora_dropout: float = option(0.05, "dropout on the LoRA branch", min=0, below=1, group=ADAPT)
    lora_targets: str = option("all-linear", "layers that get adapters: all-linear (every linear layer of the "
                               "body) or comma-separated module names (q_proj,v_proj)", metavar="NAMES", group=ADAPT)
    quantize: str = option("none", "hold the base in 4 bits (QLoRA; needs --lora-r and bitsandbytes)",
                           choices=("none", "nf4"), group=ADAPT)
    optim: str = option("adamw", "optimizer: fused AdamW, or bitsandbytes' 8-bit AdamW (paged: spills its state "
                        "to host memory under pressure, CUDA only)", choices=("adamw", "adamw8bit", "paged_adamw8bit"),
                        group=ADAPT)
    vram: float = option(0.0, "fit the run to a card of this many GB: choose LoRA/QLoRA, 8-bit AdamW, "
                         "checkpointing and the micro-batch as `shardtune plan` would (0: as given)", min=0,
                         max=1024, group=ADAPT)

    def validate(self) -> None:
        if self.epochs < 1 and self.max_steps < 1:
            raise UserError("give --epochs or --max-steps of at least 1")
        if self.quantize != "none" and self.lora_r == 0:
            raise UserError("--quantize nf4 trains adapters over a 4-bit base: add --lora-r (e.g. 16)")
        if self.vram and self.max_length > PLAN_MAX_LENGTH:
            raise UserError(f"--vram plans examples of at most {PLAN_MAX_LENGTH:,} tokens; give --max-length "
                            f"{PLAN_MAX_LENGTH:,} or less, or choose the memory options by hand without --vram")
        if self.lora_r == 0 and not self.vram:  # --vram may choose LoRA: then they shape its adapters
            defaults = TrainConfig.__dataclass_fields__
            shaped = [f"--{name.replace('_', '-')}" for name in ("lora_alpha", "lora_dropout", "lora_targets")
                      if getattr(self, name) != defaults[name].default]
            if shaped:
                raise UserError(f"{', '.join(shaped)} shape{'s' if len(shaped) == 1 else ''} LoRA adapters, which "
                                "full fine-tuning has none of: add --lora-r (e.g. 16) or leave "
                                f"{'it' if len(shaped) == 1 else 'them'} out")


@dataclass
class PlanConfig(Config):
    """`shardtune plan`: what fits a card of --vram GB, and the fastest of it."""

    SECTION = "plan"

    model: str = option("distilgpt2", "preset, model folder (config.json is enough) or hub name", metavar="NAME")
    vram: float = option(6.0, "GB of memory on the card", above=0, max=1024)
    batch_size: int = option(16, "effective batch: micro-batch x accumulation steps", min=1, max=4096)
    max_length: int = option(256, "tokens per example; planned for every row full, the worst case", min=8,
                             max=PLAN_MAX_LENGTH)
    card: str = option("", "card whose speed ranks the options (default: RTX 2060 up to 6 GB, RTX 3060 up to "
                       "12, else RTX 4070)", choices=("", "RTX 2060", "RTX 3060", "RTX 4070", "H100"))
    lora_r: int = option(16, "LoRA rank the adapter options use", min=1, max=4096)
