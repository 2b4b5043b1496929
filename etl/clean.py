"""Text cleaning rules, each a named function over a Polars string Series.

Rules run on whole batches, vectorised in Polars (Rust). The two rules whose
meaning is the standard library's (`html.unescape`, `unicodedata.normalize("NFKC")`)
are exact by construction, with no Python call per row: Polars extracts every piece
the standard function would rewrite (an entity; a run of non-ASCII characters with the
one character before it), the standard function rewrites each *distinct* piece once,
and one Aho-Corasick pass (`str.replace_many`, leftmost-longest) puts them back. A
batch of 40,000 catalogue rows holds a few hundred distinct entities, not 40,000.

Order matters and is fixed by CLEANING_RULES:
  1. strip_html_tags          <b>x</b>y      -> " x y"      (a space, so words don't glue)
  2. decode_html_entities     &quot; &#8217; &#x2019; &#160; &copy;  -> " ’ ’ NBSP ©
  3. normalize_unicode        NFKC: NBSP -> space, "ﬁ" -> "fi", "™" -> "TM"; é stays é
  4. remove_amazon_boilerplate  "--This text refers to ... edition (of this title)."
  5. collapse_whitespace      control characters and whitespace runs -> one space, then strip
Entities are decoded after tags are removed, so an escaped "&lt;b&gt;" in the
text survives as the literal characters "<b>" instead of being taken for markup.
"""

from __future__ import annotations

import html
import unicodedata
from functools import partial
from typing import Callable

import polars as pl

# An HTML/XML tag or comment. A tag must start with a letter, '/' or '!', so
# "a < b and c > d" in running text is not mistaken for markup.
HTML_TAG = r"<!--.*?-->|</?[A-Za-z][^<>]*>"

# Amazon's edition note, e.g. "--This text refers to thePaperbackedition." or
# "--This text refers to an out of print or unavailable edition of this title."
AMAZON_BOILERPLATE = r"(?i)\s*-{1,3}\s*This text refers to\b.{0,150}?edition(?:\s+of\s+this\s+title)?\s*\.?"

# What collapse_whitespace must rewrite: a run of two or more whitespace/control
# characters, or a single one that is not a plain space. Matching plain single
# spaces too would rewrite every word gap and costs 7x more.
WHITESPACE_RUN = r"[\p{Cc}\s]{2,}|[[\p{Cc}\s]--[ ]]"


def _apply_where(s: pl.Series, mask: pl.Series, fn: Callable[[pl.Series], pl.Series]) -> pl.Series:
    """Apply `fn` only to the rows selected by `mask` (most rows need no change)."""
    idx = mask.fill_null(False).arg_true()
    if idx.len() == 0:
        return s
    return s.scatter(idx, fn(s.gather(idx)))


# html.unescape's own pattern (Lib/html/__init__.py): what it sees as an entity, with or without ";"
ENTITY = r"&(?:#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)"
# A run of non-ASCII characters with the character before it: NFKC can compose a run with the
# character before it ("e" + U+0301 -> "é") but never with an ASCII character after it (no
# canonical composition has an ASCII second character), and leaves ASCII alone, so normalising
# these pieces one by one is normalising the whole text.
NON_ASCII_RUN = r"[\x00-\x7F]?[^\x00-\x7F]+"


def _rewrite_pieces(pattern: str, fn: Callable[[str], str]) -> Callable[[pl.Series], pl.Series]:
    """Rewrite every match of `pattern` with `fn`, calling `fn` once per distinct match.

    Correct when `fn` of a match does not depend on its surroundings and the matches of
    `pattern` are what a left-to-right scan finds: then replacing the distinct matches,
    longest first at each position (leftmost-longest), finds those same matches."""
    def rewrite(part: pl.Series) -> pl.Series:
        pieces = part.str.extract_all(pattern).explode().drop_nulls().unique().to_list()
        changes = [(piece, new) for piece in pieces if (new := fn(piece)) != piece]
        if not changes:
            return part
        changes.sort(key=lambda change: -len(change[0]))
        return part.str.replace_many([old for old, _ in changes], [new for _, new in changes], leftmost=True)

    return rewrite


def strip_html_tags(s: pl.Series) -> pl.Series:
    return _apply_where(s, s.str.contains("<", literal=True), lambda part: part.str.replace_all(HTML_TAG, " "))


def decode_html_entities(s: pl.Series) -> pl.Series:
    return _apply_where(s, s.str.contains("&", literal=True), _rewrite_pieces(ENTITY, html.unescape))


def normalize_unicode(s: pl.Series) -> pl.Series:
    # Python's own NFKC (its Unicode version), not Polars' str.normalize, whose tables may be
    # of another Unicode version; only rows with a multi-byte character can change.
    return _apply_where(s, s.str.len_bytes() != s.str.len_chars(),
                        _rewrite_pieces(NON_ASCII_RUN, partial(unicodedata.normalize, "NFKC")))


def remove_amazon_boilerplate(s: pl.Series) -> pl.Series:
    has_note = s.str.contains("(?i)text refers to")
    return _apply_where(s, has_note, lambda part: part.str.replace_all(AMAZON_BOILERPLATE, " "))


def collapse_whitespace(s: pl.Series) -> pl.Series:
    return s.str.replace_all(WHITESPACE_RUN, " ").str.strip_chars(" ")


CLEANING_RULES: tuple[Callable[[pl.Series], pl.Series], ...] = (
    strip_html_tags,
    decode_html_entities,
    normalize_unicode,
    remove_amazon_boilerplate,
    collapse_whitespace,
)


def clean_series(s: pl.Series) -> pl.Series:
    def run_rules(part: pl.Series) -> pl.Series:
        for rule in CLEANING_RULES:
            part = rule(part)
        return part

    # Empty strings stay empty: a third of catalogue contents are, so skip them.
    return _apply_where(s, s.str.len_bytes() > 0, run_rules)


def clean_text(text: str) -> str:
    """Clean one string with exactly the batch rules (for tests and generation)."""
    return clean_series(pl.Series([text], dtype=pl.String))[0]


def clean_frame(df: pl.DataFrame, columns: tuple[str, ...] = ("title", "content")) -> pl.DataFrame:
    return df.with_columns([clean_series(df[c]).alias(c) for c in columns])
