"""The training loss, computed only where a token is predicted, without ever holding
the full logits: the output layer runs in chunks whose gradients are taken at once.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

IGNORE = -100  # target of rows that carry no loss


@contextmanager
def rows_not_packed():
    """Tell transformers that no row packs several examples (each holds one, its positions from
    0), which it otherwise checks on every forward pass without a key/value cache (training under
    activation checkpointing, which turns the cache off) by reading a value back from the device:
    one host synchronisation per micro-step. Where a transformers version has no such check,
    there is nothing to tell."""
    try:
        from transformers import masking_utils
        check = masking_utils.find_packed_sequence_indices
    except (ImportError, AttributeError):  # pragma: no cover - a transformers without the check
        yield
        return
    masking_utils.find_packed_sequence_indices = _not_packed
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = check


def _not_packed(position_ids):
    return None  # transformers' answer for "one sequence per row"


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

    def __init__(self, model, body=None) -> None:
        super().__init__()
        self.model = model
        self.body = body  # a compiled model.base_model, or None for the eager one

    def forward(self, input_ids, position_ids, predict_at, targets):
        # No attention mask: batches are padded on the right, and a causal model never
        # lets a real token see a later (padding) one. Without a mask, attention takes
        # the causal fast path (flash attention on a GPU) and no mask is ever built.
        # Evaluation (no gradients) runs the eager body: a compiled one would compile, and on CUDA
        # record graphs of, a second, no-grad variant of every shape for a pass that runs rarely.
        run = self.body if self.body is not None and torch.is_grad_enabled() else self.model.base_model
        with rows_not_packed():
            body = run(input_ids=input_ids, position_ids=position_ids)
        hidden = body.last_hidden_state.flatten(0, 1).index_select(0, predict_at)
        head = self.model.get_output_embeddings()
        if getattr(head, "bias", None) is not None:  # rare for causal LMs; fall back to the plain path
            return nn.functional.cross_entropy(head(hidden).float(), targets, reduction="sum", ignore_index=IGNORE)
        device = hidden.device.type
        if not torch.amp.is_autocast_available(device):  # the meta device (bench overhead)
            return linear_cross_entropy(hidden, head.weight, targets)
        if torch.is_autocast_enabled(device):
            hidden = hidden.to(torch.get_autocast_dtype(device))
        with torch.autocast(device, enabled=False):
            return linear_cross_entropy(hidden, head.weight, targets)


def batch_loss(loss_fn, batch):
    """Summed loss of one Batch (train.data) under `loss_fn` (an AnswerLoss, possibly wrapped in DDP)."""
    return loss_fn(batch.input_ids, batch.position_ids, batch.predict_at, batch.targets)


@torch.no_grad()
def summed_loss(forward, batches) -> tuple[float, int]:
    """(summed loss, predicted tokens) over batches: validation loss for training and for `eval`.
    The sum stays on the device until the end: one read-back, not one per batch."""
    loss, tokens = None, 0
    for batch in batches:
        part = forward(batch)
        loss = part if loss is None else loss + part
        tokens += batch.predicted
    return (float(loss) if loss is not None else 0.0), tokens
