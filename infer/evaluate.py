"""`shardtune eval`: the model before and after fine-tuning, on the held-out split, in numbers.

Per model: perplexity on answer tokens; on a fixed, seeded sample of validation
products, ROUGE-L (rouge-score) and token F1 of greedy answers against the real
descriptions, and the share of answers that end by themselves (EOS) before the
token limit. Writes report.json, report.md and, for a shardtune run, loss.png.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
from rich.table import Table

from shardtune.console import TableConsole, log
from shardtune.errors import UserError
from shardtune.files import atomic_open, check_output_dir, check_outside, prepare_output_dir, write_json
from shardtune.lock import locked, reading
from shardtune.models import check_model, refuse_checkpoint
from shardtune.manifest import TokensManifest
from shardtune.template import PromptTemplate

from .config import EvalConfig
from .generate import Answerer
from .grounding import grounding, mean_grounding


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = re.findall(r"\w+", prediction.lower()), re.findall(r"\w+", reference.lower())
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def answer_perplexity(answerer: Answerer, val, n: int, batch_size: int) -> float:
    from shardtune.train.data import collate, epoch_batches
    from shardtune.train.loss import AnswerLoss, batch_loss, summed_loss

    loss_fn = AnswerLoss(answerer.model)
    batches = (collate(val, idx, answerer.context, "answer", answerer.eos).to(answerer.device)
               for idx in epoch_batches(val.lengths[:n], batch_size, 0, 0, shuffle=False))
    total, tokens = summed_loss(lambda b: batch_loss(loss_fn, b), batches)
    return math.exp(min(total / max(tokens, 1), 50))


def check_vocabulary(answerer: Answerer, manifest: TokensManifest, name: str) -> None:
    """The shards' ids must mean the same to the model: same tokenizer vocabulary."""
    model_vocab = answerer.model.get_input_embeddings().num_embeddings
    tokenizer_vocab = len(answerer.tokenizer)
    if model_vocab < manifest.vocab_size:  # the tokenizers may agree: say what does not
        raise UserError(f"model {name!r} does not read these shards: it knows {model_vocab:,} token ids, but they "
                        f"were tokenized with {manifest.tokenizer!r} ({manifest.vocab_size:,} tokens); compare "
                        "models that share the shards' tokenizer")
    if tokenizer_vocab != manifest.vocab_size or answerer.eos != manifest.eos_id:
        raise UserError(f"model {name!r} does not read these shards: they were tokenized with "
                        f"{manifest.tokenizer!r} ({manifest.vocab_size:,} tokens, EOS {manifest.eos_id}) but its "
                        f"tokenizer has {tokenizer_vocab:,} tokens (EOS {answerer.eos}); compare models that share "
                        "the shards' tokenizer")


def _no_validation_examples(data: Path, manifest) -> UserError:
    return UserError(f"{data} has no validation examples (val fraction {manifest.val_fraction:g} of "
                     f"{manifest.splits['train'].examples:,} examples); tokenize more data or a larger --val-fraction")


def run_eval(base: str, tuned: str, data: Path, out: Path, config: EvalConfig | None = None) -> dict:
    config = (config or EvalConfig()).check()
    with reading(data, "eval"):  # a tokenize re-run meanwhile would replace the shards being read
        return _run(base, tuned, data, out, config)


def _run(base: str, tuned: str, data: Path, out: Path, config: EvalConfig) -> dict:
    manifest = TokensManifest.read(data)
    manifest.verify(data)
    if manifest.splits["val"].examples == 0:
        raise _no_validation_examples(data, manifest)
    for name in (base, tuned):  # both, before minutes on the first
        check_model(name)
        refuse_checkpoint(Path(name).expanduser())
    check_outside(out, data, "the token folder")
    check_output_dir(out, REPORT_FILES)  # before any work; its old report is replaced only at the end
    with locked(out, "eval"):
        return _evaluate(base, tuned, data, out, config, manifest)


REPORT_FILES = ("report.json", "report.md", "loss.png")


def _evaluate(base: str, tuned: str, data: Path, out: Path, config: EvalConfig, manifest: TokensManifest) -> dict:
    from rouge_score import rouge_scorer

    from shardtune.tokens.shards import TokenShards

    val = TokenShards(manifest.shard_paths(data, "val"), manifest.shard_counts("val"))
    if len(val) == 0:
        raise _no_validation_examples(data, manifest)
    rng = np.random.default_rng(config.seed)
    picks = sorted(rng.choice(len(val), size=min(config.samples, len(val)), replace=False).tolist())
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    sampling = config.sampling()
    template = PromptTemplate(manifest.template)
    n_ppl = len(val) if not config.eval_examples else min(config.eval_examples, len(val))
    results: dict[str, dict] = {}
    answers: dict[str, list[dict]] = {}
    questions = references = None
    run_dir = None
    for role, name in (("base", base), ("tuned", tuned)):
        log(f"eval: {role} model {name} ...")
        answerer = Answerer.load(name)
        check_vocabulary(answerer, manifest, name)
        if role == "tuned":  # the curve is the tuned model's run, or none: never the base's, shown as the tuned's
            run_dir = answerer.run_dir
        if questions is None:
            decode = lambda ids: answerer.tokenizer.decode(ids.tolist(), skip_special_tokens=True)  # noqa: E731
            pairs = [val[i] for i in picks]
            questions = [template.title_of(decode(ids[:p])) for ids, p in pairs]
            references = [decode(ids[p:]).strip() for ids, p in pairs]
        outs = []
        for start in range(0, len(questions), config.batch_size):
            outs += answerer.answer(questions[start:start + config.batch_size], sampling)
        answers[role] = outs
        rouge = [scorer.score(ref, o["answer"])["rougeL"].fmeasure for ref, o in zip(references, outs)]
        results[role] = {"model": name, "perplexity": answer_perplexity(answerer, val, n_ppl, config.batch_size),
                         "rouge_l": float(np.mean(rouge)),
                         "token_f1": float(np.mean([token_f1(o["answer"], r) for o, r in zip(outs, references)])),
                         "eos_rate": float(np.mean([o["stopped_at_eos"] for o in outs])),
                         "grounding": mean_grounding(questions, [o["answer"] for o in outs])}
    results["reference"] = {"grounding": mean_grounding(questions, references)}  # the ceiling
    samples = [{"question": q, "reference": r, "base": b["answer"], "tuned": t["answer"],
                "grounding": {"base": grounding(q, b["answer"]), "tuned": grounding(q, t["answer"]),
                              "reference": grounding(q, r)}}
               for q, r, b, t in zip(questions, references, answers["base"], answers["tuned"])]
    report = {**results, "samples": samples, "config": config.to_dict(), "data": str(data),
              "perplexity_examples": n_ppl}
    prepare_output_dir(out, REPORT_FILES)  # only now: a failed eval leaves an earlier report as it was
    write_json(out / "report.json", report)
    curve = plot_losses(run_dir, out / "loss.png") if run_dir else None
    _write_markdown(out / "report.md", report, curve)
    _print_headline(results)
    return report


def plot_losses(run_dir: Path, png: Path) -> Path | None:
    """Training and validation loss of the run, from its metrics.jsonl; None if it logged nothing."""
    from shardtune.train.metrics import MetricsLog

    metrics = MetricsLog(run_dir)
    # a non-finite loss is logged as null: it has no point on the plot
    train = [(e["step"], e["loss"]) for e in metrics.read("train") if e.get("loss") is not None]
    val = [(e["step"], e["val_loss"]) for e in metrics.read("eval") if e.get("val_loss") is not None]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="training loss (answer tokens)")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss (answer tokens)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_open(png, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return png


def _headline_rows(results: dict) -> list[tuple[str, str, str]]:
    b, t, ceiling = results["base"], results["tuned"], results["reference"]["grounding"]
    return [("perplexity (answer tokens, lower is better)", f"{b['perplexity']:,.2f}", f"{t['perplexity']:,.2f}"),
            ("ROUGE-L F1", f"{b['rouge_l']:.3f}", f"{t['rouge_l']:.3f}"),
            ("token F1", f"{b['token_f1']:.3f}", f"{t['token_f1']:.3f}"),
            ("answers ending with EOS", f"{b['eos_rate']:.0%}", f"{t['eos_rate']:.0%}"),
            (f"grounding: title words the answer repeats (the description: {ceiling:.0%})",
             f"{b['grounding']:.0%}", f"{t['grounding']:.0%}")]


def _print_headline(results: dict) -> None:
    table = Table(title="Before and after fine-tuning (held-out products)")
    for col in ("metric", "base", "tuned"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for row in _headline_rows(results):
        table.add_row(*row)
    TableConsole().print(table)


def _write_markdown(path: Path, report: dict, curve: Path | None) -> None:
    cell = lambda text: text.replace("|", "\\|").replace("\n", " ")[:300]  # noqa: E731
    lines = ["# Before and after fine-tuning", "",
             f"Base: `{report['base']['model']}`; tuned: `{report['tuned']['model']}`; data: `{report['data']}` "
             f"(perplexity on {report['perplexity_examples']:,} validation examples; answers on "
             f"{len(report['samples'])} sampled products, greedy, at most {report['config']['max_new_tokens']} tokens).",
             "", "| metric | base | tuned |", "| --- | ---: | ---: |"]
    lines += [f"| {m} | {b} | {t} |" for m, b, t in _headline_rows(report)]
    if curve:
        lines += ["", f"![training and validation loss]({curve.name})"]
    percent = lambda g: "" if g is None else f"{g:.0%}"  # noqa: E731
    lines += ["", "## Answers side by side", "", "Grounding in brackets: the share of the title's content words "
              "(colour, product type, material, brand, audience) each text repeats.", "",
              "| question | reference description | base | tuned |", "| --- | --- | --- | --- |"]
    lines += [f"| {cell(s['question'])} | ({percent(s['grounding']['reference'])}) {cell(s['reference'])} | "
              f"({percent(s['grounding']['base'])}) {cell(s['base'])} | ({percent(s['grounding']['tuned'])}) "
              f"{cell(s['tuned'])} |" for s in report["samples"][:20]]
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
