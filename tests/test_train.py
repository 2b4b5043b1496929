"""`shardtune train` on CPU with the `tiny` model and small generated data."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import kill_then_resume, synth_tokens
from shardtune.cli import main
from shardtune.errors import UserError
from shardtune.models import load_model
from shardtune.models.gpt2 import GPT2
from shardtune.tokens.shards import TokenShards
from shardtune.train.config import TrainConfig
from shardtune.train.data import collate, epoch_batches
from shardtune.train.loop import Trainer, run_train
from shardtune.train.loss import AnswerLoss, batch_loss
from shardtune.train.metrics import MetricsLog
from shardtune.train.optim import lr_at


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """~600 generated products, cleaned and tokenized to 64 tokens."""
    return synth_tokens(tmp_path_factory.mktemp("data"), 1200, seed=11)


def small(**kw) -> TrainConfig:
    base = dict(model="tiny", batch_size=8, max_steps=6, lr=2e-3, log_steps=1, eval_steps=1000, save_steps=1000,
                eval_examples=64, max_length=64)
    return TrainConfig(**{**base, **kw})


def metrics(run_dir, kind):
    return MetricsLog(run_dir).read(kind)


def tiny():
    torch.manual_seed(0)
    return load_model("tiny")


@pytest.mark.slow
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
    loss_fn = AnswerLoss(tiny()).eval()
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
    loss_fn = AnswerLoss(tiny()).eval()
    data = TokenShards(sorted((tokens / "train").glob("*.arrow")))
    plain = collate(data, [0, 1, 2], 64, "answer", 50256)
    rounded = collate(data, [0, 1, 2], 64, "answer", 50256, buckets=np.array([48, 64]), rows_multiple=64,
                      batch_rows=8)
    assert rounded.input_ids.shape == (8, 64) and len(rounded.targets) % 64 == 0  # 5 rows of padding added
    assert rounded.predicted == plain.predicted == int((plain.targets != -100).sum())
    loss = lambda b: float(batch_loss(loss_fn, b))  # noqa: E731
    with torch.no_grad():
        assert loss(rounded) == pytest.approx(loss(plain), rel=1e-5)
    hidden = torch.randn(5, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    from shardtune.train.loss import linear_cross_entropy

    target = torch.tensor([3, -100, 7, -100, 1])
    ours = linear_cross_entropy(hidden, weight, target)
    ours.backward()
    assert hidden.grad[1].abs().sum() == 0 and hidden.grad[3].abs().sum() == 0  # ignored rows learn nothing
    ref = torch.nn.functional.cross_entropy(hidden @ weight.T, target, reduction="sum", ignore_index=-100)
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)


def test_chunked_linear_cross_entropy_matches_the_plain_one(monkeypatch):
    from shardtune.train.loss import ChunkedLinearCrossEntropy, linear_cross_entropy

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


@pytest.mark.slow
def test_a_killed_run_resumes_onto_the_same_loss_curve(tokens, tmp_path, monkeypatch):
    config = small(max_steps=8, save_steps=4)
    run_train(tokens, tmp_path / "straight", config)

    def only_the_step_4_checkpoint_is_left():
        assert [p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()] == ["step-00000004"]

    kill_then_resume(monkeypatch, tokens, tmp_path / "killed", config, at_step=5,  # killed between checkpoints
                     between=only_the_step_4_checkpoint_is_left)
    straight, resumed = metrics(tmp_path / "straight", "train"), metrics(tmp_path / "killed", "train")
    assert [e["step"] for e in resumed] == list(range(1, 9))
    assert [e["loss"] for e in resumed] == pytest.approx([e["loss"] for e in straight], rel=1e-6)


@pytest.mark.slow
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


@pytest.mark.slow
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

    from shardtune.models.gpt2 import fuse_gelu

    torch.manual_seed(0)
    stock = GPT2().build("tiny", prepare=False).eval()
    fused = fuse_gelu(copy.deepcopy(stock))
    assert stock.config.activation_function == "gelu_new"
    assert fused.config.activation_function == "gelu_pytorch_tanh"  # saved in final/, loads the fused op
    ids = torch.randint(0, 50257, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(fused(ids).logits, stock(ids).logits, rtol=1e-5, atol=1e-5)


def test_activation_checkpointing_recomputes_the_same_gradients(tokens):
    from shardtune.models import enable_activation_checkpointing

    data = TokenShards(sorted((tokens / "train").glob("*.arrow")))
    batch = collate(data, [0, 1, 2, 3], 64, "answer", 50256)

    def grads(checkpointing: bool):
        torch.manual_seed(0)
        model = load_model("tiny").train()  # dropout on: recomputation must replay the same masks
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


def test_learning_rate_warms_up_then_decays_linearly_or_by_cosine():
    linear = small(lr=1.0, warmup_steps=4, schedule="linear")
    assert [lr_at(s, 14, linear) for s in (0, 1, 3)] == [0.25, 0.5, 1.0]  # warmup reaches the peak at its end
    assert [lr_at(s, 14, linear) for s in (4, 9, 14)] == [1.0, 0.5, 0.0]  # then straight down to 0
    cosine = small(lr=1.0, warmup_steps=0, schedule="cosine")
    assert lr_at(0, 10, cosine) == 1.0 and lr_at(10, 10, cosine) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(5, 10, cosine) == pytest.approx(0.5) and lr_at(2, 10, cosine) > 1 - 2 / 10  # above the line early


def test_ddp_ranks_read_disjoint_equal_shares():
    lengths = torch.randint(5, 60, (203,)).numpy()
    shares = [epoch_batches(lengths, 8, seed=3, epoch=1, rank=r, world=3) for r in range(3)]
    assert len({len(s) for s in shares}) == 1  # every rank takes the same number of steps
    seen = [int(i) for share in shares for batch in share for i in batch]
    assert len(seen) == len(set(seen))  # no example on two ranks
    everything = [int(i) for batch in epoch_batches(lengths, 8, seed=3, epoch=1) for i in batch]
    assert set(seen) <= set(everything) and len(everything) - len(seen) < 3 * 8  # at most the remainder is left


def test_two_micro_batches_of_8_give_the_gradient_of_one_batch_of_16(tokens, tmp_path):
    data = TokenShards(sorted((tokens / "train").glob("*.arrow")))
    order = list(range(16))

    def gradients(batch_size, grad_accum):
        trainer = Trainer(tokens, tmp_path / f"run-{grad_accum}", small(batch_size=batch_size, grad_accum=grad_accum))
        for m in trainer.model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0  # dropout would draw different masks for different batch shapes
        parts = [order[i:i + batch_size] for i in range(0, 16, batch_size)]
        trainer._next_step = lambda: ([trainer._collate(data, p) for p in parts], (0, 16 // batch_size))
        grads, zero_grad = {}, trainer.optimizer.zero_grad

        def keep_then_zero(set_to_none=True):  # the step's gradient, as the optimizer used it
            grads.update({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
            zero_grad(set_to_none=set_to_none)

        trainer.optimizer.zero_grad = keep_then_zero
        trainer.train_step()
        return grads

    whole, accumulated = gradients(16, 1), gradients(8, 2)
    assert whole.keys() == accumulated.keys() and len(whole) > 10
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_loss_on_prompt_and_answer_end_to_end(tokens, tmp_path, capsys):
    args = ["train", str(tokens), "--model", "tiny", "--max-steps", "2", "--batch-size", "8", "--max-length", "64",
            "--eval-examples", "32", "--log-steps", "1"]
    assert main([*args, "--out", str(tmp_path / "answer")]) == 0
    assert main([*args, "--out", str(tmp_path / "both"), "--loss-on", "prompt+answer"]) == 0
    answer, both = metrics(tmp_path / "answer", "eval")[-1], metrics(tmp_path / "both", "eval")[-1]
    assert both["val_tokens"] > answer["val_tokens"] * 1.1  # the prompt's tokens carry loss too
    assert json.loads((tmp_path / "both" / "final" / "shardtune.json").read_text())["train_config"]["loss_on"] == \
        "prompt+answer"


def test_precision_follows_the_device(monkeypatch):
    from shardtune.train.device import choose_precision

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert choose_precision(cpu, "auto").name == choose_precision(cpu, "bf16").name == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))  # RTX 3060
    ampere = choose_precision(gpu, "auto")
    assert (ampere.name, ampere.autocast_dtype, ampere.use_scaler) == ("bf16", torch.bfloat16, False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # RTX 2060: no bf16
    turing = choose_precision(gpu, "auto")
    assert (turing.name, turing.autocast_dtype, turing.use_scaler) == ("fp16", torch.float16, True)
    assert choose_precision(gpu, "fp32").autocast_dtype is None


@pytest.mark.slow
@pytest.mark.parametrize("damage, message", [
    (lambda ckpt: (ckpt / "model.safetensors").write_bytes(b"not safetensors"), "cannot resume from"),
    (lambda ckpt: (ckpt / "optimizer.pt").write_bytes(b"\x80\x04junk"), "cannot resume from"),
])
def test_a_corrupt_checkpoint_is_a_one_line_error(tokens, tmp_path, capsys, damage, message):
    run_train(tokens, tmp_path / "run", small(max_steps=4, save_steps=2, save_total_limit=2))
    damage(tmp_path / "run" / "checkpoints" / "step-00000004")
    args = ["train", str(tokens), "--out", str(tmp_path / "run"), "--model", "tiny", "--max-steps", "6",
            "--batch-size", "8", "--max-length", "64", "--eval-examples", "32", "--resume"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "step-00000004" in err[-1] and "Traceback" not in "\n".join(err)


def test_resume_from_the_command_line_keeps_the_runs_own_settings(tokens, tmp_path, capsys):
    run_train(tokens, tmp_path / "run", small(max_steps=2, save_steps=2, lr=2e-3, warmup_steps=1))
    capsys.readouterr()
    args = ["train", str(tokens), "--out", str(tmp_path / "run"), "--resume", "--max-steps", "3"]
    assert main(args) == 0  # neither the model nor the batch, rate or warm-up repeated
    assert "--resume continues with the run's own --model tiny, --max-length 64, --batch-size 8" in capsys.readouterr().err
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert (saved["lr"], saved["warmup_steps"], saved["max_steps"]) == (2e-3, 1, 3)
    # how long it runs is the run's own too, unless given: not the default's three epochs
    assert main(["train", str(tokens), "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert "--max-steps 3" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["max_steps"] == 3


@pytest.mark.slow
def test_a_checkpoint_of_another_model_is_refused(tokens, tmp_path, capsys):
    from shardtune.train.checkpoint import load_checkpoint

    run_train(tokens, tmp_path / "run", small(max_steps=2, save_steps=2))
    (ckpt,) = (tmp_path / "run" / "checkpoints").iterdir()
    other = GPT2().build("distilgpt2")  # 6 layers, 768 wide: not the tiny model the checkpoint holds
    optimizer = torch.optim.AdamW(other.parameters())
    with pytest.raises(UserError, match="cannot resume from"):
        load_checkpoint(ckpt, other, optimizer, torch.device("cpu"))


def watch_syncs(trainer):
    """(syncs inside train_step, steps after which a sync happened outside it) over trainer.run()."""
    from shardtune.train.trace import OpTrace

    inside, outside, current = [], set(), {"step": None}
    original = trainer.train_step

    def watched():
        current["step"] = trainer.state.step + 1
        original()
        current["step"] = None

    trainer.train_step = watched

    def seen(name):
        if current["step"] is not None:
            inside.append((current["step"], name))
        else:
            outside.add(trainer.state.step)

    with OpTrace(on_sync=seen):
        trainer.run()
    return inside, outside


# Under activation checkpointing transformers turns the key/value cache off, and without one it
# checks the positions for packed rows, reading the answer back: shardtune tells it instead.
@pytest.mark.parametrize("options", [{}, {"grad_checkpointing": True}, {"model": "tiny-llama", "lora_r": 4},
                                     {"model": "tiny-llama", "grad_checkpointing": True}])
def test_a_steady_state_step_never_reads_a_value_back_from_the_device(tokens, tmp_path, options):
    trainer = Trainer(tokens, tmp_path / "run", small(max_steps=12, log_steps=4, eval_steps=8, save_steps=6,
                                                      **options))
    inside, outside = watch_syncs(trainer)
    assert inside == []  # no step waits for the device
    assert {0, 4, 8, 12} <= outside <= {0, 4, 6, 8, 12}  # reads only to log, evaluate and save


def test_the_sync_detector_sees_a_read_back(tokens, tmp_path, monkeypatch):
    from shardtune.train.counters import Counters

    original = Counters.add
    monkeypatch.setattr(Counters, "add", lambda self, loss, *a: (float(loss), original(self, loss, *a))[1])
    inside, _ = watch_syncs(Trainer(tokens, tmp_path / "run", small(max_steps=3, log_steps=3)))
    assert [step for step, _ in inside] == [1, 2, 3]


@pytest.mark.slow
def test_batches_made_ahead_on_a_thread_train_exactly_as_made_in_line(tokens, tmp_path, monkeypatch):
    run_train(tokens, tmp_path / "ahead", small(max_steps=6))
    monkeypatch.setattr(Trainer, "_next_step", lambda self: self._make_step((self.state.epoch, self.state.batch_in_epoch)))
    run_train(tokens, tmp_path / "in-line", small(max_steps=6))
    ahead, in_line = metrics(tmp_path / "ahead", "train"), metrics(tmp_path / "in-line", "train")
    assert [e["loss"] for e in ahead] == [e["loss"] for e in in_line] and len(ahead) == 6


def test_length_buckets_keep_shapes_few_and_padding_low():
    from shardtune.train.data import bucket_of, length_buckets

    rng = np.random.default_rng(0)
    lengths = np.minimum(rng.lognormal(4.8, 0.45, 20_000).astype(int) + 20, 256)  # like catalogue examples
    buckets = length_buckets(lengths, 256, 16)
    assert len(buckets) <= 16 and buckets[-1] == lengths.max() and (buckets % 8 == 0).all()
    shapes, real, total = set(), 0, 0
    for batch in epoch_batches(lengths, 16, seed=1, epoch=0, buckets=buckets):
        length = bucket_of(int(lengths[batch].max()), buckets, 256)
        shapes.add(length)
        real, total = real + int(lengths[batch].sum()), total + 16 * length
    assert len(shapes) <= 16 and 1 - real / total < 0.05  # the goals at max length 256
    uniform = np.arange(16, 257, 16)  # 16 equal buckets pad more than buckets fitted to the data
    assert (uniform[np.searchsorted(uniform, lengths)] - lengths).sum() > (buckets[np.searchsorted(buckets, lengths)] - lengths).sum()
    everything = sorted(int(i) for b in epoch_batches(lengths, 16, seed=1, epoch=0, buckets=buckets) for i in b)
    assert everything == list(range(len(lengths)))  # every example once an epoch


@pytest.mark.slow
def test_the_compiled_body_gives_the_eager_loss_and_gradients(tokens):
    data = TokenShards(sorted((tokens / "train").glob("*.arrow")))
    batch = collate(data, list(range(8)), 64, "answer", 50256, buckets=np.array([64]))

    def loss_and_grads(compiled: bool):
        model = tiny().eval()  # no dropout: the two runs must draw nothing random
        body = torch.compile(model.base_model) if compiled else None
        loss = batch_loss(AnswerLoss(model, body=body), batch)
        loss.backward()
        return float(loss), [p.grad for p in model.parameters()]

    (eager, eager_grads), (compiled, compiled_grads) = loss_and_grads(False), loss_and_grads(True)
    assert compiled == pytest.approx(eager, rel=1e-4)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def tensorboard_scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.mark.slow
def test_tensorboard_event_files_load_and_a_resume_logs_no_step_twice(tokens, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed")
    config = small(max_steps=8, save_steps=4, report_to="tensorboard")
    run_train(tokens, tmp_path / "straight", config)
    straight = tensorboard_scalars(tmp_path / "straight", "train/loss")
    assert [step for step, _ in straight] == list(range(1, 9))
    assert [step for step, _ in tensorboard_scalars(tmp_path / "straight", "eval/val_loss")] == [0, 8]
    # steps 5 and 6 logged, then killed: the checkpoint is at 4
    kill_then_resume(monkeypatch, tokens, tmp_path / "killed", config, at_step=6)
    resumed = tensorboard_scalars(tmp_path / "killed", "train/loss")
    assert [step for step, _ in resumed] == list(range(1, 9))  # 5 and 6 once, not twice
    assert [v for _, v in resumed] == pytest.approx([v for _, v in straight], rel=1e-5)


def test_tensorboard_missing_is_a_one_line_error(tokens, tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ImportError("TensorBoard logging requires TensorBoard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    args = ["train", str(tokens), "--out", str(tmp_path / "run"), "--model", "tiny", "--max-steps", "1",
            "--report-to", "tensorboard"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "needs the tensorboard package" in err[-1] and "pip install 'shardtune[tensorboard]'" in err[-1]


def test_a_non_finite_figure_is_logged_as_null_so_metrics_jsonl_stays_json(tmp_path):
    log = MetricsLog(tmp_path)
    log.append({"type": "eval", "step": 3, "val_loss": float("nan"), "val_perplexity": float("inf")})
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line) == {"type": "eval", "step": 3, "val_loss": None, "val_perplexity": None}
    assert "NaN" not in line and "Infinity" not in line


def test_metrics_jsonl_is_read_line_by_line_within_bounds(tmp_path):
    """What a kill or a hand edit leaves (a torn line, bytes that are not UTF-8, a line of megabytes,
    an entry without an integer step or with a figure that is not a number) is skipped, never held
    whole; the entries around it are read."""
    edited = b'{"type": "eval", "step": null}\n{"type": "train", "step": "x"}\n{"type": "eval", "step": 2, ' \
             b'"val_loss": "low"}\n[1, 2]\ntrue\n{"type": "train", "step": true}\n{"type": "lunch", "step": 4}\n'
    (tmp_path / "metrics.jsonl").write_bytes(b'{"type": "train", "step": 1}\n{"type": "tr\n\xff\xfe{}\n' + edited
                                             + b"x" * (3 << 20) + b'\n{"type": "eval", "step": 2}\n')
    assert MetricsLog(tmp_path).read() == [{"type": "train", "step": 1}, {"type": "eval", "step": 2}]
    assert MetricsLog(tmp_path).read("eval") == [{"type": "eval", "step": 2}]
    MetricsLog(tmp_path).truncate_after(1)  # what --resume does: an edited step once stopped it with a TypeError
    assert MetricsLog(tmp_path).read() == [{"type": "train", "step": 1}]
    (tmp_path / "metrics.jsonl").unlink()
    (tmp_path / "metrics.jsonl").symlink_to("/dev/zero")
    with pytest.raises(UserError, match="is not a plain file"):
        MetricsLog(tmp_path).read()
    (tmp_path / "metrics.jsonl").unlink()
    os.mkfifo(tmp_path / "metrics.jsonl")  # no writer: opening it would wait for ever
    with pytest.raises(UserError, match="is not a plain file"):
        MetricsLog(tmp_path).read()


def test_resuming_a_finished_run_repeats_no_step(tokens, tmp_path):
    run_train(tokens, tmp_path / "run", small(max_steps=2))
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    run_train(tokens, tmp_path / "run", small(max_steps=2, resume=True))
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
    assert [e["step"] for e in metrics(tmp_path / "run", "eval")] == [0, 2]


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf"])
def test_a_gpu_memory_cap_that_is_not_a_size_is_refused(monkeypatch, value):
    from shardtune.train.device import cap_gpu_memory

    monkeypatch.setenv("SHARDTUNE_GPU_MEMORY_GB", value)
    with pytest.raises(UserError, match="SHARDTUNE_GPU_MEMORY_GB must be a number of GB"):
        cap_gpu_memory(torch.device("cpu"))  # refused before any CUDA call, so testable here


@pytest.mark.parametrize("env, message", [
    ({"RANK": "abc", "WORLD_SIZE": "2"}, "RANK='abc' is not a process number"),
    ({"WORLD_SIZE": ""}, "WORLD_SIZE='' is not a process number"),
    ({"WORLD_SIZE": "-3"}, "is not a process number"),
    ({"WORLD_SIZE": "0"}, "counts no process"),
    ({"RANK": "5", "WORLD_SIZE": "2"}, "RANK=5 is not below WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2"}, "MASTER_ADDR and MASTER_PORT is not set"),
])
def test_torchrun_variables_that_no_torchrun_set_are_one_line_errors(monkeypatch, env, message):
    from shardtune.train.device import processes

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=re.escape(message)):
        processes()


def test_a_world_size_whose_other_processes_never_come_ends_in_one_line(monkeypatch):
    import socket

    from shardtune.train.device import join_processes

    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                        "SHARDTUNE_RENDEZVOUS_S": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match="did not join at 127.0.0.1"):
        join_processes(2, "gloo")  # once it waited in C++, deaf to Ctrl-C, until killed
    monkeypatch.setenv("SHARDTUNE_RENDEZVOUS_S", "soon")
    with pytest.raises(UserError, match="is not a number of seconds"):
        join_processes(2, "gloo")


def test_a_rank_left_in_the_shell_does_not_make_a_single_run_write_nothing(tokens, tmp_path, monkeypatch):
    """RANK=1 without WORLD_SIZE once made a plain run train, skip every write, and end with nothing."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    run_train(tokens, tmp_path / "run", TrainConfig(model="tiny", max_steps=2, batch_size=4, max_length=64,
                                                    eval_examples=8))
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()

