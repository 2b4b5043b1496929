"""`shardtune bench memory`: peak GPU memory of a training step, estimated without a GPU.

A training step is run with fake tensors (torch's FakeTensorMode: shapes and dtypes,
no data, no arithmetic), so a DistilGPT-2 step takes under a second on any CPU.
Every storage an operation creates is counted while it is alive, rounded up to the
CUDA caching allocator's 512-byte blocks: the same quantity as
`torch.cuda.max_memory_allocated`. Two optimizer steps run, so the second one holds
the AdamW state, as every step of a real run does.

Where this differs from a GPU, and why it still tracks one:
- CPU autocast, like CUDA autocast, runs the matrix multiplications in 16 bits (its
  lists of other ops differ a little);
- attention runs a fused kernel, which like flash / memory-efficient attention on a
  GPU never stores the sequence x sequence matrix; those kernels regenerate their
  dropout mask from a seed, so it is run without dropout, which stores nothing more;
- no cuBLAS workspace and no CUDA context, which max_memory_allocated excludes too.
The worst case is estimated: every row at --max-length, every position predicted.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
from rich.console import Console
from rich.table import Table
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from shardtune.errors import UserError

BLOCK = 512  # the CUDA caching allocator's smallest block


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages alive now, and the most alive at once."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen: dict[int, weakref.finalize] = {}

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)  # torch keeps one Python object per storage, so id() names it
        if key in self._seen:
            return
        size = -(-storage.nbytes() // BLOCK) * BLOCK
        self.live += size
        self.peak = max(self.peak, self.live)
        self._seen[key] = weakref.finalize(storage, self._freed, key, size)

    def _freed(self, key: int, size: int) -> None:
        self.live -= size
        self._seen.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out


@contextmanager
def fused_attention():
    """Attention as the GPU runs it: a fused kernel, whose dropout stores nothing."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    plain = torch.nn.functional.scaled_dot_product_attention

    def fused(*args, **kwargs):
        kwargs["dropout_p"] = 0.0
        return plain(*args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = fused
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = plain


def shardtune_step(model, batch: int, length: int, dtype: torch.dtype, grad_checkpointing: bool = False):
    """What Trainer.train_step allocates: AnswerLoss on a right-padded batch, no mask."""
    from shardtune.train.model import AnswerLoss, enable_activation_checkpointing

    if grad_checkpointing:
        enable_activation_checkpointing(model)
    loss_fn = AnswerLoss(model)
    rows = -(-batch * (length - 1) // 256) * 256  # every position predicted, rounded as on a GPU
    input_ids = torch.zeros(batch, length, dtype=torch.long)
    positions = torch.arange(length).expand(batch, length).contiguous()
    predict_at, targets = torch.zeros(rows, dtype=torch.long), torch.zeros(rows, dtype=torch.long)

    def step():
        with torch.autocast("cpu", dtype=dtype):
            loss = loss_fn(input_ids, positions, predict_at, targets)
        loss.backward()

    return step


def seed_step(model, batch: int, length: int, dtype: torch.dtype):
    """What the seed's Trainer step allocates: Hugging Face's own loss over all padded positions."""
    input_ids = torch.zeros(batch, length, dtype=torch.long)
    mask = torch.ones(batch, length, dtype=torch.long)

    def step():
        with torch.autocast("cpu", dtype=dtype):
            loss = model(input_ids=input_ids, attention_mask=mask, labels=input_ids).loss
        loss.backward()

    return step


def estimate_peak_mb(setup, model_name: str, fast_gelu: bool, *args) -> float:
    """Peak MiB over two optimizer steps of `setup(model, *args)`'s step."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from shardtune.train.model import load_model

    tracker = LiveBytes()
    with FakeTensorMode(), fused_attention():
        model = load_model(model_name, True, 50257, 50256, fast_gelu=fast_gelu).train()
        for p in model.parameters():
            tracker.track(p)
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01, fused=True)
        step = setup(model, *args)
        with tracker:
            for _ in range(2):
                step()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    return tracker.peak / 2**20


def bench_memory(model: str, batch_size: int, max_length: int) -> int:
    from shardtune.hub import is_gpt2_family
    from shardtune.train.model import GPT2_SHAPES

    if model != "tiny" and not is_gpt2_family(model):
        raise UserError(f"bench memory builds the GPT-2 family's shapes ({', '.join(GPT2_SHAPES)}), not {model!r}")
    positions = GPT2_SHAPES[model.rstrip("/").split("/")[-1].lower()]["n_positions"]
    if batch_size < 1 or not 2 <= max_length <= positions:
        raise UserError(f"give --batch-size of 1 or more and --max-length from 2 to {positions:,} "
                        f"(the positions {model} has)")
    rows = [
        ("shardtune train (bf16; fp16 on Turing)", estimate_peak_mb(
            shardtune_step, model, True, batch_size, max_length, torch.bfloat16)),
        ("shardtune train --grad-checkpointing", estimate_peak_mb(
            shardtune_step, model, True, batch_size, max_length, torch.bfloat16, True)),
        ("seed (Trainer, fp16, padded to 256)", estimate_peak_mb(
            seed_step, model, False, batch_size, max_length, torch.float16)),
    ]
    table = Table(title=f"Estimated peak GPU memory (max_memory_allocated) of a training step: {model}, "
                        f"batch {batch_size} x {max_length}, every row full, AdamW")
    table.add_column("approach")
    table.add_column("estimated peak MB", justify="right")
    table.add_column("vs seed", justify="right")
    for name, mb in rows:
        table.add_row(name, f"{mb:,.0f}", f"{mb / rows[-1][1]:.2f}x")
    Console(width=140).print(table)
    return 0
