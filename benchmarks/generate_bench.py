"""`shardtune bench generate`: answers/s and time to first token, single and batched,
against plain model.generate one question at a time (the seed's way)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from shardtune.console import log
from shardtune.errors import UserError

from .train_bench import device_name


def _titles(n: int) -> list[str]:
    from shardtune.etl.synth import synth_lines

    return [json.loads(line)["title"] for line in synth_lines(n, seed=123)]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench_generate(model_dir: Path, questions: int, max_new_tokens: int) -> int:
    from shardtune.infer.generate import Answerer, Sampling

    if not (model_dir / "config.json").exists():
        raise UserError(f"no model in {model_dir}; run `shardtune demo` first or pass --model RUN/final")
    answerer = Answerer.load(str(model_dir))
    titles = _titles(questions)
    greedy = Sampling(max_new_tokens=max_new_tokens, temperature=0.0, repetition_penalty=1.0)
    answerer.answer(titles[:2], greedy)  # warm-up
    rows = []

    # The seed's way: one question at a time through model.generate, no EOS handling beyond the default.
    tok, model = answerer.tokenizer, answerer.model
    start, generated = time.perf_counter(), 0
    first_token = []
    for title in titles:
        ids = torch.tensor([answerer.prompt_ids(title, max_new_tokens)], device=answerer.device)
        t0 = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False,
                       pad_token_id=tok.eos_token_id)
        _sync()
        first_token.append(time.perf_counter() - t0)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tok.eos_token_id)
        new = out[0, ids.shape[1]:].tolist()
        generated += new.index(tok.eos_token_id) if tok.eos_token_id in new else len(new)
    _sync()
    seconds = time.perf_counter() - start - sum(first_token)
    rows.append(("seed: model.generate, 1 at a time", seconds, generated, sum(first_token) / len(first_token)))

    for batch in (1, 8, 32):
        log(f"bench generate: batch {batch} ...")
        ttft = []
        for s in range(0, min(len(titles), 4 * batch), batch):
            t0 = time.perf_counter()
            answerer.answer(titles[s:s + batch], Sampling(max_new_tokens=1, temperature=0.0, repetition_penalty=1.0))
            _sync()
            ttft.append(time.perf_counter() - t0)
        start, generated = time.perf_counter(), 0
        for s in range(0, len(titles), batch):
            generated += sum(r["new_tokens"] for r in answerer.answer(titles[s:s + batch], greedy))
        _sync()
        rows.append((f"shardtune generate, batch {batch}", time.perf_counter() - start, generated, sum(ttft) / len(ttft)))

    table = Table(title=f"Greedy answers to {len(titles)} questions (up to {max_new_tokens} new tokens), "
                        f"{model_dir}, {device_name()}")
    for col in ("approach", "seconds", "answer tokens/s", "answers/s", "time to first token"):
        table.add_column(col, justify="left" if col == "approach" else "right")
    for name, seconds, generated, ttft in rows:
        table.add_row(name, f"{seconds:.1f}", f"{generated / seconds:,.0f}", f"{len(titles) / seconds:,.1f}",
                      f"{ttft * 1000:,.0f} ms")
    Console(width=140).print(table)
    return 0
