"""How long a training step takes on a card, predicted without the card.

One step is run twice on the CPU. With fake tensors (shapes, no data) under autocast,
OpTrace lists every operator with its FLOPs (torch.utils.flop_counter) and the bytes it
reads and writes: that is the device's work. On a micro twin of the model (every layer,
head and operator, on tensors of a few elements) the step is timed: that is the host's
work, Python and dispatch, each operator's arithmetic costing about a kernel launch.

Then, per card:
    kernel time  = max(FLOPs / (peak x COMPUTE), bytes / (bandwidth x MEMORY), MIN_KERNEL)
    device time  = sum of the kernel times
    host time    = HOST_SPEED x (twin's time + collation on the main thread) + kernels x LAUNCH
    step time    = max(host, device) when the step never reads the device (they overlap),
                   host + device when it does (each read makes the host wait for the device)
HOST_SPEED, the host seconds on a GPU machine per host-second here, is the one constant
fitted to a measurement (the seed's H100 step, benchmarks/RESULTS.md); the others are
public figures (docs: the GPU reference notes) or common rules of thumb.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .trace import OpTrace


@dataclass(frozen=True)
class Card:
    name: str
    tflops: float  # dense fp16/bf16 matmul with fp32 accumulation (what AMP uses)
    bandwidth_gbs: float
    memory_gb: float
    bf16: bool  # Turing (RTX 20xx) has no bf16: fp16 with a gradient scaler


CARDS = (Card("RTX 2060", 25.8, 336, 6, False), Card("RTX 3060", 25.5, 360, 12, True),
         Card("RTX 4070", 58.3, 504, 12, True), Card("H100", 989.0, 3350, 80, True))
H200 = Card("H200", 989.0, 4800, 141, True)  # for matching a lent machine; not a prediction target


def card_named(name: str) -> Card | None:
    """The card whose name appears in a device name such as "NVIDIA H100 80GB HBM3"."""
    return next((c for c in (*CARDS, H200) if c.name.split()[-1] in name), None)
COMPUTE = 0.6  # share of peak FLOP/s a large matmul sustains
MEMORY = 0.7  # share of peak bandwidth an elementwise kernel sustains
MIN_KERNEL = 3e-6  # no kernel takes less on the device
LAUNCH = 5e-6  # host seconds per kernel launch (CUDA launch cost: 4-6 us)
HOST_SPEED = 1.0  # replaced by calibrate(); see benchmarks/RESULTS.md


@dataclass
class StepTrace:
    """One approach's step: its kernels' (FLOPs, bytes), dispatched operators, reads back, host time."""

    name: str
    useful_tokens: float  # tokens per step that are not padding
    work: list[tuple[int, int]]
    dispatched: int
    syncs: int
    host_here: float  # the step's host time on this machine (micro twin, see trace_step)
    collate_seconds: float = 0.0  # host time spent collating on the main thread, here

    @property
    def kernels(self) -> int:
        return len(self.work)

    @property
    def flops(self) -> int:
        return sum(f for f, _ in self.work)


def work_seconds(work: list[tuple[int, int]], card: Card) -> float:
    """Device seconds of kernels given as (FLOPs, bytes)."""
    peak, bandwidth = card.tflops * 1e12 * COMPUTE, card.bandwidth_gbs * 1e9 * MEMORY
    return sum(max(f / peak, b / bandwidth, MIN_KERNEL) for f, b in work)


def device_seconds(trace: StepTrace, card: Card) -> float:
    return work_seconds(trace.work, card)


def host_seconds(trace: StepTrace, host_speed: float | None = None) -> float:
    speed = HOST_SPEED if host_speed is None else host_speed
    return speed * (trace.host_here + trace.collate_seconds) + trace.kernels * LAUNCH


def step_seconds(trace: StepTrace, card: Card, host_speed: float | None = None) -> float:
    host, device = host_seconds(trace, host_speed), device_seconds(trace, card)
    return host + device if trace.syncs else max(host, device)


def calibrate(trace: StepTrace, card: Card, measured_s: float) -> float:
    """The HOST_SPEED that makes `trace` take `measured_s` on `card` (a measured, host-bound step)."""
    device = device_seconds(trace, card)
    host = measured_s - device if trace.syncs else measured_s
    base = trace.host_here + trace.collate_seconds
    return max(0.0, (host - trace.kernels * LAUNCH) / base) if base else 1.0


# -- tracing --------------------------------------------------------------------------------

def _fused_adamw(params, state, found_inf=None, grad_scale=None) -> None:
    """What fused AdamW's step dispatches: one fused kernel over every parameter."""
    grads = [p.grad for p in params]
    torch._fused_adamw_(params, grads, state["m"], state["v"], [], state["step"], lr=5e-5, beta1=0.9,
                        beta2=0.999, weight_decay=0.01, eps=1e-8, amsgrad=False, maximize=False,
                        grad_scale=grad_scale, found_inf=found_inf)


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_'s foreach path, which CUDA takes by default (on the CPU it
    would take one norm per parameter)."""
    grads = [p.grad for p in params]
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


def _adam_state(params):
    return {"m": [torch.zeros_like(p) for p in params], "v": [torch.zeros_like(p) for p in params],
            "step": [torch.zeros((), device=p.device) for p in params]}


def run_step(step, model, dtype: torch.dtype | None, steps: int = 1) -> float:
    """Run `step(model, params, state)` `steps` times; returns the seconds per step."""
    params = [p for p in model.parameters() if p.requires_grad]
    state = _adam_state(params)
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            step(model, params, state)
        for p in params:
            p.grad = None
    return (time.perf_counter() - start) / steps


def micro_twin(preset: str, prepare: bool = True):
    """The preset's architecture, every layer and head kept, at a width of 4 per head and a
    256-token vocabulary: the same operators as the real model, each on tiny tensors."""
    from transformers import AutoModelForCausalLM

    from shardtune.hub import model_key
    from shardtune.models import preset_family

    family = preset_family(preset)
    config = family.config(model_key(preset), 256, 0)
    for width, heads in (("n_embd", "n_head"), ("hidden_size", "num_attention_heads")):
        if hasattr(config, width):
            setattr(config, width, getattr(config, heads) * 4)
    for name, value in (("head_dim", 4), ("intermediate_size", 16)):
        if hasattr(config, name):
            setattr(config, name, value)
    model = AutoModelForCausalLM.from_config(config)
    return family.prepare(model) if prepare else model


def trace_step(name: str, preset: str, step, dtype: torch.dtype, useful_tokens: float, batch: int, length: int,
               prepare: bool = True, syncs: float | None = None, collate_seconds: float = 0.0) -> StepTrace:
    """One approach's step; `step(batch, length, rows)(device)` makes it. The device's work is
    traced with fake tensors at the real shape; the host's is timed on the micro twin (same
    operators on tiny tensors, the output layer in as many chunks). `syncs`, when given,
    replaces the read-backs counted in the step (a per-step figure measured elsewhere)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from shardtune.models import load_model

    from .loss import ChunkedLinearCrossEntropy
    from .memory import fused_attention

    rows = batch * (length - 1)
    with FakeTensorMode(), fused_attention():
        model = load_model(preset, from_scratch=True, prepare=prepare).train()
        trace = OpTrace(keep_ops=True, count_flops=True)
        params = [p for p in model.parameters() if p.requires_grad]
        state = _adam_state(params)
        with torch.autocast("cpu", dtype=dtype), trace:
            step(batch, length, rows)("cpu")(model, params, state)
    chunks, chunk = -(-rows // ChunkedLinearCrossEntropy.CHUNK), ChunkedLinearCrossEntropy.CHUNK
    twin, twin_length = micro_twin(preset, prepare).train(), 16
    ChunkedLinearCrossEntropy.CHUNK = -(-(twin_length - 1) // chunks)  # as many chunks as the real step
    try:
        twin_step = step(1, twin_length, twin_length - 1)("cpu")
        run_step(twin_step, twin, dtype)  # warm-up
        seconds = min(run_step(twin_step, twin, dtype, steps=5) for _ in range(3))
    finally:
        ChunkedLinearCrossEntropy.CHUNK = chunk
    return StepTrace(name, useful_tokens, [(o.flops, o.bytes) for o in trace.ops if o.kernel], trace.dispatched,
                     trace.syncs if syncs is None else syncs, seconds, collate_seconds)


def shardtune_step(batch: int, length: int, rows: int):
    """This loop's train_step (train/loop.py), operator for operator: AnswerLoss's forward and
    backward (chunked output layer), clipping, the non-finite flag, fused AdamW that skips on
    it, and the on-device log counters; no read-back."""
    from .counters import Counters
    from .loss import AnswerLoss

    def make(device: str):
        input_ids = torch.zeros(batch, length, dtype=torch.long, device=device)
        positions = torch.arange(length, device=device).expand(batch, length)
        predict_at = torch.zeros(rows, dtype=torch.long, device=device)
        targets = torch.zeros(rows, dtype=torch.long, device=device)
        counters = Counters(torch.device(device))

        def step(model, params, state):
            loss = AnswerLoss(model)(input_ids, positions, predict_at, targets) / rows
            loss.backward()
            norm = clip_grad_norm(params, 1.0)
            bad = ~(torch.isfinite(loss) & torch.isfinite(norm))
            _fused_adamw(params, state, found_inf=bad.float())
            counters.add(loss.detach(), norm, bad, 0, 0)

        return step

    return make
