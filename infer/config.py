"""Options of `shardtune generate` and `shardtune eval` (apart from the code, so `--help` needs no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from shardtune.errors import UserError
from shardtune.options import Config, option


@dataclass
class GenerateConfig(Config):
    """How answers are sampled, and how many questions share a batch."""

    SECTION = "generate"

    max_new_tokens: int = option(128, "answer tokens at most", min=1, max=100_000)
    temperature: float = option(0.7, "sampling temperature; 0 for greedy, else at least 0.01", min=0, max=100)
    top_p: float = option(0.9, "nucleus sampling: smallest set of tokens whose probability reaches P", above=0,
                          max=1, metavar="P")
    top_k: int = option(50, "sample among the K most likely tokens (0: all)", min=0, metavar="K")
    repetition_penalty: float = option(1.2, "divide the odds of tokens already generated (1: off)", min=0.01,
                                       max=100)
    seed: int = option(0, "sampling seed", min=0, max=2**32 - 1)
    batch_size: int = option(8, "questions generated together (with --input)", min=1, max=4096)

    def validate(self) -> None:
        if 0 < self.temperature < 0.01:  # logits divided by less overflow: use greedy decoding instead
            raise UserError(f"--temperature must be 0 (greedy) or at least 0.01 (got {self.temperature:g})")

    def sampling_kwargs(self) -> dict:
        """Keyword arguments of `model.generate` for these options."""
        kwargs = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty}
        if self.temperature <= 0:
            return {"do_sample": False, **kwargs}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                **kwargs}


@dataclass
class EvalConfig(Config):
    SECTION = "eval"

    samples: int = option(100, "held-out products answered by both models", min=1)
    eval_examples: int = option(1000, "validation examples for perplexity (0: all)", min=0)
    max_new_tokens: int = option(96, "answer tokens at most (greedy)", min=1, max=100_000)
    seed: int = option(0, "seed of the sample of products", min=0, max=2**32 - 1)
    batch_size: int = option(16, "examples per batch, for perplexity and answers", min=1, max=4096)

    def sampling(self) -> GenerateConfig:
        """Greedy answers, so that both models are judged on their most likely text."""
        return GenerateConfig(max_new_tokens=self.max_new_tokens, temperature=0.0, repetition_penalty=1.2,
                              seed=self.seed, batch_size=self.batch_size)
