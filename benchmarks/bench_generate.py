"""`shardtune bench generate`: answers/s and time to first token, single and batched,
against plain model.generate one question at a time (the seed's way)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from shardtune.options import Config, add_command, option


@dataclass
class BenchGenerateConfig(Config):
    SECTION = "bench.generate"

    model: str = option("runs/demo/run/final", "a trained model folder (from `shardtune demo` by default)",
                        metavar="DIR")
    questions: int = option(64, "generated product titles to answer", min=1)
    max_new_tokens: int = option(64, "answer tokens at most", min=1, max=100_000)


def add_parser(sub) -> None:
    add_command(sub, "generate", BenchGenerateConfig, run, help="answers/s and time to first token, single and batched",
                description="Greedy answers to generated product titles: plain model.generate one question "
                "at a time (the seed's way) against `shardtune generate` with batches of 1, 8 and 32; "
                "prints answer tokens/s (up to EOS), answers/s and time to first token.")


def run(args, config) -> int:
    return bench_generate(config)


def _titles(n: int) -> list[str]:
    from shardtune.data.synth import synth_lines

    return [json.loads(line)["title"] for line in synth_lines(n, seed=123)]


def generate_rows(model_dir: Path, questions: int, max_new_tokens: int) -> list[tuple[str, float, int, float]]:
    """(approach, seconds, answer tokens, mean time to first token): the seed's one-at-a-time
    model.generate, then `shardtune generate` in batches of 1, 8 and 32."""
    from shardtune.console import log
    from shardtune.errors import UserError
    from shardtune.infer.config import GenerateConfig
    from shardtune.infer.generate import Answerer

    from .common import sync_device
    from .seed_generate import seed_generate

    n = max_new_tokens
    if not (model_dir / "config.json").exists():
        raise UserError(f"no model in {model_dir}; run `shardtune demo` first or pass --model RUN/final")
    answerer = Answerer.load(str(model_dir))
    titles = _titles(questions)
    greedy = GenerateConfig(max_new_tokens=n, temperature=0.0, repetition_penalty=1.0)
    first = GenerateConfig(max_new_tokens=1, temperature=0.0, repetition_penalty=1.0)
    answerer.answer(titles[:2], greedy)  # warm-up
    prompts = [answerer.prompt_ids(t, n) for t in titles]
    rows = [("seed: model.generate, 1 at a time", *seed_generate(answerer.model, answerer.eos, prompts, n))]
    for batch in (1, 8, 32):
        log(f"bench generate: batch {batch} ...")
        ttft = []
        for s in range(0, min(len(titles), 4 * batch), batch):
            t0 = time.perf_counter()
            answerer.answer(titles[s:s + batch], first)
            sync_device()
            ttft.append(time.perf_counter() - t0)
        start, generated = time.perf_counter(), 0
        for s in range(0, len(titles), batch):
            generated += sum(r["new_tokens"] for r in answerer.answer(titles[s:s + batch], greedy))
        sync_device()
        rows.append((f"shardtune generate, batch {batch}", time.perf_counter() - start, generated, sum(ttft) / len(ttft)))
    return rows


def bench_generate(config: BenchGenerateConfig) -> int:
    from .common import device_name, print_table

    rows = generate_rows(Path(config.model), config.questions, config.max_new_tokens)
    print_table(f"Greedy answers to {config.questions} questions (up to {config.max_new_tokens} new tokens), "
                f"{config.model}, {device_name()}",
                ["approach", "seconds", "answer tokens/s", "answers/s", "time to first token"],
                [[name, f"{s:.1f}", f"{g / s:,.0f}", f"{config.questions / s:,.1f}", f"{t * 1000:,.0f} ms"]
                 for name, s, g, t in rows])
    return 0
