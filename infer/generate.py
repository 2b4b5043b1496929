"""`shardtune generate`: answers about a product, asked in the template the model was taught.

A run's `final/` folder carries `shardtune.json` with the template its tokens were
built with, so the question is always wrapped exactly as in training (the seed
trained on "Question:/Answer:" and then asked "Pergunta:/Resposta:"). Any other
Hugging Face causal LM is asked in the default template.
"""

from __future__ import annotations

import functools

import json
from pathlib import Path
from typing import Iterator

import torch

from shardtune.console import log, meter
from shardtune.errors import UserError
from shardtune.files import check_not_device, wide_encoding
from shardtune.template import PromptTemplate
from shardtune.tokens.tokenizer import encode_text

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
        embeddings = getattr(model, "get_input_embeddings", None)  # every transformers model has one
        self.known_ids = embeddings().num_embeddings if embeddings is not None else None
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
        ids = encode_text(self.tokenizer, prompt)
        room = self.context - max_new_tokens
        encode = lambda text: encode_text(self.tokenizer, text)  # noqa: E731
        before, after = self.template.around()
        fixed = self._template_tokens  # the template, whole, around one token of title
        if room < fixed + 1:
            raise UserError(f"--max-new-tokens {max_new_tokens} leaves no room for the question in the model's "
                            f"context of {self.context:,} tokens (the template alone takes {fixed}); use at most "
                            f"{max(1, self.context - fixed - 1):,}")
        if len(ids) > room:
            # keep the template around the title whole and cut the title from the left
            keep = room - fixed
            if not self._warned:
                log(f"generate: a question is longer than the model's context; keeping its last {keep} tokens")
                self._warned = True
            ids = encode(before) + encode(question)[-keep:] + encode(after)
        known = self.known_ids
        if known is not None and max(ids, default=0) >= known:  # past the embedding: an IndexError, a GPU assert
            raise UserError(f"the question's token id {max(ids):,} is past the {known:,} ids the model knows: its "
                            "tokenizer is not the model's; give a folder whose model and tokenizer were saved together")
        return ids

    @functools.cached_property
    def _template_tokens(self) -> int:
        """Tokens of the template around the title: the same for every question."""
        before, after = self.template.around()
        return sum(len(ids) for ids in encode_text(self.tokenizer, [before, after]))

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


MAX_QUESTION_BYTES = 1 << 16  # a longer line is not a product title: it is skipped, and counted


def bounded_lines(f) -> Iterator[bytes | None]:
    """The lines of a binary file; None for a line over MAX_QUESTION_BYTES, skipped unread."""
    while line := f.readline(MAX_QUESTION_BYTES + 1):
        if len(line) > MAX_QUESTION_BYTES and not line.endswith(b"\n"):
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield None
        else:
            yield line


def questions_in(path: Path) -> Iterator[str | None]:
    """Each non-blank line's question: the line itself, or a JSONL line's `title` (or `question`);
    None for a line that holds none (not JSON, no usable title, not UTF-8, too long)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"input file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"--input {path} is a folder; give a file of questions") from None
    with f:
        encoding = wide_encoding(f.peek(4)[:4])
        if encoding:  # every line would be unusable: say what the whole file is
            raise UserError(f"--input {path} is {encoding} text; convert it to UTF-8 first "
                            f"(iconv -f {encoding} -t UTF-8 ...)")
        if f.peek(3)[:3] == b"\xef\xbb\xbf":  # a UTF-8 byte-order mark (Notepad's): not part of the first question
            f.read(3)
        for raw in bounded_lines(f):
            try:
                line = raw.decode("utf-8").strip() if raw is not None else None
            except UnicodeDecodeError:
                yield None
                continue
            if line is None or not line.startswith("{"):
                if line != "":
                    yield line
                continue
            try:
                record = json.loads(line)
                title = record.get("title") or record.get("question") if isinstance(record, dict) else None
            except (ValueError, RecursionError):
                title = None
            usable = isinstance(title, str) and title.strip() and _is_text(title)
            yield title.strip() if usable else None


def _is_text(s: str) -> bool:
    """Whether a decoded JSON string is text: an escaped lone surrogate ("\\ud800") is not."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_output(src: Path, dst: Path, force: bool = False) -> None:
    """Refuse, before a model loads, an input that would never end and an output that would lose data."""
    check_not_device(src, "--input")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise UserError(f"--output {dst} is the input file; writing it would overwrite the questions")
    if dst.is_dir():
        raise UserError(f"--output {dst} is a folder; give a file name")
    if not dst.parent.is_dir():
        raise UserError(f"the folder of --output {dst} does not exist; create it or choose another")
    if dst.is_file() and dst.stat().st_size and not force and not _earlier_answers(dst):
        raise UserError(f"--output {dst} exists and is not an answers file of this command (perhaps real data); "
                        "choose another name, or add --force to replace it")


def _earlier_answers(path: Path) -> bool:
    """Whether every line of a file is one this command writes: a JSON object with an "answer"
    (streamed, a line at a time)."""
    with open(path, "rb") as f:
        while line := f.readline(1 << 20):  # bounded: a line longer than any answer is no answer
            try:
                value = json.loads(line)
            except (ValueError, RecursionError):
                return False
            if not isinstance(value, dict) or "answer" not in value:
                return False
    return True


def answer_file(answerer: Answerer, src: Path, dst: Path, sampling: GenerateConfig,
                force: bool = False) -> tuple[int, int]:
    """Answer every question of `src` into JSONL `dst`, streaming; (answered, lines skipped as unusable)."""
    from shardtune.files import atomic_open

    check_output(src, dst, force)
    answered = skipped = 0
    batch: list[str] = []
    with atomic_open(dst, "w", encoding="utf-8") as f, meter("generate", None, "questions",
                                                             ("questions",)) as progress:
        def flush() -> None:
            nonlocal answered
            for result in answerer.answer(batch, sampling):
                f.write(json.dumps(result, ensure_ascii=False) + "\n")
            answered += len(batch)
            batch.clear()
            progress.update(answered, questions=answered)

        for question in questions_in(src):
            if question is None:
                skipped += 1
                continue
            batch.append(question)
            if len(batch) == sampling.batch_size:
                flush()
        if batch:
            flush()
        if not answered:
            raise UserError(f"{src} holds no questions ({skipped:,} unusable lines: not JSON with a title, not "
                            "UTF-8, or too long)")
    if skipped:
        log(f"generate: skipped {skipped:,} line(s) of {src} that hold no question (JSON without a title, not "
            "UTF-8, or longer than 64 KB)")
    return answered, skipped
