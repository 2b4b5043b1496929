"""The prompt template: the one definition that tokenization, training and
generation all use, so a model is always asked the way it was taught.

An example is  prompt(title) + content + EOS.  The seed notebook forgot the EOS
(its model never learned to stop) and its indented f-string baked twelve spaces
into every example; here the text is exactly what is written below.
"""

from __future__ import annotations

import functools
import hashlib
import string
from dataclasses import dataclass

from .errors import UserError

DEFAULT_TEMPLATE = (
    "You are an assistant that answers questions based on the product description.\n"
    "Question: {title}\n"
    "Answer: "
)


@dataclass(frozen=True)
class PromptTemplate:
    text: str = DEFAULT_TEMPLATE

    def __post_init__(self) -> None:
        try:
            parsed = list(string.Formatter().parse(self.text))
        except ValueError as e:  # a lone brace
            raise UserError(f"prompt template is not a format string ({e}); write a literal brace as {{{{ or }}}}") \
                from None
        fields = [(name, spec, conversion) for _, name, spec, conversion in parsed if name is not None]
        if fields != [("title", "", None)]:
            found = ", ".join("{" + (name or "") + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
                              for name, spec, conv in fields) or "none"
            raise UserError(f"prompt template must contain {{title}} once and no other {{fields}} (found: {found}); "
                            "write a literal brace as {{ or }}")

    def prompt(self, title: str) -> str:
        return self.text.format(title=title)

    def split(self, title: str) -> tuple[str, str]:
        """(prompt, answer prefix): the prompt without its trailing spaces, and those spaces.

        Byte-level BPE tokenizers (GPT-2) join a space to the word after it, so
        "Answer: High" is tokenized ":", " High". Encoding the prompt as
        "...Answer:" and the answer as " High..." gives exactly the ids of the
        whole text, and generation starts from a prompt the model has seen.
        """
        full = self.prompt(title)
        prompt = full.rstrip(" ")
        return prompt, full[len(prompt):]

    @functools.cached_property
    def _around(self) -> tuple[str, str]:
        """(text before {title}, text after it), escaped braces unescaped."""
        parsed = list(string.Formatter().parse(self.text))
        at = next(i for i, (_, name, _, _) in enumerate(parsed) if name is not None)
        return "".join(lit for lit, *_ in parsed[:at + 1]), "".join(lit for lit, *_ in parsed[at + 1:])

    def around(self) -> tuple[str, str]:
        """(text before {title}, text after it up to the answer): what a prompt keeps whole
        when a long title has to be cut."""
        before, after = self._around
        return before, after.rstrip(" ")

    def title_of(self, prompt: str) -> str:
        """The title inside a prompt this template made (the inverse of prompt())."""
        before, after = self.around()
        return prompt.removeprefix(before).removesuffix(after).strip()

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]
