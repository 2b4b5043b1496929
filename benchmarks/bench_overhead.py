"""`shardtune bench overhead`: what a training step costs the host, and what it should take
on each card, for this loop and the seed's Trainer, measured without a GPU.

Per approach, for the DistilGPT-2 shape at 16 x 256:
- operators dispatched and kernels launched per step (fake-tensor trace, autocast on), and
  kernels with the body compiled (inductor; with CUDA graphs the body is 2 graph replays);
- device->host reads per step (this loop: counted in its train_step; the seed: counted in
  the real Hugging Face Trainer loop);
- host milliseconds per step of the real loop, eager, on a micro twin of the model (every
  layer and operator, tensors of a few elements), so the arithmetic costs about a launch;
- distinct batch shapes per 1,000 steps on generated catalogue data;
- predicted tokens/s per card (train/steptime.py), the host speed fitted on the seed's
  step measured on an H100, checked against the earlier loop's measured step.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from shardtune.options import Config, add_command, option

# Measured on an NVIDIA H100 (benchmarks/RESULTS.md, "GPU" section): seconds per step at 16 x 256.
H100_SEED_STEP = 16 * 256 * (1 - 0.474) / 53_656  # the seed's Trainer: 53,656 useful tokens/s, 47.4% padding
H100_EARLIER_TOKENS_PER_S = 19_390  # the earlier loop; its step follows from its batches' mean length
EARLIER_REVISION = "b7dbee7"  # the loop measured on the H100 (RESULTS.md)


@dataclass
class BenchOverheadConfig(Config):
    SECTION = "bench.overhead"

    lines: int = option(4000, "generated catalogue lines for the length distribution", min=100)
    compiled: bool = option(True, "also compile the body with inductor to count its kernels (about a minute)")
    workdir: str = option("runs/bench-overhead", "scratch folder", metavar="DIR")


def add_parser(sub) -> None:
    add_command(sub, "overhead", BenchOverheadConfig, run,
                help="host time, kernels and syncs per step, and predicted tokens/s per card; no GPU needed",
                description=__doc__.split("\n\n", 1)[1])


def run(args, config) -> int:
    return bench_overhead(config)


def prepare_data(workdir: Path, lines: int) -> Path:
    """Generated catalogue lines, cleaned and tokenized to 256 tokens (reused when present)."""
    from shardtune.etl.pipeline import run_etl
    from shardtune.tokens.config import TokenizeConfig
    from shardtune.tokens.tokenize import run_tokenize

    from .common import synth_input

    tokens = workdir / "tokens"
    if not (tokens / "manifest.json").exists():
        run_etl([synth_input(workdir, lines, 0.0)], workdir / "etl")
        run_tokenize(workdir / "etl", tokens, TokenizeConfig(val_fraction=0.05))
    return tokens


# Run in one process of its own: the training command called in-process at n and at 2n steps,
# three times each. Timing whole processes instead let start-up (imports, seconds that vary by
# a second or two on a shared machine) swamp the 40 steps' 1-2 s: the difference came out <= 0.
_TIMER = """
import json, shutil, sys, time
from shardtune.cli import main
argv, steps = json.loads(sys.argv[1]), int(sys.argv[2])
out = argv[argv.index("--out") + 1]
def timed(n):
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    if main([*argv, "--max-steps", str(n)]):
        sys.exit("the training command failed")
    return time.perf_counter() - start
timed(2)  # the first call pays for the lazy imports
short, long = zip(*((timed(steps), timed(2 * steps)) for _ in range(3)))
print(json.dumps((min(long) - min(short)) / steps))
"""


def loop_seconds(command: list[str], steps: int, env: dict | None = None) -> float:
    """Host seconds per steady-state step of a `python -m shardtune.cli train ...` command:
    its time at 2 x `steps` minus its time at `steps` (start-up and the end cancel), the
    fastest of three of each, all in one process."""
    python, argv = command[0], command[3:]
    assert command[1:3] == ["-m", "shardtune.cli"], command
    done = subprocess.run([python, "-c", _TIMER, json.dumps(argv), str(steps)], capture_output=True, text=True,
                          env=env)
    if done.returncode:
        raise RuntimeError(f"timing {' '.join(argv[:1])} failed: {done.stderr.strip()[-500:]}")
    return max(0.0, json.loads(done.stdout.strip().splitlines()[-1]))


def twin_folder(workdir: Path, prepare: bool) -> Path:
    """The micro twin of DistilGPT-2, with GPT-2's vocabulary so it reads the token shards."""
    from shardtune.train.steptime import micro_twin

    folder = workdir / ("twin" if prepare else "twin-stock")
    if not (folder / "config.json").exists():
        import torch

        torch.manual_seed(0)
        model = micro_twin("distilgpt2", prepare=prepare)
        model.resize_token_embeddings(50257)
        model.save_pretrained(folder)
    return folder


def train_command(tokens: Path, run_dir: Path, model: Path) -> list[str]:
    # 16 tokens hold only the prompt, so the loss is put on every token: all positions are predicted
    return [sys.executable, "-m", "shardtune.cli", "train", str(tokens), "--out", str(run_dir), "--model", str(model),
            "--batch-size", "1", "--max-length", "16", "--loss-on", "prompt+answer", "--log-steps", "1000000",
            "--eval-steps", "1000000", "--save-steps", "1000000", "--eval-examples", "1"]


def earlier_loop_seconds(workdir: Path, tokens: Path) -> float | None:
    """The earlier loop's host seconds per step, running its own code from git on the micro twin."""
    src = workdir / "earlier"
    if not (src / "pkg" / "shardtune").exists():
        shutil.rmtree(src, ignore_errors=True)
        (src / "tree").mkdir(parents=True)
        archive = subprocess.run(["git", "archive", EARLIER_REVISION], capture_output=True,
                                 cwd=Path(__file__).resolve().parent.parent)
        if archive.returncode:
            return None  # not a git checkout: the calibration check is skipped
        subprocess.run(["tar", "-x", "-C", str(src / "tree")], input=archive.stdout, check=True)
        shutil.copytree(src / "tree" / "shardtune", src / "pkg" / "shardtune")
        for stage in ("etl", "train", "infer", "benchmarks"):
            (src / "pkg" / "shardtune" / stage).symlink_to((src / "tree" / stage).resolve())
    import os

    env = {**os.environ, "PYTHONPATH": str((src / "pkg").resolve()), "SHARDTUNE_PLAIN_LOGS": "1"}
    return loop_seconds(train_command(tokens, workdir / "run-earlier", twin_folder(workdir, prepare=False)), 40, env)


def earlier_step(batch: int, length: int, rows: int):
    """The earlier loop's step (git revision EARLIER_REVISION): an attention mask, the predicted
    positions gathered with a boolean mask, their full logits in fp32, then the same clipping and
    fused AdamW. Its read-backs: the mask gather's nonzero, float(loss), float(grad_norm) and
    Hugging Face's mask check, 4 a step (the gather is emulated here with a fixed-size index)."""
    import torch

    from shardtune.train.steptime import _fused_adamw, clip_grad_norm

    def make(device: str):
        input_ids = torch.zeros(batch, length, dtype=torch.long, device=device)
        mask = torch.ones(batch, length, dtype=torch.long, device=device)
        positions = torch.arange(length, device=device).expand(batch, length)
        keep, targets = (torch.zeros(rows, dtype=torch.long, device=device) for _ in range(2))

        def step(model, params, state):
            body = model.base_model(input_ids=input_ids, attention_mask=mask, position_ids=positions)
            hidden = body.last_hidden_state[:, :-1].flatten(0, 1).index_select(0, keep)
            logits = model.get_output_embeddings()(hidden)
            loss = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum") / rows
            loss.backward()
            clip_grad_norm(params, 1.0)
            _fused_adamw(params, state)

        return step

    return make


def compiled_body_kernels() -> int:
    """Kernels inductor generates for the DistilGPT-2 body's forward and backward (on its
    micro twin: the fusion does not depend on the width)."""
    import torch
    from torch._inductor.utils import run_and_get_code

    from shardtune.train.steptime import micro_twin

    model = micro_twin("distilgpt2").train()
    body = torch.compile(model.base_model)
    ids = torch.zeros(1, 16, dtype=torch.long)
    _, codes = run_and_get_code(lambda: body(input_ids=ids).last_hidden_state.sum().backward())
    launches = 0
    for code in codes:
        call = code[code.index("def call("):] if "def call(" in code else ""
        launches += len(re.findall(r"^\s+cpp_fused_\w+\(", call, re.M)) + len(re.findall(r"extern_kernels\.\w+\(", call))
    return launches


def body_kernels(dtype) -> int:
    """Kernels of the eager DistilGPT-2 body's forward and backward (the part compile replaces)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from shardtune.models import load_model
    from shardtune.train.memory import fused_attention
    from shardtune.train.trace import OpTrace

    with FakeTensorMode(), fused_attention():
        model = load_model("distilgpt2", from_scratch=True).train()
        ids = torch.zeros(16, 256, dtype=torch.long)
        trace = OpTrace()
        with torch.autocast("cpu", dtype=dtype), trace:
            model.base_model(input_ids=ids).last_hidden_state.sum().backward()
    return trace.kernels - 3  # the sum and its backward are not the body's


def shapes_per_1000_steps(lengths, batch_size: int = 16, max_length: int = 256) -> tuple[int, float]:
    """(distinct batch lengths over 1,000 steps, padding) for this loop's batches."""
    import numpy as np

    from shardtune.train.data import bucket_of, epoch_batches, length_buckets

    buckets = length_buckets(lengths, max_length, 16)
    shapes, real, padded, epoch, steps = set(), 0, 0, 0, 0
    while steps < 1000:
        for batch in epoch_batches(lengths, batch_size, 42, epoch, buckets=buckets)[:1000 - steps]:
            length = bucket_of(int(lengths[batch].max()), buckets, max_length)
            shapes.add(length)
            real += int(np.minimum(lengths[batch], max_length).sum())
            padded += batch_size * length - int(np.minimum(lengths[batch], max_length).sum())
            steps += 1
        epoch += 1
    return len(shapes), padded / (real + padded)


def bench_overhead(config: BenchOverheadConfig) -> int:
    import numpy as np
    import torch

    from shardtune.console import log
    from shardtune.manifest import TokensManifest
    from shardtune.tokens.shards import TokenShards
    from shardtune.train.data import bucket_of, length_buckets
    from shardtune.train.steptime import CARDS, calibrate, device_seconds, host_seconds, shardtune_step, \
        step_seconds, trace_step

    from .common import machine, print_table, scratch_dir
    from .seed_train import seed_collate_seconds, seed_train_step, seed_trainer_overhead

    workdir = scratch_dir(config.workdir)
    tokens = prepare_data(workdir, config.lines)
    manifest = TokensManifest.read(tokens)
    lengths = np.minimum(TokenShards(manifest.shard_paths(tokens, "train")).lengths, 256)
    buckets = length_buckets(lengths, 256, 16)
    mean_real = float(lengths.mean())
    mean_bucket = float(np.mean([bucket_of(int(n), buckets, 256) for n in lengths]))
    shapes, padding = shapes_per_1000_steps(lengths)

    log("bench overhead: tracing the steps at 16 x 256 ...")
    ours = trace_step("this loop", "distilgpt2", shardtune_step, torch.bfloat16, 16 * mean_real, 16, 256)
    ours_fp16 = trace_step("this loop, fp16", "distilgpt2", shardtune_step, torch.float16, 16 * mean_real, 16, 256)
    seed_syncs, seed_host = seed_trainer_overhead(twin_folder(workdir, prepare=False))
    seed = trace_step("seed", "distilgpt2", lambda b, n, r: seed_train_step(b, n), torch.float16,
                      16 * mean_real, 16, 256, prepare=False, syncs=seed_syncs,
                      collate_seconds=seed_collate_seconds() - seed_collate_seconds(1, 16))
    earlier = trace_step("earlier loop", "distilgpt2", earlier_step, torch.bfloat16, 16 * mean_real, 16, 256,
                         prepare=False, syncs=4)
    log("bench overhead: timing the real loops on the micro twin ...")
    ours.host_here = loop_seconds(train_command(tokens, workdir / "run-ours", twin_folder(workdir, True)), 40)
    ours_fp16.host_here = ours.host_here
    seed.host_here = seed_host
    earlier_host = earlier_loop_seconds(workdir, tokens)
    earlier.host_here = earlier_host or 0.0
    scale = mean_bucket / 256  # this loop's batches are bucket-long, not 256; so were the earlier loop's, near enough
    for trace in (ours, ours_fp16, earlier):
        trace.work = [(int(f * scale), int(b * scale)) for f, b in trace.work]

    h100 = CARDS[-1]
    speed = calibrate(seed, h100, H100_SEED_STEP)
    earlier_measured = 16 * mean_real / H100_EARLIER_TOKENS_PER_S
    rows = []
    for trace in (ours, seed):
        rows.append([trace.name, f"{trace.host_here * 1000:,.1f}", f"{trace.dispatched:,}", f"{trace.kernels:,}",
                     f"{trace.syncs:g}", f"{shapes if trace is ours else 1}", f"{padding if trace is ours else 0.474:.1%}"])
    if config.compiled:
        log("bench overhead: compiling the body with inductor ...")
        outside = ours.kernels - body_kernels(torch.bfloat16)
        rows.append(["this loop, --compile", "", "", f"{outside + compiled_body_kernels():,}", "0", f"{shapes}", ""])
        rows.append(["this loop, --compile, CUDA graphs", "", "", f"{outside + 2:,}", "0", f"{shapes}", ""])
    print_table(f"Per training step, DistilGPT-2 shape, batch 16 x up to 256, {machine()}",
                ["approach", "host ms/step (eager, here)", "ops dispatched", "kernels", "device->host reads",
                 "shapes / 1,000 steps", "padding"], rows)

    cards = []
    for card in CARDS:
        ours_trace = ours if card.bf16 else ours_fp16
        t_ours, t_seed = step_seconds(ours_trace, card, speed), step_seconds(seed, card, speed)
        cards.append([card.name, f"{device_seconds(ours_trace, card) * 1000:,.1f}",
                      f"{host_seconds(ours_trace, speed) * 1000:,.1f}", f"{ours.useful_tokens / t_ours:,.0f}",
                      f"{seed.useful_tokens / t_seed:,.0f}", f"{t_seed / t_ours * ours.useful_tokens / seed.useful_tokens:.2f}x"])
    check = (f"earlier loop on the H100: predicted {step_seconds(earlier, h100, speed) * 1000:,.1f} ms a step, "
             f"measured {earlier_measured * 1000:,.1f} ms "
             f"({step_seconds(earlier, h100, speed) / earlier_measured - 1:+.0%})" if earlier_host else
             "earlier loop: not a git checkout, calibration check skipped")
    print_table("Predicted steady-state training speed (useful tokens/s; train/steptime.py)",
                ["card", "device ms/step", "host ms/step", "this loop tokens/s", "seed tokens/s", "ratio"], cards,
                f"host speed fitted on the seed's H100 step ({H100_SEED_STEP * 1000:.1f} ms): {speed:.2f} host-seconds "
                f"there per second here; {check}. Mean example {mean_real:.0f} tokens, mean batch length "
                f"{mean_bucket:.0f}; the seed pads every example to 256.")
    (workdir / "overhead.json").write_text(json.dumps({"rows": rows, "cards": cards, "host_speed": speed}, indent=1))
    return 0
