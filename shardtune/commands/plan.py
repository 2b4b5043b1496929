"""`shardtune plan --model M --vram 6`: what fits the card, and the fastest of it as a train command."""

from __future__ import annotations

from shardtune.options import add_command
from shardtune.train.config import PlanConfig


def add_parser(sub) -> None:
    add_command(sub, "plan", PlanConfig, run, help="what fits a card of N GB, and the fastest of it",
                description="Estimate, without a GPU, the peak GPU memory and the tokens/s on RTX cards of full "
                "fine-tuning (AdamW or 8-bit AdamW), LoRA and QLoRA, with and without activation checkpointing, "
                "at micro-batch x accumulation splits that keep the batch; print them and the fastest that fits "
                "with a safety margin, as a ready `shardtune train` command. `shardtune train --vram N` applies it. "
                "Exits 0 with a plan, 1 when nothing fits (so a script can tell), 2 for a mistake in the command.")


def run(args, config: PlanConfig) -> int:
    from shardtune.benchmarks.common import print_table
    from shardtune.console import say
    from shardtune.train.plan import MARGIN, RESERVED_MB, best, default_card, fits, options

    card = config.card or default_card(config.vram)
    found = options(config.model, config.batch_size, config.max_length, config.vram, config.lora_r)
    found.sort(key=lambda o: (not fits(o, config.vram), -o.tokens_per_s[card]))
    cards = ("RTX 2060", "RTX 3060", "RTX 4070")
    rows = [[o.technique, "yes" if o.checkpointing else "", f"{o.micro_batch} x {o.grad_accum}", f"{o.peak_mb:,.0f}",
             "yes" if fits(o, config.vram) else "no", *(f"{o.tokens_per_s[c]:,.0f}" for c in cards)] for o in found]
    choice = best(found, config.vram, card)
    print_table(f"{config.model} at {config.batch_size} x {config.max_length} tokens on a {config.vram:g} GB card "
                f"(estimates; every row full)", ["technique", "checkpointing", "micro x accum", "peak MB",
                                                  f"fits {config.vram:g} GB", *(f"{c} tokens/s" for c in cards)], rows,
                f"fits: peak x {MARGIN} + {RESERVED_MB} MB for the CUDA context and workspace <= {config.vram:g} GB. "
                f"Ranked by {card}.")
    if choice is None:
        say(f"nothing fits {config.vram:g} GB; try a shorter --max-length or a smaller model")
        return 1
    say(f"fastest that fits: {choice.technique}{' with checkpointing' if choice.checkpointing else ''}, "
        f"micro-batch {choice.micro_batch} x {choice.grad_accum}, {choice.peak_mb:,.0f} MB, "
        f"{choice.tokens_per_s[card]:,.0f} tokens/s on an {card}")
    say(f"shardtune train TOKENS --out RUN --model {config.model} --max-length {config.max_length} "
        + " ".join(choice.flags(config.lora_r)))  # the length planned for: train's default may be another
    return 0
