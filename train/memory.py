"""Peak GPU memory of a training step, estimated without a GPU (`shardtune bench memory`).

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
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

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
    from shardtune.models import enable_activation_checkpointing

    from .loss import AnswerLoss

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


def estimate_peak_mb(setup, model_name: str, prepare: bool, *args) -> float:
    """Peak MiB over two optimizer steps of `setup(model, *args)`'s step; `prepare=False`
    keeps the stock modules (the seed's baseline)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import AutoModelForCausalLM

    from shardtune.models import family_of

    from .plan import model_config

    tracker = LiveBytes()
    with FakeTensorMode(), fused_attention():
        model = AutoModelForCausalLM.from_config(model_config(model_name))
        family = family_of(model)
        model = (family.prepare(model) if prepare and family else model).train()
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


