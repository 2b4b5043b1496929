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


# -- the vectorised rules equal the standard library, case by case and on random text --------

import html  # noqa: E402
import html.entities  # noqa: E402
import random  # noqa: E402


def test_every_named_html5_entity_decodes_as_html_unescape():
    texts = []
    for name in html.entities.html5:  # with and without ";", legacy names such as "amp" and "copy" included
        texts += [f"&{name}", f"x&{name}y", f"&{name}&{name}", f"a &{name}; b", f"&{name}{name}"]
    assert decode_html_entities(pl.Series(texts)).to_list() == [html.unescape(t) for t in texts]


NUMERIC = [0, 9, 10, 13, 38, 60, 65, 127, 128, 129, 141, 150, 159, 160, 0x2019, 0xD7FF, 0xD800, 0xDBFF, 0xDC00,
           0xDFFF, 0xE000, 0xFDD0, 0xFFFE, 0xFFFF, 0x1F600, 0x10FFFE, 0x10FFFF, 0x110000, 10**12, 10**40]


def test_decimal_and_hex_references_surrogates_and_out_of_range_decode_as_html_unescape():
    texts = []
    for n in NUMERIC:
        for ref in (f"&#{n}", f"&#{n};", f"&#x{n:x}", f"&#X{n:X};", f"&#x{n:08x};", f"&#0{n};"):
            texts += [ref, f"a{ref}b", f"{ref}{ref}", f"{ref}9"]
    assert decode_html_entities(pl.Series(texts)).to_list() == [html.unescape(t) for t in texts]


MALFORMED = ["&", "& ", "&&", "&;", "&#", "&#;", "&#x;", "&#xZZ;", "&#x", "&#12a", "&#x1g;", "&amp;amp;",
             "&#38;#38;", "&notin", "&notin;", "&notit;", "&ampxyz;", "&AMP", "&Amp;", "&lt&gt", "&;amp;",
             "& amp;", "&\namp;", "&" + "a" * 40 + ";", "&CounterClockwiseContourIntegral;x", "fish &chips",
             "AT&T", "&nbsp&nbsp;", "&\tlt;", "&<b>lt;", "\u00e9&eacute;&#233;"]


def test_malformed_and_borderline_references_decode_as_html_unescape():
    texts = MALFORMED + [a + b for a in MALFORMED for b in MALFORMED[:12]]
    assert decode_html_entities(pl.Series(texts)).to_list() == [html.unescape(t) for t in texts]


def random_texts(alphabet: list[str], n: int, seed: int) -> list[str]:
    r = random.Random(seed)
    return ["".join(r.choice(alphabet) for _ in range(r.randint(0, 14))) for _ in range(n)]


def test_random_entity_soup_decodes_as_html_unescape():
    alphabet = ["&", "#", "x", "X", ";", "amp", "lt", "not", "in", "copy", "nbsp", "1", "2", "9", "0", "a", "F",
                " ", "\n", "<", "é", "it", "AElig", "zz", "38", "x26", "169"]
    texts = random_texts(alphabet, 4000, seed=1)
    assert decode_html_entities(pl.Series(texts)).to_list() == [html.unescape(t) for t in texts]


def test_random_unicode_normalises_as_nfkc():
    alphabet = ["a", "e", "E", " ", "<", "=", ">", "1", "\u0301", "\u0300", "\u0327", "\u0308", "\u0341", "\u0338",
                "\u0323", "\u031b", "é", "ñ", "\ufb01", "\u2122", "\u00bd", "\uff21", "\u2460", "\u338f", "\u00a0",
                "\u3000", "\u1100", "\u1161", "\u11a8", "\uac00", "\u0391", "\u0386", "\u2126", "\u212b", "\u00c5",
                "\u1e9b", "\u0345", "\u03d2", "\ufe64", "\U0001d400", "\u2024", "\u2025", "\u0f73", "\u0f71"]
    texts = random_texts(alphabet, 4000, seed=2)
    assert normalize_unicode(pl.Series(texts)).to_list() == [unicodedata.normalize("NFKC", t) for t in texts]


def test_unicode_normalisation_of_every_assigned_character_matches_nfkc():
    # every code point but the surrogates, alone and after an "e" it could combine with
    chars = [chr(c) for c in range(0x80, 0x30000) if not 0xD800 <= c <= 0xDFFF]
    texts = [" ".join(chars[i:i + 64]) for i in range(0, len(chars), 64)] + ["e" + c for c in chars[::7]]
    assert normalize_unicode(pl.Series(texts)).to_list() == [unicodedata.normalize("NFKC", t) for t in texts]
