"""`shardtune generate`: answers about a product, asked in the template the model was taught.

A run's `final/` folder carries `shardtune.json` with the template its tokens were
built with, so the question is always wrapped exactly as in training (the seed
trained on "Question:/Answer:" and then asked "Pergunta:/Resposta:"). Any other
Hugging Face causal LM is asked in the default template.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from shardtune.console import log, meter
from shardtune.errors import UserError
from shardtune.template import PromptTemplate

from .config import GenerateConfig


class Answerer:
    """A model, its tokenizer and its template, ready to answer questions."""

    def __init__(self, model, tokenizer, template: PromptTemplate, context: int, run_dir: Path | None = None) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.template = template
        self.context = context
        self.run_dir = run_dir  # the run that trained the model, when shardtune did
        self.eos = tokenizer.eos_token_id
        self._warned = False

    @classmethod
    def load(cls, name: str) -> "Answerer":
        """A run's final/ folder, any Hugging Face causal LM folder or hub name, or a preset."""
        from shardtune.models import load_for_inference

        loaded = load_for_inference(name)
        return cls(loaded.model, loaded.tokenizer, loaded.template, loaded.context, loaded.run_dir)

    def prompt_ids(self, question: str, max_new_tokens: int) -> list[int]:
        question = question.strip()
        if not question:
            raise UserError("the question is empty; give a product title or a sentence about one")
        prompt, _ = self.template.split(question)
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        room = self.context - max_new_tokens
        if len(ids) > room:
            # keep the template around the title whole and cut the title from the left
            encode = lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
            before, after = self.template.around()
            fixed = len(encode(before)) + len(encode(after))
            keep = max(1, room - fixed)
            if not self._warned:
                log(f"generate: a question is longer than the model's context; keeping its last {keep} tokens")
                self._warned = True
            ids = encode(before) + encode(question)[-keep:] + encode(after)
        return ids

    @torch.no_grad()
    def answer(self, questions: list[str], sampling: GenerateConfig, stream: bool = False) -> list[dict]:
        """Answers for a batch of questions (left-padded), each with whether it stopped at EOS."""
        torch.manual_seed(sampling.seed)
        prompts = [self.prompt_ids(q, sampling.max_new_tokens) for q in questions]
        longest = max(len(p) for p in prompts)
        pad = self.eos
        input_ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        streamer = None
        if stream and len(questions) == 1:
            from transformers import TextStreamer

            streamer = TextStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        out = self.model.generate(input_ids=input_ids, attention_mask=mask, pad_token_id=pad, eos_token_id=self.eos,
                                  streamer=streamer, **sampling.sampling_kwargs())
        results = []
        for q, row in zip(questions, out[:, longest:].tolist()):
            stopped = self.eos in row
            text_ids = row[:row.index(self.eos)] if stopped else row
            results.append({"question": q, "answer": self.tokenizer.decode(text_ids, skip_special_tokens=True).strip(),
                            "stopped_at_eos": stopped, "new_tokens": len(text_ids)})
        return results


def read_questions(path: Path) -> list[str]:
    """One question per line, or JSONL with a `title` (or `question`) field."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"input file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    questions = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                rec = json.loads(line)
                line = rec.get("title") or rec.get("question") or ""
            except (ValueError, AttributeError):
                raise UserError(f"{path}:{n} is not valid JSON; give one question per line or JSONL with a title") from None
        if line.strip():
            questions.append(line.strip())
    if not questions:
        raise UserError(f"{path} holds no questions")
    return questions


def answer_file(answerer: Answerer, src: Path, dst: Path, sampling: GenerateConfig) -> int:
    from shardtune.files import atomic_open

    questions = read_questions(src)
    size = sampling.batch_size
    with atomic_open(dst, "w", encoding="utf-8") as f, meter("generate", len(questions), "questions",
                                                             ("questions",)) as progress:
        for start in range(0, len(questions), size):
            for result in answerer.answer(questions[start:start + size], sampling):
                f.write(json.dumps(result, ensure_ascii=False) + "\n")
            done = min(start + size, len(questions))
            progress.update(done, questions=done)
    return len(questions)
