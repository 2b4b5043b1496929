"""`shardtune eval --base M --tuned RUN/final --data TOKENS`: before and after, in numbers."""

from __future__ import annotations

from pathlib import Path

from shardtune.infer.config import EvalConfig
from shardtune.options import add_command


def add_parser(sub) -> None:
    p = add_command(sub, "eval", EvalConfig, run, help="compare a model before and after fine-tuning",
                    description="Perplexity on answer tokens, ROUGE-L, token F1 and the EOS rate of greedy "
                    "answers on held-out products, for the base and the tuned model; writes report.md, "
                    "report.json and loss.png.")
    p.add_argument("--base", required=True, help="the model before fine-tuning (name, folder, or a preset such as 'tiny')")
    p.add_argument("--tuned", required=True, help="the fine-tuned model (a run's final/ folder)")
    p.add_argument("--data", type=Path, required=True, metavar="TOKENS_DIR", help="token folder with a val split")
    p.add_argument("--out", type=Path, default=Path("runs/eval"), metavar="DIR", help="report folder (default: runs/eval)")


def run(args, config) -> int:
    from shardtune.console import say
    from shardtune.infer.evaluate import run_eval

    run_eval(args.base, args.tuned, args.data, args.out, config)
    say(f"report -> {args.out / 'report.md'}")
    return 0
