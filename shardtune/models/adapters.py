"""Training less than the whole model: LoRA adapters (peft) over a base that may be held in
4 bits (QLoRA, bitsandbytes NF4).

peft injects its layers into the model's own modules, so the Hugging Face model inside a
PeftModel (`unwrap`) runs the adapters: the chunked loss calls its body and head as for a
full model. A checkpoint or an `adapter/` folder holds the adapter alone; `final/` holds
the base with the adapter merged in, a plain model folder.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from shardtune.errors import UserError, first_line
from shardtune.hub import quiet_transformers

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def bitsandbytes(what: str, instead: str):
    """The bitsandbytes module, or a one-line error saying what to use instead."""
    quiet_transformers()  # before bitsandbytes is imported
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise UserError(f"{what} needs the bitsandbytes package, which is not installed "
                        f"(pip install 'shardtune[qlora]'); or use {instead}") from None
    return bnb


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def unwrap(model: Any) -> Any:
    """The Hugging Face causal LM itself (inside a PeftModel, with the adapters injected)."""
    return model.get_base_model() if is_peft(model) else model


def add_lora(model: Any, r: int, alpha: float, dropout: float, targets: str) -> Any:
    """Freeze `model` and wrap it with LoRA adapters on `targets` ("all-linear": every linear layer
    of the body, the output layer excluded; or comma-separated module names)."""
    quiet_transformers()  # before peft imports bitsandbytes
    import peft

    names: Any = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    output = model.get_output_embeddings()
    head = next((name for name, module in model.named_modules() if module is output), None)
    if head and names != "all-linear" and any(head == t or head.endswith("." + t) for t in names):
        # peft matches a name or a dotted suffix; the loss never calls this layer's forward (it takes the
        # weight, chunk by chunk), so an adapter there would get no gradient
        raise UserError(f"--lora-targets names the output layer ({head}), which the chunked loss computes from "
                        "its weight alone; adapt the body's layers instead (the default: all-linear)")
    from transformers.pytorch_utils import Conv1D

    # GPT-2's layers are Conv1D, weights stored (in, out): said here, peft need not warn that it sets it
    conv1d = any(isinstance(m, Conv1D) for m in model.modules())
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=names,
                             task_type="CAUSAL_LM", fan_in_fan_out=conv1d)
    try:
        with warnings.catch_warnings():  # peft reads an attribute transformers deprecated: nothing a user can do
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                    category=FutureWarning)
            return peft.get_peft_model(model, config)
    except ValueError as e:  # peft's NoMatchingPeftModuleError is a ValueError
        raise UserError(f"--lora-targets {targets!r} names no layer of this model: {first_line(e)}") from None


def quantize_nf4(model: Any, compute_dtype: torch.dtype, device: torch.device) -> Any:
    """Hold the linear layers of the model's body in 4 bits (NF4, bitsandbytes), quantized on
    `device`; they compute in `compute_dtype`. The output layer and the embeddings stay as they are."""
    from transformers.pytorch_utils import Conv1D

    bnb = bitsandbytes("--quantize nf4", "--quantize none (LoRA over a 16-bit base)")
    body = unwrap(model).base_model
    for parent in list(body.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, (torch.nn.Linear, Conv1D)):
                continue
            weight = child.weight.data.T if isinstance(child, Conv1D) else child.weight.data  # Conv1D is (in, out)
            layer = bnb.nn.Linear4bit(weight.shape[1], weight.shape[0], bias=child.bias is not None,
                                      compute_dtype=compute_dtype, quant_type="nf4", device="meta")
            # On a CPU with AVX512-BF16, bitsandbytes repacks the weight for its inference kernel the
            # first time the layer runs in eval mode (our evaluations) and keeps that layout when
            # training resumes: a kernel without autograd, whose in-place bias add then fails.
            layer.support_avx512bf16_for_cpu = False
            layer.weight = bnb.nn.Params4bit(weight.contiguous(), requires_grad=False, quant_type="nf4")._quantize(
                device.type if device.type == "cpu" else device)
            if child.bias is not None:
                layer.bias = torch.nn.Parameter(child.bias.data.to(device), requires_grad=False)
            setattr(parent, name, layer)
    return model


def save_weights(model: Any, folder: Path) -> None:
    """A checkpoint's weights: the adapter for LoRA, the whole model otherwise (safetensors)."""
    model.save_pretrained(folder, safe_serialization=True)


def _checked(weights: dict, folder: Path) -> dict:
    """Weights that are numbers a run can continue from: floating point (load_state_dict would
    cast integers silently) and finite (a checkpoint is written only from finite weights)."""
    import torch

    for name, tensor in weights.items():
        if not tensor.is_floating_point():
            raise UserError(f"cannot resume from {folder}: its weight {name} is {tensor.dtype}, not floating point "
                            "(it was replaced); delete that checkpoint to resume from an older one")
        if not bool(torch.isfinite(tensor).all()):
            raise UserError(f"cannot resume from {folder}: its weight {name} holds values that are not finite "
                            "(it was damaged); delete that checkpoint to resume from an older one")
    return weights


def load_weights(model: Any, folder: Path, read) -> None:
    """Load what save_weights wrote; `read(path, loader, what)` reads a file or raises a UserError."""
    from safetensors.torch import load_file

    device = str(next(model.parameters()).device)
    if is_peft(model):
        from peft import set_peft_model_state_dict

        weights = _checked(read(folder / ADAPTER_WEIGHTS, lambda p: load_file(p, device=device), "adapter file"),
                           folder)
        result = set_peft_model_state_dict(model, weights)
        if result.unexpected_keys:
            raise UserError(f"cannot resume from {folder}: its adapter does not fit this model "
                            f"(unexpected {result.unexpected_keys[:3]})")
        return
    weights = _checked(read(folder / "model.safetensors", lambda p: load_file(p, device=device), "safetensors file"),
                       folder)
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shapes differ
        raise UserError(f"cannot resume from {folder}: its weights do not fit this model "
                        f"({str(e).splitlines()[-1].strip()})") from None
    if unexpected or any(not k.endswith("lm_head.weight") for k in missing):  # lm_head is tied to the embeddings
        raise UserError(f"cannot resume from {folder}: its weights do not fit this model (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def merge_adapter(base: Any, adapter_dir: Path) -> Any:
    """`base` with the adapter saved in `adapter_dir` merged into its weights: a plain model."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
