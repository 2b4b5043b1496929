"""`shardtune bench fits`: what fits a 6 GB and a 12 GB card, model by model and technique by
technique, with predicted tokens/s on an RTX 2060, 3060 and 4070 (the planner's estimates:
train/plan.py). Prints a markdown table for benchmarks/RESULTS.md."""

from __future__ import annotations

from dataclasses import dataclass

from shardtune.errors import UserError
from shardtune.options import Config, add_command, option
from shardtune.train.config import PLAN_MAX_LENGTH

MODELS = "smollm2-135m,smollm2-360m,qwen2.5-0.5b,qwen2.5-1.5b,llama-3.2-1b,tinyllama-1.1b,gpt2-medium,gpt2-large"


@dataclass
class BenchFitsConfig(Config):
    SECTION = "bench.fits"

    models: str = option(MODELS, "comma-separated presets or config folders", metavar="NAMES")
    batch_size: int = option(16, "effective batch", min=1, max=4096)
    max_length: int = option(256, "tokens per example, every row full", min=8, max=PLAN_MAX_LENGTH)

    def names(self) -> list[str]:
        return [m.strip() for m in self.models.split(",") if m.strip()]

    def validate(self) -> None:
        if not self.names():
            raise UserError(f"--models lists no model (got {self.models!r}); give comma-separated presets or config "
                            f"folders, e.g. {MODELS.split(',')[0]},tiny")


def add_parser(sub) -> None:
    add_command(sub, "fits", BenchFitsConfig, run, help="what fits 6 and 12 GB cards, per model and technique",
                description=__doc__.split("\n\n", 1)[0])


def run(args, config) -> int:
    from shardtune.console import log
    from shardtune.train.plan import TECHNIQUES, best, options

    cards = ("RTX 2060", "RTX 3060", "RTX 4070")
    lines = ["| model | card | technique | checkpointing | micro x accum | est. peak MB | "
             + " | ".join(f"{c} tokens/s" for c in cards) + " |", "|" + " --- |" * (6 + len(cards))]
    for model in config.names():
        log(f"bench fits: {model} ...")
        found = options(model, config.batch_size, config.max_length, 6.0)
        for vram, card in ((6.0, "RTX 2060"), (12.0, "RTX 3060")):
            fastest = best(found, vram, card)
            for technique in TECHNIQUES:
                choice = best([o for o in found if o.technique == technique], vram, card)
                if choice is None:
                    lines.append(f"| {model} | {vram:g} GB | {technique} | | does not fit |" + " |" * (1 + len(cards)))
                    continue
                mark = " **(fastest)**" if choice is fastest else ""
                lines.append(f"| {model} | {vram:g} GB | {technique}{mark} | {'yes' if choice.checkpointing else ''} | "
                             f"{choice.micro_batch} x {choice.grad_accum} | {choice.peak_mb:,.0f} | "
                             + " | ".join(f"{choice.tokens_per_s[c]:,.0f}" for c in cards) + " |")
    print("\n".join(lines))
    return 0
