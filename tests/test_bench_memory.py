"""The GPU memory estimate: a fake-tensor training step, counted like max_memory_allocated."""

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from shardtune.benchmarks.seed_train import seed_step
from shardtune.train.memory import LiveBytes, estimate_peak_mb, shardtune_step


def test_live_bytes_counts_what_is_alive_in_allocator_blocks():
    tracker = LiveBytes()
    with FakeTensorMode(), tracker:
        a = torch.empty(1000)  # 4,000 bytes: 4,096 in 512-byte blocks
        b = torch.empty(10)  # 40 bytes: one block
        view = a[:10]  # a view allocates nothing
        del a, view  # freed: no longer counted
        c = torch.empty(100)  # 400 bytes: one block
        assert tracker.live == 1024  # b and c
        del c
        assert tracker.live == 512
    assert tracker.peak == 4096 + 512 and b.shape == (10,)


def test_a_distilgpt2_step_fits_a_6gb_card_with_room_and_beats_the_seed():
    # Worst case at the seed's shape, batch 16 x 256 with every row full. Deterministic:
    # no timing, no GPU. benchmarks/RESULTS.md checks the estimate against measured peaks.
    ours = estimate_peak_mb(shardtune_step, "distilgpt2", True, 16, 256, torch.bfloat16)
    seed = estimate_peak_mb(seed_step, "distilgpt2", False, 16, 256, torch.float16)
    params_grads_adam = 81_912_576 * 4 * 4 / 2**20  # fp32 weights, gradients and two AdamW moments
    assert params_grads_adam < ours < 4096 < seed


def test_bench_memory_refuses_shapes_it_cannot_build(capsys):
    from shardtune.cli import main

    assert main(["bench", "memory", "--model", "llama"]) == 2
    assert "cannot read the config of 'llama'" in capsys.readouterr().err
    assert main(["bench", "memory", "--max-length", "2000"]) == 2
    assert "from 2 to 1,024" in capsys.readouterr().err
