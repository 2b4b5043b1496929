"""The seed notebook's generation, kept only as the benchmark's baseline: plain
`model.generate` one question at a time, greedy, no batching."""

from __future__ import annotations

import time

import torch

from .common import sync_device


def seed_generate(model, eos_id: int, prompts: list[list[int]], max_new_tokens: int) -> tuple[float, int, float]:
    """(seconds, answer tokens up to EOS, mean time to first token) over `prompts`."""
    device = next(model.parameters()).device
    start, generated, first_token = time.perf_counter(), 0, []
    for prompt in prompts:
        ids = torch.tensor([prompt], device=device)
        t0 = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False,
                       pad_token_id=eos_id)
        sync_device()
        first_token.append(time.perf_counter() - t0)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=eos_id)
        new = out[0, ids.shape[1]:].tolist()
        generated += new.index(eos_id) if eos_id in new else len(new)
    sync_device()
    seconds = time.perf_counter() - start - sum(first_token)
    return seconds, generated, sum(first_token) / len(first_token)
