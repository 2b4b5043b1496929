"""`shardtune generate`, `eval` and `demo` on a tiny model trained for a few steps on CPU."""

import json

import pytest
import torch

from conftest import synth_tokens
from shardtune.cli import main
from shardtune.infer.config import EvalConfig, GenerateConfig
from shardtune.infer.generate import Answerer
from shardtune.template import PromptTemplate

CUSTOM = "Product: {title}\nDescription: "


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny model trained briefly on tokens made with a custom template."""
    from shardtune.train.config import TrainConfig
    from shardtune.train.loop import run_train

    d = tmp_path_factory.mktemp("infer")
    synth_tokens(d, 800, seed=4, template=CUSTOM)
    run_train(d / "tokens", d / "run", TrainConfig(model="tiny", max_steps=30, batch_size=8, lr=2e-3, max_length=64,
                                                   eval_steps=1000, save_steps=1000, log_steps=10, eval_examples=32))
    return d


def test_a_model_is_asked_in_the_template_it_was_trained_with(run):
    answerer = Answerer.load(str(run / "run" / "final"))
    assert answerer.template == PromptTemplate(CUSTOM)
    prompt = answerer.tokenizer.decode(answerer.prompt_ids("Girls Ballet Tutu Neon Pink", 16))
    assert prompt == "Product: Girls Ballet Tutu Neon Pink\nDescription:"


class StubModel(torch.nn.Module):
    """generate() returns three tokens, then EOS, then padding: what a model that learned to stop does."""

    config = type("Config", (), {"n_positions": 64})()

    def generate(self, input_ids, attention_mask, pad_token_id, eos_token_id, streamer=None, **kw):
        tail = torch.tensor([[314, 716, 257, eos_token_id, pad_token_id]] * len(input_ids))
        return torch.cat([input_ids, tail], dim=1)


def test_answers_stop_at_eos_and_hide_it(gpt2_tokenizer):
    answerer = Answerer(StubModel(), gpt2_tokenizer, PromptTemplate(), 64)
    (result,) = answerer.answer(["Adult Ballet Tutu Yellow"], GenerateConfig(max_new_tokens=5, temperature=0))
    assert result == {"question": "Adult Ballet Tutu Yellow", "answer": gpt2_tokenizer.decode([314, 716, 257]).strip(),
                      "stopped_at_eos": True, "new_tokens": 3}


def test_a_question_longer_than_the_context_is_cut_from_the_left(gpt2_tokenizer, capsys):
    answerer = Answerer(StubModel(), gpt2_tokenizer, PromptTemplate(CUSTOM), 64)
    ids = answerer.prompt_ids("very " * 200 + "long title", max_new_tokens=16)
    assert len(ids) <= 64 - 16
    assert gpt2_tokenizer.decode(ids).startswith("Product: ") and gpt2_tokenizer.decode(ids).endswith("long title\nDescription:")
    answerer.prompt_ids("very " * 200, max_new_tokens=16)
    assert capsys.readouterr().err.count("longer than the model's context") == 1  # said once


def test_batch_input_writes_jsonl_answers(run, tmp_path):
    questions = tmp_path / "questions.txt"
    questions.write_text('Girls Ballet Tutu Neon Pink\n\n{"title": "Kestrel 10 Inch Cast Iron Skillet"}\nBaby Sun Hat Teal\n')
    assert main(["generate", str(run / "run" / "final"), "--input", str(questions), "--batch-size", "2",
                 "--max-new-tokens", "12", "--temperature", "0"]) == 0
    answers = [json.loads(line) for line in (tmp_path / "questions.answers.jsonl").read_text().splitlines()]
    assert [a["question"] for a in answers] == ["Girls Ballet Tutu Neon Pink", "Kestrel 10 Inch Cast Iron Skillet",
                                                "Baby Sun Hat Teal"]
    assert all(a["answer"] and a["new_tokens"] <= 12 for a in answers)
    # a re-run replaces its earlier answers; a file of someone else's is replaced only with --force
    args = ["generate", str(run / "run" / "final"), "--input", str(questions), "--max-new-tokens", "2"]
    assert main(args) == 0
    mine = tmp_path / "catalogue.json"
    mine.write_text('{"uid": "precious"}\n')
    assert main(args + ["--output", str(mine)]) == 2 and mine.read_text() == '{"uid": "precious"}\n'
    assert main(args + ["--output", str(mine), "--force"]) == 0 and len(mine.read_text().splitlines()) == 3


def test_interactive_asks_again_after_a_line_that_is_not_utf8(run, monkeypatch, capsys):
    lines = iter(["Girls Hoodie \udcff\udcfe", "Baby Sun Hat Teal", "exit"])  # how a terminal hands over bad bytes
    monkeypatch.setattr("sys.stdin", type("Terminal", (), {"isatty": lambda self: True})())
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["generate", str(run / "run" / "final"), "--interactive", "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().err.count("not UTF-8 text; ask again") == 1


def test_one_question_prints_only_the_answer(run, capsys):
    assert main(["generate", str(run / "run" / "final"), "Girls Hoodie Navy Blue", "--max-new-tokens", "8",
                 "--temperature", "0"]) == 0
    out = capsys.readouterr().out.strip()
    assert out and "Description:" not in out and "Product:" not in out


@pytest.mark.parametrize("args, message", [
    (["generate", "{final}", "   "], "question is empty"),
    (["generate", "{tmp}/no-such-run/final", "a tutu"], "model folder not found"),
    (["generate", "{tokens}", "a tutu"], "not a model folder"),
    (["generate", "{final}", "--input", "{tmp}/missing.txt"], "input file not found"),
    (["generate", "{final}"], "give a QUESTION"),
])
def test_bad_input_is_one_line_and_exit_2(run, tmp_path, capsys, args, message):
    argv = [a.format(final=run / "run" / "final", tokens=run / "tokens", tmp=tmp_path) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_eval_reports_both_models(run, tmp_path):
    from shardtune.infer.evaluate import run_eval

    report = run_eval("tiny", str(run / "run" / "final"), run / "tokens", tmp_path / "eval",
                      EvalConfig(samples=4, eval_examples=32, max_new_tokens=16))
    for role in ("base", "tuned"):
        assert {"perplexity", "rouge_l", "token_f1", "eos_rate"} <= set(report[role])
    assert report["tuned"]["perplexity"] < report["base"]["perplexity"] / 10
    assert len(report["samples"]) == 4 and {"question", "reference", "base", "tuned"} <= set(report["samples"][0])
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["tuned"] == report["tuned"]
    assert "| ROUGE-L F1 |" in (tmp_path / "eval" / "report.md").read_text()
    assert (tmp_path / "eval" / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_the_loss_curve_is_the_tuned_models_run_or_none(run, tmp_path):
    """A tuned model shardtune did not train has no curve: the base's run must not be shown as its own."""
    import shutil

    from shardtune.infer.evaluate import run_eval

    plain = tmp_path / "plain"  # the same weights, as any Hugging Face folder
    shutil.copytree(run / "run" / "final", plain)
    (plain / "shardtune.json").unlink()
    run_eval(str(run / "run" / "final"), str(plain), run / "tokens", tmp_path / "eval",
             EvalConfig(samples=1, eval_examples=8, max_new_tokens=2))
    assert not (tmp_path / "eval" / "loss.png").exists()
    assert "loss.png" not in (tmp_path / "eval" / "report.md").read_text()


def test_a_byte_order_mark_is_not_part_of_the_first_question(tmp_path):
    from shardtune.infer.generate import questions_in

    (tmp_path / "q.jsonl").write_bytes(b'\xef\xbb\xbf{"title": "ok mug"}\r\n{"title": "red lamp"}\r\n')
    (tmp_path / "q.txt").write_bytes(b"\xef\xbb\xbfBlue Mug\r\nRed Lamp\r\n")
    assert list(questions_in(tmp_path / "q.jsonl")) == ["ok mug", "red lamp"]
    assert list(questions_in(tmp_path / "q.txt")) == ["Blue Mug", "Red Lamp"]


def test_token_f1():
    from shardtune.infer.evaluate import token_f1

    assert token_f1("a soft cotton tutu", "A soft, cotton tutu!") == 1.0
    assert token_f1("nothing alike", "a soft cotton tutu") == 0.0
    assert token_f1("soft tutu", "soft cotton tutu") == pytest.approx(0.8)


def test_eval_refuses_a_base_model_whose_vocabulary_is_not_the_shards(run, tmp_path):
    import shutil

    from transformers import GPT2Config, GPT2LMHeadModel

    from shardtune.errors import UserError
    from shardtune.infer.evaluate import run_eval

    small = tmp_path / "small-vocab"  # GPT-2's tokenizer, but an embedding of 1,000 tokens
    GPT2LMHeadModel(GPT2Config(vocab_size=1000, n_layer=1, n_head=2, n_embd=32)).save_pretrained(small)
    for f in (run / "run" / "final").glob("*token*"):
        shutil.copy(f, small / f.name)
    with pytest.raises(UserError, match="does not read these shards"):
        run_eval(str(small), str(run / "run" / "final"), run / "tokens", tmp_path / "eval", EvalConfig(samples=2))


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path):
    from shardtune.demo import DemoConfig, run_demo
    from shardtune.train.metrics import MetricsLog

    result = run_demo(tmp_path / "demo", None, DemoConfig(steps=20, samples=3))
    evals = MetricsLog(tmp_path / "demo" / "run").read("eval")
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 3
    assert (tmp_path / "demo" / "eval" / "report.md").exists() and set(result["timings"]) == {"etl", "tokenize", "train", "eval"}
    assert "grounding" in result["report"]["tuned"]
    again = run_demo(tmp_path / "demo", None, DemoConfig(steps=1, samples=1))  # a second demo replaces the first
    assert [e["step"] for e in MetricsLog(tmp_path / "demo" / "run").read("eval")] == [0, 1]
    assert len(again["report"]["samples"]) == 1


def test_grounding_counts_the_title_words_an_answer_repeats():
    from shardtune.infer.grounding import content_words, grounding, mean_grounding

    title = "Girls Hoodie Navy Blue"
    assert content_words(title) == {"girl", "hoodie", "navy", "blue"}  # lower-cased, plural "s" dropped
    assert grounding(title, "This navy blue hoodie for girls is made of soft cotton.") == 1.0
    assert grounding(title, "A gold costume cape for mens, great for school plays.") == 0.0
    assert grounding(title, "A blue cape for girls.") == 0.5
    assert grounding("Kestrel 10 Inch Cast Iron Skillet", "The Kestrel skillet is built from cast iron.") == 1.0
    assert grounding("The Silent Harbor: A Mystery", "") == 0.0 and grounding("12 / 3 &", "anything") is None
    assert mean_grounding([title, "12"], ["navy hoodie", "x"]) == 0.5  # a title without words is not counted


def test_eval_reports_grounding_for_base_tuned_and_the_reference(run, tmp_path):
    from shardtune.infer.evaluate import run_eval

    report = run_eval("tiny", str(run / "run" / "final"), run / "tokens", tmp_path / "eval",
                      EvalConfig(samples=4, eval_examples=32, max_new_tokens=16))
    assert 0 <= report["base"]["grounding"] <= 1 and 0 <= report["tuned"]["grounding"] <= 1
    assert report["reference"]["grounding"] > 0.5  # a description repeats most of its title
    assert set(report["samples"][0]["grounding"]) == {"base", "tuned", "reference"}
    markdown = (tmp_path / "eval" / "report.md").read_text()
    assert "| grounding: title words the answer repeats (the description: " in markdown
