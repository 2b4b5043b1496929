"""What fits a card, and how fast it goes: the planner behind `shardtune plan` and `train --vram`.

For each way to train (full fine-tuning with fp32 master weights and AdamW or 8-bit AdamW,
LoRA over a 16-bit base, QLoRA over a 4-bit one), with and without activation
checkpointing, and each split of the batch into micro-batch x accumulation (which keeps
the effective batch), one training step is run with fake tensors, counting live memory as
the CUDA allocator would (train/memory.py) and every kernel's FLOPs and bytes
(train/trace.py). Every layer repeats the same tensors and work, so runs of 1 and 2 layers
give the model's full depth (`measure`). The step-time model (train/steptime.py) turns the
work into tokens/s on each card. The fastest configuration that fits with the margin below
is the plan.

Where fake tensors cannot go (bitsandbytes quantizes real data), QLoRA is LoRA over a
16-bit base with the body's linear weights recounted at NF4's 0.52 bytes a parameter,
plus one 16-bit copy of the largest weight for the dequantization, and the
dequantization's bytes added to the work.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from .memory import LiveBytes, fused_attention
from .steptime import CARDS, LAUNCH, work_seconds
from .trace import OpTrace

TECHNIQUES = ("full", "full-8bit", "lora", "qlora")
NF4_BYTES = 0.52  # per parameter: 4 bits plus block scales (bitsandbytes' double quantization)
MARGIN = 1.08  # the estimate has read 2-8% below peaks measured on an H100 (benchmarks/RESULTS.md)
RESERVED_MB = 600  # CUDA context and cuBLAS workspace, which max_memory_allocated does not count
HOST_PER_KERNEL = 27e-6  # host seconds a kernel on a GPU machine (bench overhead: 0.40 x 37.5 ms / 548 kernels)


@dataclass
class Option:
    technique: str
    checkpointing: bool
    micro_batch: int
    grad_accum: int
    peak_mb: float
    tokens_per_s: dict[str, float] = field(default_factory=dict)  # card name -> predicted useful tokens/s

    def flags(self, lora_r: int) -> list[str]:
        """The `shardtune train` flags that run this option."""
        out = ["--batch-size", str(self.micro_batch), "--grad-accum", str(self.grad_accum)]
        if self.technique == "full-8bit":
            out += ["--optim", "adamw8bit"]
        if self.technique in ("lora", "qlora"):
            out += ["--lora-r", str(lora_r)]
        if self.technique == "qlora":
            out += ["--quantize", "nf4"]
        return out + (["--grad-checkpointing"] if self.checkpointing else [])


def model_config(model_name: str):
    """The transformers config of a preset, or of a folder holding config.json (no weights needed)."""
    from pathlib import Path

    from transformers import AutoConfig

    from shardtune.errors import UserError, first_line
    from shardtune.hub import hub_reachable, is_local, looks_like_path, model_key
    from shardtune.models import preset_family, require_name

    require_name(model_name)
    family = preset_family(model_name)
    if family is not None and not Path(model_name).exists():
        return family.config(model_key(model_name))
    what = "cannot read the config of"  # the words every refusal here starts with (the tests look for them)
    if not is_local(model_name):
        if looks_like_path(model_name):  # "./nope": no hub would have it
            raise UserError(f"{what} {model_name!r}: model folder not found")
        hub_reachable()  # offline, this makes transformers look in its cache alone, without retrying the hub
    elif Path(model_name).expanduser().is_dir() and not (Path(model_name).expanduser() / "config.json").is_file():
        raise UserError(f"{what} {model_name!r}: the folder holds no config.json; give a model folder")
    try:
        config = AutoConfig.from_pretrained(model_name)
    except Exception as e:  # a user's file: transformers' own checks raise many types (validation, division)
        raise UserError(f"cannot read the config of {model_name!r} (a preset, or a folder with config.json): "
                        f"{type(e).__name__}: {first_line(e)}") from None
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size",
                "intermediate_size", "head_dim", "n_embd", "n_layer", "n_head", "n_inner", "n_positions",
                "max_position_embeddings"):
        value = getattr(config, key, None)
        if value is not None and (type(value) is not int or not 0 < value < 2**31):
            raise UserError(f"the config of {model_name!r} has {key} = {value!r}; a model's shape needs whole "
                            "numbers above 0: fix its config.json")
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    groups = getattr(config, "num_key_value_heads", None) or heads
    if width and heads and (width % heads and not getattr(config, "head_dim", None) or heads % groups):
        raise UserError(f"the config of {model_name!r} splits a width of {width} into {heads} attention heads "
                        f"({groups} for keys and values), which do not divide it evenly: fix its config.json")
    return config


class FakeAdamW8bit:
    """What bitsandbytes' 8-bit AdamW holds: two uint8 moments and a float scale per 256 values
    (tensors under 4,096 values keep fp32 moments); its update allocates nothing large."""

    def __init__(self, params) -> None:
        self.params, self.state = list(params), []

    def step(self) -> None:
        if not self.state:
            for p in self.params:
                if p.numel() >= 4096:
                    self.state += [torch.zeros_like(p, dtype=torch.uint8) for _ in range(2)]
                    self.state += [torch.zeros(-(-p.numel() // 256), device=p.device) for _ in range(2)]
                else:
                    self.state += [torch.zeros_like(p, dtype=torch.float32) for _ in range(2)]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None


@contextlib.contextmanager
def fake_modules_can_move():
    """Module.to() swaps each fake parameter for its converted copy, and with fake tensors the swap
    fails (torch 2.13); peft moves every new adapter that way. While estimating, a failed swap
    falls back to replacing the parameter's data, which is all a fake tensor needs."""
    swap = torch.utils.swap_tensors

    def swap_or_set(old, new):
        try:
            swap(old, new)
        except RuntimeError:
            old.data = new.data

    torch.utils.swap_tensors = swap_or_set
    try:
        yield
    finally:
        torch.utils.swap_tensors = swap


def _linear_weights(model) -> list[torch.Tensor]:
    from transformers.pytorch_utils import Conv1D

    from shardtune.models.adapters import unwrap

    body = unwrap(model).base_model
    return [m.weight for m in body.modules() if isinstance(m, (torch.nn.Linear, Conv1D))]


@dataclass
class Estimate:
    """One training step of one configuration: its peak memory, each card's device time, kernels."""

    peak_bytes: float
    device_seconds: dict[str, float]  # card name -> seconds of kernel work a micro-step
    kernels: float

    def seconds(self, card: str) -> float:
        """A micro-step: no read-back in a step, so host and device overlap."""
        return max(self.device_seconds[card], self.kernels * (HOST_PER_KERNEL + LAUNCH))


def _layers_field(config) -> str:
    return "num_hidden_layers" if hasattr(config, "num_hidden_layers") else "n_layer"


# A plan asks for LoRA and QLoRA at the same shapes, and QLoRA's fake step is LoRA's: each runs once
_STEPS: dict[tuple, tuple[float, list[tuple[int, int]], list[int]]] = {}


def _run(config, technique: str, checkpointing: bool, micro_batch: int, length: int, dtype: torch.dtype,
         lora_r: int) -> Estimate:
    """One configuration's step: its peak memory, each card's device time, its kernels."""
    stepped = "lora" if technique == "qlora" else technique
    key = (config.to_json_string(), stepped, checkpointing, micro_batch, length, dtype, lora_r)
    if key not in _STEPS:
        _STEPS[key] = _fake_step(config, stepped, checkpointing, micro_batch, length, dtype, lora_r)
    peak, work, weights = _STEPS[key]
    if technique == "qlora":
        peak += sum(weights) * (NF4_BYTES - dtype.itemsize) + 2 * max(weights) * dtype.itemsize
        work = work + [(0, int(n * (NF4_BYTES + dtype.itemsize))) for n in weights for _ in range(3)]  # fwd, bwd, again
    return Estimate(peak, {card.name: work_seconds(work, card) for card in CARDS}, len(work))


def _fake_step(config, technique: str, checkpointing: bool, micro_batch: int, length: int, dtype: torch.dtype,
               lora_r: int) -> tuple[float, list[tuple[int, int]], list[int]]:
    """Two training steps with fake tensors: (the peak while the second runs, each of its kernels'
    (FLOPs, bytes), the sizes of the body's linear weights)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import AutoModelForCausalLM

    from shardtune.models import enable_activation_checkpointing, family_of
    from shardtune.models.adapters import add_lora, unwrap

    from .loss import AnswerLoss

    memory, trace = LiveBytes(), OpTrace(keep_ops=True, count_flops=True)
    adapters = technique == "lora"
    with FakeTensorMode(), fused_attention():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype if adapters else torch.float32)
        family = family_of(model)
        model = (family.prepare(model) if family else model).train()
        if adapters:
            with fake_modules_can_move():
                model = add_lora(model, lora_r, 16.0, 0.05, "all-linear")
        if checkpointing:
            enable_activation_checkpointing(unwrap(model))
        for p in model.parameters():
            memory.track(p)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = FakeAdamW8bit(trainable) if technique == "full-8bit" else \
            torch.optim.AdamW(trainable, lr=1e-4, fused=True)
        loss_fn = AnswerLoss(unwrap(model))
        rows = -(-micro_batch * (length - 1) // 512) * 512  # every position predicted, rounded as on a GPU
        ids, at = torch.zeros(micro_batch, length, dtype=torch.long), torch.zeros(rows, dtype=torch.long)
        positions = torch.arange(length).expand(micro_batch, length)
        for step in range(2):  # the second step holds the optimizer state; its kernels are traced
            with memory, trace if step == 1 else contextlib.nullcontext(), torch.autocast("cpu", dtype=dtype):
                loss_fn(ids, positions, at, at).backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0, foreach=True)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        weights = [w.numel() for w in _linear_weights(model)] if adapters else []
    return float(memory.peak), [(o.flops, o.bytes) for o in trace.ops if o.kernel], weights


def measure(model_name: str, technique: str, checkpointing: bool, micro_batch: int, length: int,
            dtype: torch.dtype = torch.float16, lora_r: int = 16) -> Estimate:
    """The step at the model's full depth, from fake runs of 1 and 2 layers: every layer repeats
    the same tensors and the same work, so memory and time grow by the same amount a layer and two
    depths give every depth. (Fake tensors cost about a second a layer; this costs about one in all.)"""
    from shardtune.models import check_max_length

    config = model_config(model_name)
    check_max_length(model_name, config, length)  # refused as train refuses it
    field_name = _layers_field(config)
    depth = getattr(config, field_name)
    def shallow(layers: int):
        fields = {**config.to_dict(), field_name: layers}
        if fields.get("layer_types"):  # per-layer attention kinds (Qwen2): as many as layers
            fields["layer_types"] = fields["layer_types"][:layers]
        return type(config)(**fields)

    try:
        one, two = (_run(shallow(layers), technique, checkpointing, micro_batch, length, dtype, lora_r)
                    for layers in (1, 2))
    except (ValueError, RuntimeError, TypeError) as e:  # a shape transformers or the kernels cannot build
        from shardtune.errors import UserError, first_line

        raise UserError(f"the config of {model_name!r} describes a model that cannot be built and run: "
                        f"{first_line(e)}; fix its config.json") from None

    def at(value) -> float:
        return value(one) + (value(two) - value(one)) * (depth - 1)

    return Estimate(at(lambda e: e.peak_bytes), {c.name: at(lambda e, c=c: e.device_seconds[c.name]) for c in CARDS},
                    at(lambda e: e.kernels))


def options(model_name: str, batch_size: int, length: int, vram_gb: float, lora_r: int = 16,
            techniques: tuple[str, ...] = TECHNIQUES) -> list[Option]:
    """For each technique, with and without checkpointing, the splits of `batch_size` into
    micro-batch x accumulation, largest micro-batch first, down to the first that fits."""
    out: list[Option] = []
    if vram_gb * 1024 <= RESERVED_MB:  # the CUDA context alone fills the card: no step fits
        return out
    for technique in techniques:
        for checkpointing in (False, True):
            for micro in [m for m in (128, 64, 32, 16, 8, 4, 2, 1) if m <= batch_size and batch_size % m == 0]:
                # fp16, what an RTX 2060 runs; bf16 takes the same memory and the same work
                e = measure(model_name, technique, checkpointing, micro, length, torch.float16, lora_r)
                speeds = {card.name: micro * length / e.seconds(card.name) for card in CARDS}
                out.append(Option(technique, checkpointing, micro, batch_size // micro, e.peak_bytes / 2**20, speeds))
                if fits(out[-1], vram_gb):
                    break
    return out


def default_card(vram_gb: float) -> str:
    return "RTX 2060" if vram_gb <= 6 else "RTX 3060" if vram_gb <= 12 else "RTX 4070"


def plan_for(config, vram_gb: float):
    """`config` (a TrainConfig) changed to the fastest way that fits `vram_gb`, and that Option."""
    import dataclasses

    from shardtune.errors import UserError

    batch = config.batch_size * config.grad_accum
    found = best(options(config.model, batch, config.max_length, vram_gb, config.lora_r or 16), vram_gb,
                 default_card(vram_gb))
    if found is None:
        raise UserError(f"nothing fits {vram_gb:g} GB for {config.model} at {batch} x {config.max_length} tokens, "
                        f"not even QLoRA with checkpointing one row at a time, with {RESERVED_MB} MB kept for the CUDA "
                        "context; try a shorter --max-length")
    adapters = found.technique in ("lora", "qlora")
    return dataclasses.replace(
        config, batch_size=found.micro_batch, grad_accum=found.grad_accum, grad_checkpointing=found.checkpointing,
        lora_r=(config.lora_r or 16) if adapters else 0, quantize="nf4" if found.technique == "qlora" else "none",
        optim="adamw8bit" if found.technique == "full-8bit" else config.optim if adapters else "adamw"), found


def fits(option: Option, vram_gb: float) -> bool:
    return option.peak_mb * MARGIN + RESERVED_MB <= vram_gb * 1024


def best(candidates: list[Option], vram_gb: float, card: str) -> Option | None:
    """The fastest option that fits; between equals, the technique that trains more of the model."""
    fitting = [o for o in candidates if fits(o, vram_gb)]
    return max(fitting, key=lambda o: (round(o.tokens_per_s[card]), -TECHNIQUES.index(o.technique)), default=None)
