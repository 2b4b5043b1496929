"""Grounding: is an answer about the product asked? The share of the title's content words
(colour, product type, material, brand, audience: what is left of the title once function
words and numbers are set aside) that the answer repeats.

ROUGE-L and perplexity cannot tell an answer about the asked "Girls Hoodie Navy Blue" from
a fluent one about "a gold costume cape for mens": most of a description is boilerplate
both share. The real description's own grounding is the ceiling a model can be held to.
"""

from __future__ import annotations

import re

STOPWORDS = frozenset("""a an and are as at be by for from has have in is it its of on or our the this that to
with without your you all new set pack inch inches size sizes quart pc pcs piece pieces vol volume book series
edition""".split())


def content_words(text: str) -> set[str]:
    """Lower-cased words of two or more letters, function words dropped, a plural's "s" dropped."""
    words = set()
    for word in re.findall(r"[^\W\d_]{2,}", text.lower()):
        if word not in STOPWORDS:
            words.add(word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word)
    return words


def grounding(title: str, answer: str) -> float | None:
    """Share of the title's content words found in the answer; None for a title without any."""
    wanted = content_words(title)
    return len(wanted & content_words(answer)) / len(wanted) if wanted else None


def mean_grounding(titles: list[str], answers: list[str]) -> float:
    scores = [g for g in map(grounding, titles, answers) if g is not None]
    return sum(scores) / len(scores) if scores else 0.0
