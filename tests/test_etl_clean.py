"""Each cleaning rule on its own, then the whole chain, on tiny inline strings."""

import unicodedata

import polars as pl
import pytest

from shardtune.etl.clean import (clean_text, collapse_whitespace, decode_html_entities, normalize_unicode,
                                 remove_amazon_boilerplate, strip_html_tags)


def one(rule, text: str) -> str:
    return rule(pl.Series([text], dtype=pl.String))[0]


def test_tags_are_replaced_by_a_space_so_words_do_not_glue():
    assert one(strip_html_tags, "the<b>Paperback</b>edition") == "the Paperback edition"
    assert one(strip_html_tags, "line one<br/>line two<!-- note -->end") == "line one line two end"


def test_angle_brackets_in_running_text_are_not_tags():
    assert one(strip_html_tags, "if a < b and c > d") == "if a < b and c > d"


@pytest.mark.parametrize("raw, decoded", [
    ("&quot;Dispensational Truth&quot;", '"Dispensational Truth"'),
    ("Whether you&#8217;re", "Whether you\u2019re"),
    ("&#x2018;it&#x2019;s good&#x2026;", "\u2018it\u2019s good\u2026"),
    ("a&#160;b", "a\u00a0b"),
    ("&copy; 2009 &amp; more", "\u00a9 2009 & more"),
])
def test_entities_named_decimal_and_hex_are_decoded(raw, decoded):
    assert one(decode_html_entities, raw) == decoded


def test_escaped_markup_survives_as_text():
    assert clean_text("use &lt;b&gt; for bold") == "use <b> for bold"


def test_nfkc_keeps_accented_letters_and_spells_out_compatibility_forms():
    assert one(normalize_unicode, "Cre\u0300me Cafe\u0301") == "Crème Café"  # combining marks compose
    assert one(normalize_unicode, "Zephyr\u2122 \ufb01ne \uff21") == "ZephyrTM fine A"


def test_nfkc_matches_the_standard_library():
    texts = ["Señor Cocina ½ cup", "naïve ﬃ ①", "plain ascii", "Ⅻ\u00a0x", "Ｆｕｌｌ　ｗｉｄｔｈ"]
    assert normalize_unicode(pl.Series(texts)).to_list() == [unicodedata.normalize("NFKC", t) for t in texts]


def test_control_characters_and_whitespace_runs_collapse():
    assert one(collapse_whitespace, "  a\t\tb\n\nc\x07d \u00a0 e  ") == "a b c d e"
    assert one(collapse_whitespace, "already clean text") == "already clean text"


@pytest.mark.parametrize("text", [
    "Great book.--This text refers to thePaperbackedition.",
    "Great book.&#160;&#160;--This text refers to an out of print or unavailable edition of this title.",
    "Great book. --This text refers to an alternateHardcoveredition.",
])
def test_amazon_edition_note_is_removed(text):
    assert clean_text(text) == "Great book."


def test_boilerplate_rule_keeps_text_after_the_note():
    assert one(remove_amazon_boilerplate, "A.--This text refers to the Kindle edition. B.").split() == ["A.", "B."]


def test_non_ascii_letters_are_kept_unlike_the_seed():
    assert clean_text("Crème brûlée for the Café Lumière™") == "Crème brûlée for the Café LumièreTM"


def test_whole_chain_on_a_real_looking_record():
    raw = ("<p>Whether you&#8217;re stepping into the hack for the first time,<i>Curl to Win</i>will help."
           "</p>&#160;&#160;--This text refers to thePaperbackedition.")
    assert clean_text(raw) == "Whether you\u2019re stepping into the hack for the first time, Curl to Win will help."
