"""The seed notebook's training setup, kept only as the benchmark's baseline.

Hugging Face Trainer with DataCollatorForLanguageModeling(mlm=False) over examples
tokenized with padding="max_length", truncation=True, max_length=256, fp16 when
CUDA is there, optim="adamw_torch_fused". Writes its figures as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch


def run(etl_dir: Path, out: Path, model_name: str, from_scratch: bool, steps: int, batch_size: int) -> dict:
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    from shardtune.models import load_model
    from shardtune.template import DEFAULT_TEMPLATE
    from shardtune.tokens.tokenizer import load_tokenizer
    from shardtune.train.device import cap_gpu_memory

    cuda = torch.cuda.is_available()
    if cuda:
        cap_gpu_memory(torch.device("cuda", 0))
    tokenizer = load_tokenizer("distilgpt2")
    tokenizer.pad_token = tokenizer.eos_token
    need = steps * batch_size
    rows = pq.read_table(sorted(etl_dir.glob("part-*.parquet"))[0], columns=["title", "content"]).slice(0, need)
    texts = [DEFAULT_TEMPLATE.format(title=t) + c for t, c in zip(rows.column(0).to_pylist(), rows.column(1).to_pylist())]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=256)
    examples = [{"input_ids": i, "attention_mask": m} for i, m in zip(enc["input_ids"], enc["attention_mask"])]
    real_per_example = sum(sum(m) for m in enc["attention_mask"]) / len(examples)

    torch.manual_seed(42)
    model = load_model(model_name, from_scratch=from_scratch, vocab_size=len(tokenizer),
                       eos_id=tokenizer.eos_token_id, prepare=False)
    marks: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            marks[state.global_step] = time.perf_counter()

    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=batch_size, max_steps=steps,
                             learning_rate=5e-5, weight_decay=0.01, fp16=cuda,
                             optim="adamw_torch_fused" if cuda else "adamw_torch", save_strategy="no",
                             logging_steps=max(1, steps // 4), report_to=[], dataloader_num_workers=0,
                             use_cpu=not cuda)
    trainer = Trainer(model=model, args=args, train_dataset=examples, callbacks=[Clock()],
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    trainer.train()
    half = steps // 2  # steady state: the second half of the steps
    seconds = marks[steps] - marks[half]
    result = {"useful_tokens_per_s": real_per_example * min(batch_size, len(examples)) * (steps - half) / seconds,
              "padding": 1 - real_per_example / 256,
              "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}
    (out / "result.json").write_text(json.dumps(result))
    return result


def seed_step(model, batch: int, length: int, dtype: torch.dtype):
    """What the seed's Trainer step allocates: Hugging Face's own loss over all padded positions."""
    input_ids = torch.zeros(batch, length, dtype=torch.long)
    mask = torch.ones(batch, length, dtype=torch.long)

    def step():
        with torch.autocast("cpu", dtype=dtype):
            loss = model(input_ids=input_ids, attention_mask=mask, labels=input_ids).loss
        loss.backward()

    return step


def seed_train_step(batch: int, length: int):
    """The seed's Trainer step, operator for operator, for the step-time model (train/steptime.py):
    Hugging Face's loss over all padded positions with an attention mask, the fp16 GradScaler
    (scale, unscale and check, update), clipping, fused AdamW. The Trainer's per-step
    isnan/isinf check reads the loss back; seed_syncs_per_step() counts such reads."""
    from shardtune.train.steptime import _fused_adamw, clip_grad_norm

    def make(device: str):
        input_ids = torch.zeros(batch, length, dtype=torch.long, device=device)
        mask = torch.ones(batch, length, dtype=torch.long, device=device)
        scale, growth = torch.full((), 65536.0, device=device), torch.zeros((), dtype=torch.int32, device=device)

        def step(model, params, state):
            loss = model(input_ids=input_ids, attention_mask=mask, labels=input_ids).loss
            (loss * scale).backward()
            found_inf = torch.zeros((), device=device)
            torch._amp_foreach_non_finite_check_and_unscale_([p.grad for p in params], found_inf, scale.reciprocal())
            clip_grad_norm(params, 1.0)
            _fused_adamw(params, state, found_inf=found_inf)
            torch._amp_update_scale_(scale, growth, found_inf, 2.0, 0.5, 2000)
            torch.isnan(loss) | torch.isinf(loss)  # the Trainer's nan/inf filter (its read-back is counted apart)

        return step

    return make


def seed_trainer_overhead(model_dir: Path, steps: int = 20) -> tuple[float, float]:
    """(reads of device values, host seconds) per steady-state step of the real Hugging Face
    Trainer loop, on a micro twin of the model (`model_dir`) with 16-token examples: the step
    and the loop's own Python (dataloader, collator, accelerate, callbacks) around it.
    Counted as the difference between 2 x `steps` and `steps` steps, so start-up and the end cancel
    (the fastest of three runs of each)."""
    import tempfile

    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from transformers import AutoModelForCausalLM

    from shardtune.tokens.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("gpt2")
    tokenizer.pad_token = tokenizer.eos_token

    def run(n: int) -> tuple[int, float]:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        examples = [{"input_ids": list(range(1000, 1016)), "attention_mask": [1] * 16} for _ in range(n)]
        with tempfile.TemporaryDirectory() as out:
            args = TrainingArguments(output_dir=out, per_device_train_batch_size=1, max_steps=n, save_strategy="no",
                                     logging_steps=10**6, report_to=[], use_cpu=not torch.cuda.is_available(),
                                     disable_tqdm=True, optim="adamw_torch_fused", fp16=torch.cuda.is_available())
            trainer = Trainer(model=model, args=args, train_dataset=examples,
                              data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
            trace = OpTrace()
            start = time.perf_counter()
            with trace:
                trainer.train()
            return trace.syncs, time.perf_counter() - start

    from shardtune.train.trace import OpTrace

    run(2)  # warm-up
    short, long = zip(*((run(steps), run(2 * steps)) for _ in range(3)))  # the fastest of three: a shared machine
    # At least 0, as loop_seconds: with a few steps (a dry run) the noise of start-up can outweigh them
    return (long[0][0] - short[0][0]) / steps, max(0.0, min(t for _, t in long) - min(t for _, t in short)) / steps


def seed_collate_seconds(batch: int = 16, length: int = 256) -> float:
    """The seed's collation of one batch on the main thread: DataCollatorForLanguageModeling
    over examples already padded to `length` (lists of ints to tensors, labels copied)."""
    from transformers import DataCollatorForLanguageModeling

    from shardtune.tokens.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("gpt2")
    tokenizer.pad_token = tokenizer.eos_token
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    examples = [{"input_ids": list(range(1000, 1000 + length)), "attention_mask": [1] * length}
                for _ in range(batch)]
    collator(examples)
    start = time.perf_counter()
    for _ in range(20):
        collator(examples)
    return (time.perf_counter() - start) / 20


if __name__ == "__main__":
    etl_dir, out, model, scratch, steps, batch = sys.argv[1:7]
    Path(out).mkdir(parents=True, exist_ok=True)
    print(run(Path(etl_dir), Path(out), model, scratch == "1", int(steps), int(batch)))
