"""`shardtune bench planner`: the planner's peak-memory estimate against the peak measured on a GPU.

For each case (a model, a technique, a card size) the planner (train/plan.py) picks its
fastest micro-batch split and checkpointing that fits; that configuration then trains for
a few steps in its own process under SHARDTUNE_GPU_MEMORY_GB, on examples that fill every
one of the 256 positions with every position predicted (`--loss-on prompt+answer`): the
worst case the planner plans for. Printed per case: the estimate, torch's
max_memory_allocated, the error, whether the run fitted the cap, and milliseconds per
step beside the step-time model's prediction for this GPU. `--dry-run` runs the same code
paths on the CPU (tiny model, LoRA; the peak is then the process's RSS).

Needs on the GPU: bitsandbytes for the QLoRA and 8-bit AdamW cases (benchmarks/gpu.sh
carries its wheel).
"""

from __future__ import annotations

import datetime
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from shardtune.options import Config, add_command, option

# (model, technique, card GB): the goals for 6 and 12 GB cards, plus the small and
# the large end; 0 GB means no cap (Llama-3.2-1B fully fine-tuned: what it takes)
CASES = (("distilgpt2", "full", 6), ("smollm2-135m", "full", 6), ("smollm2-360m", "full-8bit", 6),
         ("llama-3.2-1b", "lora", 6), ("qwen2.5-1.5b", "qlora", 6), ("qwen2.5-0.5b", "full", 12),
         ("llama-3.2-1b", "lora", 12), ("llama-3.2-1b", "full", 0))
DRY_CASES = (("tiny", "lora", 6),)  # on the CPU each case is the same plumbing; LoRA adds peft to it


@dataclass
class BenchPlannerConfig(Config):
    SECTION = "bench.planner"

    dry_run: bool = option(False, "the same code paths on the CPU, tiny model, two steps")
    steps: int = option(4, "optimizer steps a case (the peak comes with the optimizer state, from step 2)", min=2)
    workdir: str = option("runs/bench-planner", "scratch folder", metavar="DIR")
    out: str = option("", "markdown file to write (default: WORKDIR/planner-DATE.md)", metavar="FILE")


def add_parser(sub) -> None:
    add_command(sub, "planner", BenchPlannerConfig, run, help="the planner's memory estimate vs measured GPU peaks",
                description=__doc__.split("\n\n", 1)[1])


def run(args, config) -> int:
    return bench_planner(config)


def full_rows(workdir: Path, examples: int = 400) -> Path:
    """Token shards whose every example is longer than 256 tokens (generated catalogue
    records, their descriptions joined), made with pyarrow and the GPT-2 BPE alone."""
    import pyarrow as pa

    from shardtune.data.synth import synth_lines
    from shardtune.etl.shards import ShardWriter
    from shardtune.manifest import EtlManifest, InputFile
    from shardtune.tokens.config import TokenizeConfig
    from shardtune.tokens.tokenize import run_tokenize

    etl, tokens = workdir / "etl", workdir / "tokens"
    if (tokens / "manifest.json").exists():
        return tokens
    records = [json.loads(line) for line in synth_lines(examples * 8, seed=1)]
    words = " ".join(r["content"] for r in records).split()
    per = len(words) // examples  # about 8 descriptions' words an example: well past 256 tokens
    table = pa.table({"uid": [str(i) for i in range(examples)], "title": [r["title"] for r in records[:examples]],
                      "content": [" ".join(words[i * per:(i + 1) * per]) for i in range(examples)]})
    etl.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(etl, examples)
    writer.write(table)
    EtlManifest(inputs=[InputFile("synth", 0, examples, examples)], lines_read=examples, records_kept=examples,
                dropped={}, malformed=0, malformed_reasons={}, shards=writer.close(), options={"long": True},
                duration_s=0.0).write(etl)
    run_tokenize(etl, tokens, TokenizeConfig(val_fraction=0.05))
    return tokens


def probe(tokens: str, run_dir: str, train_flags: str, out: str) -> None:
    """In a process of its own: build the trainer as `shardtune train` does, run its steps
    (no evaluation, checkpoint or export, so the peak is the training step's), write the figures."""
    import time

    import torch

    from shardtune.train.config import TrainConfig
    from shardtune.train.device import peak_memory_mb
    from shardtune.train.loop import Trainer

    config = TrainConfig(**json.loads(train_flags))
    cuda = torch.cuda.is_available()
    result: dict = {"fits": False, "step_ms": 0.0}
    trainer = None
    try:
        trainer = Trainer(Path(tokens), Path(run_dir), config)
        seconds = []
        for _ in range(config.max_steps):
            start = time.perf_counter()
            trainer.train_step()
            float(trainer.counters.loss)  # wait for the step: a read-back, here on purpose
            seconds.append(time.perf_counter() - start)
        result.update(fits=True, step_ms=sorted(seconds[1:])[len(seconds[1:]) // 2] * 1000)
    except torch.cuda.OutOfMemoryError:
        pass  # did not fit the cap: recorded as such
    finally:
        if trainer is not None:
            trainer.close()
    result.update(peak_mb=peak_memory_mb(torch.device("cuda" if cuda else "cpu")),
                  reserved_mb=torch.cuda.max_memory_reserved() / 2**20 if cuda else 0.0)
    Path(out).write_text(json.dumps(result))


def bench_planner(config: BenchPlannerConfig) -> int:
    import shutil

    import torch

    from shardtune.console import log
    from shardtune.errors import UserError
    from shardtune.models import is_fresh_only
    from shardtune.train.plan import MARGIN, RESERVED_MB, best, default_card, measure, options
    from shardtune.train.steptime import card_named

    from .common import device_name, markdown_table, print_table, run_measured, scratch_dir, write_report

    cuda = torch.cuda.is_available()
    if not cuda and not config.dry_run:
        raise UserError("bench planner needs an NVIDIA GPU; --dry-run runs the same code paths on the CPU")
    workdir = scratch_dir(config.workdir)
    tokens = full_rows(workdir, 400 if cuda else 48)
    batch, length = (16, 256) if cuda else (4, 64)
    card = card_named(torch.cuda.get_device_name(0)) if cuda else None
    rows, errors = [], []
    for model, technique, gb in (CASES if cuda else DRY_CASES):
        log(f"bench planner: {model}, {technique}, {gb or 'no'} GB cap ...")
        vram = gb or 1024.0
        choice = best(options(model, batch, length, vram, techniques=(technique,)), vram, default_card(vram))
        if choice is None:
            rows.append([model, technique, f"{gb} GB", "does not fit (planner)"] + [""] * 6)
            continue
        flags = {"model": model, "from_scratch": not is_fresh_only(model), "max_length": length,
                 "batch_size": choice.micro_batch, "grad_accum": choice.grad_accum, "loss_on": "prompt+answer",
                 "grad_checkpointing": choice.checkpointing, "precision": "fp16", "max_steps": config.steps,
                 "lora_r": 16 if technique in ("lora", "qlora") else 0,
                 "quantize": "nf4" if technique == "qlora" else "none",
                 "optim": "adamw8bit" if technique == "full-8bit" else "adamw"}
        run_dir, out = workdir / f"run-{model}-{technique}-{gb}", workdir / f"probe-{model}-{technique}-{gb}.json"
        shutil.rmtree(run_dir, ignore_errors=True)
        try:
            run_measured(["-m", "shardtune.benchmarks.bench_planner", str(tokens), str(run_dir), json.dumps(flags),
                          str(out)], {"SHARDTUNE_GPU_MEMORY_GB": str(gb)} if gb else None)
        except UserError as e:  # one case that cannot run (a package missing, say) does not end the others
            log(f"bench planner: {model} {technique} failed: {e}")
            rows.append([model, technique, f"{gb} GB", "failed: " + str(e).splitlines()[-1][:80]] + [""] * 6)
            continue
        got = json.loads(out.read_text())
        log(f"bench planner: {model} {technique}: {got}")
        predicted = ""
        if card is not None and card.name in choice.tokens_per_s:
            e = measure(model, technique, choice.checkpointing, choice.micro_batch, length, torch.float16)
            predicted = f"{e.seconds(card.name) * choice.grad_accum * 1000:,.0f}"
        error = got["peak_mb"] / choice.peak_mb - 1
        measured = got["fits"] and cuda  # on the CPU the peak is the process's RSS: no error to speak of
        if measured:
            errors.append(abs(error))
        rows.append([model, technique, f"{gb} GB" if gb else "none",
                     f"{choice.micro_batch} x {choice.grad_accum}{', ckpt' if choice.checkpointing else ''}",
                     f"{choice.peak_mb:,.0f}", f"{got['peak_mb']:,.0f}" if got["fits"] else "out of memory",
                     f"{error:+.1%}" if measured else "", f"{got['reserved_mb']:,.0f}",
                     f"{got['step_ms']:,.0f}" if got["fits"] else "", predicted])
    columns = ["model", "technique", "cap", "micro x accum", "estimate MB", "measured MB" if cuda else "RSS MB", "error", "reserved MB",
               "ms/step", "predicted ms/step"]
    title = (f"{datetime.date.today().isoformat()}, {device_name()}, torch {torch.__version__}: every row "
             f"{length} tokens, all predicted, effective batch {batch}, {'fp16' if cuda else 'fp32'}")
    summary = (f"largest |error| {max(errors):.1%} over {len(errors)} measured configurations (goal 10%); the planner "
               f"keeps a {MARGIN - 1:.0%} margin and {RESERVED_MB} MB for the CUDA context") if errors else \
        "no GPU peak measured (a dry run's RSS counts the libraries, not a step's tensors)"
    print_table(title, columns, rows, summary)
    lines = [f"### `shardtune bench planner{' --dry-run' if config.dry_run else ''}`: {title}", "",
             *markdown_table(columns, rows), "", summary[0].upper() + summary[1:] + "."]
    path = Path(config.out) if config.out else workdir / f"planner-{datetime.date.today().isoformat()}.md"
    write_report(path, lines, "bench planner")
    return 0


if __name__ == "__main__":
    probe(*sys.argv[1:])
