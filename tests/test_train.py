"""`shardtune train` on CPU with the `tiny` model and small generated data."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import synth_tokens
from shardtune.errors import UserError
from shardtune.train.config import TrainConfig
from shardtune.train.data import collate
from shardtune.train.loop import Trainer, run_train
from shardtune.train.model import AnswerLoss, batch_loss, fresh_gpt2
from shardtune.train.tokens import TokenShards


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """~600 generated products, cleaned and tokenized to 64 tokens."""
    return synth_tokens(tmp_path_factory.mktemp("data"), 1200, seed=11)


def small(**kw) -> TrainConfig:
    base = dict(model="tiny", batch_size=8, max_steps=6, lr=2e-3, log_steps=1, eval_steps=1000, save_steps=1000,
                eval_examples=64, max_length=64)
    return TrainConfig(**{**base, **kw})


def metrics(run_dir, kind):
    return [e for e in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if e["type"] == kind]


def test_training_tiny_lowers_validation_loss(tokens, tmp_path):
    result = run_train(tokens, tmp_path / "run", small(max_steps=40, warmup_steps=4, log_steps=10, eval_steps=20))
    evals = metrics(tmp_path / "run", "eval")
    assert [e["step"] for e in evals] == [0, 20, 40]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 2.0  # fresh weights: ~10.8 nats to well under 9
    assert result["padding"] < 0.15  # length-grouped batches, not pad-to-256
    train = metrics(tmp_path / "run", "train")
    assert {"loss", "lr", "tokens_per_s", "grad_norm", "peak_memory_mb", "padding"} <= set(train[0])


def test_final_is_a_hugging_face_model_folder_with_its_template(tokens, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_train(tokens, tmp_path / "run", small(max_steps=2))
    final = tmp_path / "run" / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    assert model.config.n_layer == 2 and AutoTokenizer.from_pretrained(final)("Hello world")["input_ids"] == [15496, 995]
    info = json.loads((final / "shardtune.json").read_text())
    assert info["template"].startswith("You are an assistant") and info["train_config"]["model"] == "tiny"
    assert (final / "model.safetensors").exists()


def test_an_examples_loss_is_the_same_alone_and_batched_with_others(tokens):
    torch.manual_seed(0)
    loss_fn = AnswerLoss(fresh_gpt2("tiny")).eval()
    data = TokenShards(sorted((tokens / "train").glob("*.arrow")))
    by_length = {len(data[i][0]): i for i in range(len(data))}
    idx = [by_length[n] for n in sorted(by_length)[:4]]
    assert len({len(data[i][0]) for i in idx}) == 4  # different lengths, so the batch pads
    batched = collate(data, idx, 64, "answer", 50256)
    alone = [collate(data, [i], 64, "answer", 50256) for i in idx]
    with torch.no_grad():
        total = batch_loss(loss_fn, batched)
        parts = [batch_loss(loss_fn, b) for b in alone]
    assert len(batched.targets) == sum(len(b.targets) for b in alone)
    assert float(total) == pytest.approx(sum(float(p) for p in parts), rel=1e-5)


def test_rounding_shapes_up_for_the_gpu_changes_no_loss(tokens):
    torch.manual_seed(0)
    loss_fn = AnswerLoss(fresh_gpt2("tiny")).eval()
    data = TokenShards(sorted((tokens / "train").glob("*.arrow")))
    plain = collate(data, [0, 1, 2], 64, "answer", 50256)
    rounded = collate(data, [0, 1, 2], 64, "answer", 50256, pad_multiple=16, rows_multiple=64)
    assert rounded.input_ids.shape[1] % 16 == 0 and len(rounded.targets) % 64 == 0
    assert rounded.predicted == plain.predicted == int((plain.targets != -100).sum())
    loss = lambda b: float(batch_loss(loss_fn, b))  # noqa: E731
    with torch.no_grad():
        assert loss(rounded) == pytest.approx(loss(plain), rel=1e-5)
    hidden = torch.randn(5, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    from shardtune.train.model import linear_cross_entropy

    target = torch.tensor([3, -100, 7, -100, 1])
    ours = linear_cross_entropy(hidden, weight, target)
    ours.backward()
    assert hidden.grad[1].abs().sum() == 0 and hidden.grad[3].abs().sum() == 0  # ignored rows learn nothing
    ref = torch.nn.functional.cross_entropy(hidden @ weight.T, target, reduction="sum", ignore_index=-100)
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)


def test_chunked_linear_cross_entropy_matches_the_plain_one(monkeypatch):
    from shardtune.train.model import ChunkedLinearCrossEntropy, linear_cross_entropy

    monkeypatch.setattr(ChunkedLinearCrossEntropy, "CHUNK", 7)  # several chunks and a ragged last one
    torch.manual_seed(0)
    hidden = torch.randn(20, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 50, (20,))
    plain = torch.nn.functional.cross_entropy(hidden @ weight.T, target, reduction="sum")
    gh, gw = torch.autograd.grad(plain * 0.5, [hidden, weight])
    ours = linear_cross_entropy(hidden, weight, target)
    oh, ow = torch.autograd.grad(ours * 0.5, [hidden, weight])
    assert float(ours.detach()) == pytest.approx(float(plain.detach()), rel=1e-9)
    assert torch.allclose(oh, gh, rtol=1e-9, atol=1e-12) and torch.allclose(ow, gw, rtol=1e-9, atol=1e-12)


def test_loss_is_on_the_answer_unless_asked_otherwise(tokens):
    data = TokenShards(sorted((tokens / "train").glob("*.arrow")))
    ids, prompt_len = data[0]
    answer = collate(data, [0], 64, "answer", 50256).labels[0]
    both = collate(data, [0], 64, "prompt+answer", 50256).labels[0]
    assert (answer[:prompt_len] == -100).all() and (answer[prompt_len:len(ids)] >= 0).all()
    assert (both[:len(ids)] >= 0).all()


def test_a_killed_run_resumes_onto_the_same_loss_curve(tokens, tmp_path, monkeypatch):
    config = small(max_steps=8, save_steps=4)
    run_train(tokens, tmp_path / "straight", config)

    original = Trainer.train_step

    def dies_after_step_5(self):
        if self.state.step == 5:
            raise KeyboardInterrupt  # killed between checkpoints
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", dies_after_step_5)
    with pytest.raises(KeyboardInterrupt):
        run_train(tokens, tmp_path / "killed", config)
    monkeypatch.setattr(Trainer, "train_step", original)
    assert [p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()] == ["step-00000004"]
    run_train(tokens, tmp_path / "killed", TrainConfig(**{**config.__dict__, "resume": True}))
    straight, resumed = metrics(tmp_path / "straight", "train"), metrics(tmp_path / "killed", "train")
    assert [e["step"] for e in resumed] == list(range(1, 9))
    assert [e["loss"] for e in resumed] == pytest.approx([e["loss"] for e in straight], rel=1e-6)


def test_save_total_limit_keeps_the_newest_checkpoints(tokens, tmp_path):
    run_train(tokens, tmp_path / "run", small(max_steps=7, save_steps=2, save_total_limit=2))
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-00000006", "step-00000007"]


def test_a_diverging_run_stops_after_bounded_bad_steps(tokens, tmp_path):
    with pytest.raises(UserError, match="not finite for 2 steps"):
        run_train(tokens, tmp_path / "run", small(lr=1e12, max_steps=30, clip_grad=1e12, max_bad_steps=2))


def test_user_mistakes_are_one_line_errors(tokens, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=1000, n_layer=1, n_head=2, n_embd=32)).save_pretrained(tmp_path / "small-vocab")
    with pytest.raises(UserError, match="knows 1,000"):
        run_train(tokens, tmp_path / "a", small(model=str(tmp_path / "small-vocab")))
    with pytest.raises(UserError, match="hub is unreachable.*--from-scratch"):
        run_train(tokens, tmp_path / "b", small(model="distilgpt2"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("")
    with pytest.raises(UserError, match="not empty; use --resume"):
        run_train(tokens, tmp_path / "c", small())


def test_ddp_on_two_cpu_processes(tokens, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "shardtune.cli", "train", str(tokens), "--out", str(tmp_path / "run"), "--model", "tiny",
           "--max-steps", "3", "--batch-size", "4", "--log-steps", "1", "--eval-examples", "16", "--max-length", "64"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert [e["step"] for e in metrics(tmp_path / "run", "train")] == [1, 2, 3]
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


def test_gpt2_gelu_is_fused_without_changing_what_the_model_computes():
    import copy

    from shardtune.train.model import fuse_gelu

    torch.manual_seed(0)
    stock = fresh_gpt2("tiny").eval()
    fused = fuse_gelu(copy.deepcopy(stock))
    assert stock.config.activation_function == "gelu_new"
    assert fused.config.activation_function == "gelu_pytorch_tanh"  # saved in final/, loads the fused op
    ids = torch.randint(0, 50257, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(fused(ids).logits, stock(ids).logits, rtol=1e-5, atol=1e-5)


def test_activation_checkpointing_recomputes_the_same_gradients(tokens):
    from shardtune.train.model import enable_activation_checkpointing

    data = TokenShards(sorted((tokens / "train").glob("*.arrow")))
    batch = collate(data, [0, 1, 2, 3], 64, "answer", 50256)

    def grads(checkpointing: bool):
        torch.manual_seed(0)
        model = fresh_gpt2("tiny").train()  # dropout on: recomputation must replay the same masks
        if checkpointing:
            enable_activation_checkpointing(model)
        mlp, calls = model.transformer.h[0].mlp, []
        mlp.register_forward_pre_hook(lambda *_: calls.append(1))
        torch.manual_seed(1)
        batch_loss(AnswerLoss(model), batch).backward()
        return [p.grad for p in model.parameters()], len(calls)

    (plain, once), (recomputed, twice) = grads(False), grads(True)
    assert (once, twice) == (1, 2)  # the layer really ran again in the backward pass
    for a, b in zip(plain, recomputed):
        torch.testing.assert_close(b, a)
