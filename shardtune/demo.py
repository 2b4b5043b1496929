"""`shardtune demo`: the whole pipeline on the bundled sample, offline, on a CPU, in a few minutes.

bundled data -> etl -> tokenize -> train -> eval -> a few answers, every artefact
under one folder. Each stage is the same public entry function the CLI calls; the
demo only chooses small settings.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .lock import LOCK, locked
from .options import Config, option



def bundled_sample() -> Path:
    """data/sample_trn.json, wherever the shardtune.data package was installed."""
    import importlib.util

    spec = importlib.util.find_spec("shardtune.data")
    return Path(list(spec.submodule_search_locations)[0]) / "sample_trn.json"  # type: ignore[union-attr]


# Why these settings (README, "shardtune demo"): a fresh model answers about the product asked once it
# has learned to copy the title's words into the answer, which a 2-layer Llama (rotary positions) does
# after about 300 steps at a high learning rate: before, it writes fluent answers about other products.
# 96 tokens keep the prompt and the description's first sentences, where those words are, and make a
# step cheap enough for 350 of them in about 100 s on 2 cores.
MAX_LENGTH = 96


@dataclass
class DemoConfig(Config):
    SECTION = "demo"

    model: str = option("tiny-llama", "model to fine-tune (e.g. distilgpt2 where the hub can be reached)",
                        metavar="NAME")
    steps: int = option(350, "training steps", min=1)
    samples: int = option(30, "held-out products answered in the report", min=1)


def run_demo(out: Path, inputs: list[Path] | None = None, config: DemoConfig | None = None) -> dict:
    from .models import check_model

    config = (config or DemoConfig()).check()
    check_model(config.model)  # before minutes of etl and tokenize
    sample = bundled_sample()
    if not inputs and not sample.exists():
        raise UserError(f"the bundled sample {sample} is missing; pass --input FILE")
    from .etl.pipeline import refuse_repeated
    from .etl.read import check_input

    for path in inputs or []:  # before the output folder is touched
        check_input(path)
    refuse_repeated(inputs or [])
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give a folder with --out")
    if out.exists() and any(p.name != LOCK for p in out.iterdir()) and not (out / "demo.txt").exists():
        raise UserError(f"{out} is not empty and not an earlier demo; choose another --out")
    with locked(out, "demo"):
        for entry in out.iterdir():  # an earlier demo's, replaced
            if entry.name != LOCK:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        return _demo(out, inputs, config, sample)


def _demo(out: Path, inputs: list[Path] | None, config: DemoConfig, sample: Path) -> dict:
    from .console import log
    from .etl.config import EtlConfig
    from .etl.pipeline import run_etl
    from .infer.config import EvalConfig, GenerateConfig
    from .infer.evaluate import run_eval
    from .infer.generate import Answerer
    from .models import is_fresh_only, tokenizer_name
    from .tokens.config import TokenizeConfig
    from .tokens.tokenize import run_tokenize
    from .train.config import TrainConfig
    from .train.loop import run_train

    (out / "demo.txt").write_text("Written by `shardtune demo`; the next demo run replaces this folder.\n")
    timings: dict[str, float] = {}

    def stage(name: str, fn):
        start = time.perf_counter()
        result = fn()
        timings[name] = time.perf_counter() - start
        log(f"demo: {name} done in {timings[name]:.1f} s")
        return result

    model, steps = config.model, config.steps
    etl = stage("etl", lambda: run_etl(inputs or [sample], out / "clean", EtlConfig()))
    log(f"demo: etl kept {etl.records_kept:,} of {etl.lines_read:,} lines ({etl.malformed} malformed, "
        f"dropped {sum(etl.dropped.values()):,})")
    tok = stage("tokenize", lambda: run_tokenize(out / "clean", out / "tokens", TokenizeConfig(
        tokenizer=tokenizer_name(model), max_length=MAX_LENGTH, val_fraction=0.1)))
    log(f"demo: {tok.splits['train'].examples:,} train / {tok.splits['val'].examples:,} val examples")
    if not tok.splits["val"].examples:  # the report compares the models on held-out products: refuse before training
        raise UserError(f"the input leaves {tok.splits['train'].examples:,} example(s) after cleaning, too few to hold "
                        "one in ten out for the report; give --input a larger catalogue")
    small = is_fresh_only(model)
    train = stage("train", lambda: run_train(out / "tokens", out / "run", TrainConfig(
        model=model, max_steps=steps, batch_size=8 if small else 16, lr=4e-3 if small else 5e-5,
        warmup_steps=10, schedule="cosine", eval_steps=max(1, steps // 4), save_steps=steps,
        log_steps=max(1, steps // 10), eval_examples=200, max_length=MAX_LENGTH)))
    report = stage("eval", lambda: run_eval(model, str(out / "run" / "final"), out / "tokens", out / "eval",
                                            EvalConfig(samples=config.samples, eval_examples=200, max_new_tokens=48)))
    answerer = Answerer.load(str(out / "run" / "final"))
    for sample in report["samples"][:3]:
        reply = answerer.answer([sample["question"]], GenerateConfig(max_new_tokens=48, temperature=0.0))[0]
        log(f"demo: Q: {sample['question']}")
        log(f"demo: A: {reply['answer']}")
    total = sum(timings.values())
    log("demo: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f"; total {total:.0f} s")
    log(f"demo: everything is under {out}: clean/ (Parquet), tokens/ (Arrow), run/final (the model), "
        f"eval/report.md")
    return {"timings": timings, "train": train, "report": report}
