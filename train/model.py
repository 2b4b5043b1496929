"""Building the model and choosing the numeric precision for the device.

`tiny` is a few-million-parameter GPT-2 with GPT-2's vocabulary, for the demo
and tests. A hub name loads pretrained weights when the hub is reachable; with
--from-scratch (or offline, where it is required) a GPT-2-family name gets an
architecture-identical model with fresh weights, so speed and memory figures hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from shardtune.console import log
from shardtune.errors import UserError
from shardtune.hub import hub_reachable, is_gpt2_family, is_local, quiet_transformers

# Architectures for fresh GPT-2-family weights (the published configs).
GPT2_SHAPES = {
    "tiny": dict(n_layer=2, n_head=4, n_embd=128, n_positions=512),
    "distilgpt2": dict(n_layer=6, n_head=12, n_embd=768, n_positions=1024),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, n_positions=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, n_positions=1024),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, n_positions=1024),
}


def fresh_gpt2(shape: str, vocab_size: int = 50257, eos_id: int = 50256):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id, **GPT2_SHAPES[shape])
    return GPT2LMHeadModel(config)


def fuse_gelu(model):
    """Swap GPT-2's `gelu_new`, written as eight elementwise ops, for the same tanh formula as
    one fused op: fewer kernels, and about 70 MB less activation memory per layer at batch
    16 x 256. The config says so, so the saved model loads with the fused op everywhere."""
    from transformers.activations import ACT2FN, NewGELUActivation

    if getattr(model.config, "activation_function", None) != "gelu_new":
        return model
    for parent in list(model.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, NewGELUActivation):
                setattr(parent, child_name, ACT2FN["gelu_pytorch_tanh"])
    model.config.activation_function = "gelu_pytorch_tanh"
    return model


def enable_activation_checkpointing(model) -> None:
    """Recompute each layer's activations in the backward pass (transformers renamed the method)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def load_model(name: str, from_scratch: bool, vocab_size: int, eos_id: int, fast_gelu: bool = True):
    """A causal LM from a folder, the hub, or fresh weights, with GPT-2's GELU fused
    (`fast_gelu=False` keeps the stock one, for the seed's benchmark baseline)."""
    model = _load_model(name, from_scratch, vocab_size, eos_id)
    return fuse_gelu(model) if fast_gelu else model


def _load_model(name: str, from_scratch: bool, vocab_size: int, eos_id: int):
    """A causal LM from a folder, the hub, or fresh weights; user mistakes become UserError."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    base = name.rstrip("/").split("/")[-1].lower()
    if name == "tiny":
        return fresh_gpt2("tiny", vocab_size, eos_id)
    if is_local(name):
        try:
            return AutoModelForCausalLM.from_pretrained(name)
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{name} is not a causal language model folder transformers can load: "
                            f"{str(e).splitlines()[0]}") from None
    if from_scratch:
        if not is_gpt2_family(name):
            raise UserError(f"--from-scratch knows the GPT-2 family ({', '.join(GPT2_SHAPES)}), not {name!r}")
        return fresh_gpt2(base, vocab_size, eos_id)
    if not hub_reachable():
        try:
            return AutoModelForCausalLM.from_pretrained(name, local_files_only=True)
        except (OSError, ValueError):
            hint = " or --from-scratch for fresh weights in its architecture" if is_gpt2_family(name) else ""
            raise UserError(f"cannot load model {name!r}: the Hugging Face hub is unreachable and it is not in the "
                            f"local cache; pass a downloaded model folder{hint}") from None
    try:
        return AutoModelForCausalLM.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None


@dataclass
class Precision:
    name: str  # bf16, fp16 or fp32
    autocast_dtype: torch.dtype | None
    use_scaler: bool


def choose_precision(device: torch.device, wanted: str = "auto") -> Precision:
    """bf16 where the GPU supports it (Ampere and newer), fp16 with a gradient scaler on
    older GPUs such as the RTX 2060 (Turing has no bf16), fp32 on the CPU."""
    if device.type != "cuda":
        if wanted in ("bf16", "fp16"):
            log(f"train: {wanted} asked for, but there is no GPU; using fp32")
        return Precision("fp32", None, False)
    if wanted == "auto":
        wanted = "bf16" if torch.cuda.is_bf16_supported() and torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
    if wanted == "bf16":
        return Precision("bf16", torch.bfloat16, False)
    if wanted == "fp16":
        return Precision("fp16", torch.float16, True)
    return Precision("fp32", None, False)


IGNORE = -100  # target of rows that carry no loss


def _chunked_cross_entropy(hidden, weight, target, grad_hidden: bool, grad_weight: bool):
    """(summed loss, d loss/d hidden or None, d loss/d weight or None), one chunk of logits at a time."""
    chunk = ChunkedLinearCrossEntropy.CHUNK
    acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32, or fp64 when given fp64
    w = weight.to(hidden.dtype)  # once per call, not per chunk
    total = hidden.new_zeros((), dtype=acc)
    gh = torch.empty_like(hidden) if grad_hidden else None
    gw = torch.zeros_like(weight, dtype=acc) if grad_weight else None
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start:start + chunk], target[start:start + chunk]
        logits = (h @ w.T).to(acc)
        lse = torch.logsumexp(logits, dim=-1)
        valid = t != IGNORE
        t = t.clamp(min=0)
        total += torch.where(valid, lse - logits.gather(1, t[:, None]).squeeze(1), 0).sum()
        if grad_hidden or grad_weight:
            grad = torch.exp_(logits.sub_(lse[:, None]))  # softmax, in place
            grad[torch.arange(len(t), device=t.device), t] -= 1
            grad = grad.mul_(valid[:, None]).to(h.dtype)  # ignored rows get no gradient
            if grad_hidden:
                gh[start:start + len(t)] = grad @ w
            if grad_weight:
                gw.add_(grad.T @ h)  # accumulates in fp32 without an fp32 copy of the product
    return total, gh, gw


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum(cross_entropy(hidden @ weight.T, target)) without ever holding all the logits
    (rows whose target is -100 count for nothing).

    The output layer of a 50,257-token vocabulary makes 200 KB of fp32 logits per
    predicted token, and autograd would keep them (and their gradient) alive: about
    1 GB at batch 16 x 256. Here the logits are made CHUNK rows at a time, and the
    gradients for `hidden` and `weight` are computed right away in the forward pass,
    so at most one chunk of logits exists at any time.
    """

    CHUNK = 1024

    @staticmethod
    def forward(ctx, hidden, weight, target):
        total, gh, gw = _chunked_cross_entropy(hidden, weight, target, *ctx.needs_input_grad[:2])
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(gh if gh is not None else hidden.new_empty(0),
                              gw if gw is not None else weight.new_empty(0))
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = grad_hidden * grad_output.to(grad_hidden.dtype) if ctx.needs_input_grad[0] else None
        gw = (grad_weight * grad_output).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None


def linear_cross_entropy(hidden, weight, target):
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return ChunkedLinearCrossEntropy.apply(hidden, weight, target)
    with torch.no_grad():
        return _chunked_cross_entropy(hidden, weight, target, False, False)[0]


class AnswerLoss(nn.Module):
    """The model plus its loss, computed only where a token is predicted.

    Runs the transformer body, keeps the hidden states of the positions whose next
    token carries a label (their flat indices come precomputed from the CPU, so the
    GPU never waits on a boolean mask), and applies the output layer only there,
    in chunks. Returns the summed loss so that accumulation and evaluation weigh
    every token alike.
    """

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, predict_at, targets):
        # No attention mask: batches are padded on the right, and a causal model never
        # lets a real token see a later (padding) one. Without a mask, attention takes
        # the causal fast path (flash attention on a GPU) and no mask is ever built.
        body = self.model.base_model(input_ids=input_ids, position_ids=position_ids)
        hidden = body.last_hidden_state.flatten(0, 1).index_select(0, predict_at)
        head = self.model.get_output_embeddings()
        if getattr(head, "bias", None) is not None:  # rare for causal LMs; fall back to the plain path
            return nn.functional.cross_entropy(head(hidden).float(), targets, reduction="sum", ignore_index=IGNORE)
        if torch.is_autocast_enabled(hidden.device.type):
            hidden = hidden.to(torch.get_autocast_dtype(hidden.device.type))
        with torch.autocast(hidden.device.type, enabled=False):
            return linear_cross_entropy(hidden, head.weight, targets)


def batch_loss(loss_fn, batch):
    """Summed loss of one Batch (train.data) under `loss_fn` (an AnswerLoss, possibly wrapped in DDP)."""
    return loss_fn(batch.input_ids, batch.position_ids, batch.predict_at, batch.targets)


@torch.no_grad()
def summed_loss(forward, batches) -> tuple[float, int]:
    """(summed loss, predicted tokens) over batches: validation loss for training and for `eval`."""
    loss = tokens = 0
    for batch in batches:
        loss += float(forward(batch))
        tokens += batch.predicted
    return loss, tokens
