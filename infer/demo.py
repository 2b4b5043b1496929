"""`shardtune demo`: the whole pipeline on the bundled sample, offline, on a CPU, in a few minutes.

synth/bundled data -> etl -> tokenize -> train -> eval -> a few answers, every
artefact under one folder. Each stage is the same public entry function the
CLI calls; the demo only chooses small settings.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from shardtune.console import log
from shardtune.errors import UserError

BUNDLED = Path(__file__).resolve().parent.parent / "data" / "sample_trn.json"


def run_demo(out: Path, inputs: list[Path] | None, model: str = "tiny", steps: int = 200, samples: int = 30) -> dict:
    from shardtune.etl.config import EtlConfig
    from shardtune.etl.pipeline import run_etl
    from shardtune.train.config import TrainConfig
    from shardtune.train.loop import run_train
    from shardtune.train.tokenize import TokenizeConfig, run_tokenize

    from .evaluate import EvalConfig, run_eval
    from .generate import Answerer, Sampling

    if not inputs and not BUNDLED.exists():
        raise UserError(f"the bundled sample {BUNDLED} is missing; pass --input FILE")
    if out.exists() and any(out.iterdir()):
        if not (out / "demo.txt").exists():
            raise UserError(f"{out} is not empty and not an earlier demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.txt").write_text("Written by `shardtune demo`; the next demo run replaces this folder.\n")
    timings: dict[str, float] = {}

    def stage(name: str, fn):
        start = time.perf_counter()
        result = fn()
        timings[name] = time.perf_counter() - start
        log(f"demo: {name} done in {timings[name]:.1f} s")
        return result

    etl = stage("etl", lambda: run_etl(inputs or [BUNDLED], out / "clean", EtlConfig()))
    log(f"demo: etl kept {etl.records_kept:,} of {etl.lines_read:,} lines ({etl.malformed} malformed, "
        f"dropped {sum(etl.dropped.values()):,})")
    tok = stage("tokenize", lambda: run_tokenize(out / "clean", out / "tokens",
                                                 TokenizeConfig(tokenizer="distilgpt2" if model == "tiny" else model,
                                                                max_length=128, val_fraction=0.1)))
    log(f"demo: {tok.splits['train'].examples:,} train / {tok.splits['val'].examples:,} val examples")
    small = model == "tiny"
    train = stage("train", lambda: run_train(out / "tokens", out / "run", TrainConfig(
        model=model, max_steps=steps, batch_size=8 if small else 16, lr=2e-3 if small else 5e-5,
        warmup_steps=10, schedule="cosine", eval_steps=max(1, steps // 4), save_steps=steps,
        log_steps=max(1, steps // 10), eval_examples=200, max_length=128)))
    report = stage("eval", lambda: run_eval(model, str(out / "run" / "final"), out / "tokens", out / "eval",
                                            EvalConfig(samples=samples, eval_examples=200, max_new_tokens=48)))
    answerer = Answerer.load(str(out / "run" / "final"))
    for sample in report["samples"][:3]:
        reply = answerer.answer([sample["question"]], Sampling(max_new_tokens=48, temperature=0.0))[0]
        log(f"demo: Q: {sample['question']}\n      A: {reply['answer']}")
    total = sum(timings.values())
    log("demo: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f"; total {total:.0f} s")
    log(f"demo: everything is under {out}: clean/ (Parquet), tokens/ (Arrow), run/final (the model), "
        f"eval/report.md")
    return {"timings": timings, "train": train, "report": report}
