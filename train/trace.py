"""Watching a training step from the inside, with no GPU: every operator it dispatches,
its FLOPs and bytes, and every read of a device value back to the host (a sync).

On a GPU a sync stalls the host until the device has finished everything queued, so
the next step's kernels cannot be launched ahead. On a CPU-only machine every tensor
is a host tensor, so "device value" means a tensor *made by an operator* while
watching (losses, norms, activations: what would live on the GPU), as opposed to the
batches built from numpy. A read is `.item()`, `float()`, `bool()` (all one
`_local_scalar_dense`), an operator whose output size depends on the data (`nonzero`,
boolean indexing, `unique`), or `.tolist()` / `.numpy()` / `.cpu()` (patched while
watching, in the watching thread only).

`bench overhead`, the step-time model and tests/test_train.py all use OpTrace.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

aten = torch.ops.aten
SYNC_OPS = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten.equal, aten.is_nonzero,
            aten._unique2, aten.unique_dim, aten.unique_consecutive, aten.repeat_interleave}
BOOL_INDEX_OPS = {aten.index, aten.index_put, aten.index_put_}  # a boolean index needs nonzero
NO_KERNEL = {aten.detach, aten._local_scalar_dense, aten.lift_fresh, aten.alias}  # no launch on a GPU
PATCHED = ("tolist", "numpy", "cpu", "__array__")


@dataclass
class Op:
    name: str
    kernel: bool  # False for views and other metadata-only ops, which launch nothing
    flops: int
    bytes: int  # tensor bytes read and written
    sync: bool


def _is_sync(func, args) -> bool:
    packet = func.overloadpacket
    if packet in SYNC_OPS:
        return True
    return packet in BOOL_INDEX_OPS and any(
        isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in tree_flatten(args[1:2])[0])


class OpTrace(TorchDispatchMode):
    """Records the operators dispatched in this thread; `on_sync(name)` is called for each read
    of a device value back to the host. `ops` holds one Op per operator (with `keep_ops=True`)."""

    def __init__(self, on_sync: Callable[[str], None] | None = None, keep_ops: bool = False,
                 count_flops: bool = False) -> None:
        super().__init__()
        self.on_sync = on_sync or (lambda name: None)
        self.keep_ops, self.count_flops = keep_ops, count_flops
        self.ops: list[Op] = []
        self.dispatched = self.kernels = self.syncs = 0
        self._made = WeakIdKeyDictionary()  # tensors an operator made: "on the device"
        self._thread = None
        self._saved: dict[str, Callable] = {}

    def _sync(self, name: str) -> None:
        self.syncs += 1
        self.on_sync(name)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        sync = _is_sync(func, args) and any(t in self._made for t in inputs)
        if sync:
            self._sync(str(func.overloadpacket))
        out = func(*args, **kwargs)
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        for t in outputs:
            self._made[t] = True
        # prim ops (tensor.device, sizes) and views only read or relabel metadata
        kernel = not func.is_view and func.namespace != "prim" and func.overloadpacket not in NO_KERNEL
        self.dispatched += 1
        self.kernels += kernel
        if self.keep_ops:
            flops = 0
            if self.count_flops:
                from torch.utils.flop_counter import flop_registry

                formula = flop_registry.get(func.overloadpacket)
                flops = int(formula(*args, **kwargs, out_val=out)) if formula else 0
            moved = sum(t.numel() * t.element_size() for t in inputs + outputs) if kernel else 0
            self.ops.append(Op(str(func.overloadpacket), kernel, flops, moved, sync))
        return out

    def __enter__(self):
        self._thread = threading.get_ident()
        for name in PATCHED:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def patched(tensor, *a, _original=original, _name=name, **k):
                if threading.get_ident() == self._thread and tensor in self._made:
                    self._sync(f"Tensor.{_name}")
                return _original(tensor, *a, **k)

            setattr(torch.Tensor, name, patched)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved.clear()
        return super().__exit__(*exc)
