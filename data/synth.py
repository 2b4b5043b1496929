"""`shardtune synth`: trn.json-like catalogue lines of any size, deterministic by seed.

The text is the project's own (small word lists below), shaped like the real
AmazonTitles-1.3MM / LF-Amazon-1.3M `trn.json`: about 840 bytes a line, much of it
the label arrays; ~45% of records with empty or under-100-character content, the
rest mostly 100-1,500 characters with a long tail. It carries the catalogue's
quirks: HTML entities (named, decimal, hex), tags that glue words, the Amazon
"--This text refers to ..." note, content equal to the title, exact duplicates,
non-ASCII letters and symbols, control characters and whitespace runs. Optional
malformed lines exercise the cleaner's error paths.

Descriptions are built from the same attributes as their titles (colour,
material, audience, subject), so a small model can learn to answer from a title.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from shardtune.options import Config, option


@dataclass
class SynthConfig(Config):
    SECTION = "synth"

    lines: int = option(10_000, "lines to write", min=0, max=10**15)
    seed: int = option(0, "random seed: the same seed writes the same file", min=0, max=2**32 - 1)
    malformed_rate: float = option(0.0, "share of lines made malformed, to exercise error handling", min=0, max=1,
                                   metavar="P")
    profile: str = option("light", "light: the catalogue's own mix (about 11% of descriptions with entities, 15% "
                          "non-ASCII, 5% tags, 460 characters); heavy: 60% entities, 40% non-ASCII, 35% tags, "
                          "640 characters", choices=("light", "heavy"))
    force: bool = option(False, "replace OUT if it is an existing file (it may be real data: refused without this)")

COLORS = ["Neon Pink", "Black", "Navy Blue", "Red", "Forest Green", "Purple", "Yellow", "White", "Silver", "Teal",
          "Hot Pink", "Zebra", "Leopard", "Gold", "Orange", "Sky Blue"]
MATERIALS = ["cotton", "nylon", "stainless steel", "bamboo", "leather", "polyester", "cast iron", "silicone",
             "oak", "glass", "wool", "recycled plastic"]
WHO = ["Girls", "Boys", "Adult", "Womens", "Mens", "Kids", "Toddler", "Baby"]
APPAREL = ["Ballet Tutu", "Rain Jacket", "Hoodie", "Costume Cape", "Knit Scarf", "Running Shorts", "Sun Hat",
           "Tank Top", "Pajama Set", "Dance Leotard"]
KITCHEN = ["Skillet", "Cutting Board", "Chef Knife", "Mixing Bowl Set", "Teapot", "Salad Spinner", "Dutch Oven",
           "Spatula", "Water Bottle", "Coffee Grinder"]
BRANDS = ["Kestrel", "Northwind", "Bellamy", "Orchard & Vale", "Café Lumière", "Señor Cocina", "Hartwell",
          "BrightNest", "Zephyr\u2122", "Mondragon\u00ae"]
ADJ = ["Secret", "Lost", "Silent", "Golden", "Hidden", "Last", "Wandering", "Little", "Brave", "Forgotten"]
NOUN = ["Garden", "River", "Lighthouse", "Kingdom", "Orchard", "Island", "Kitchen", "Mountain", "Library", "Harbor"]
GENRES = ["mystery", "cookbook", "history", "picture book", "travel guide", "memoir", "field guide", "novel"]
TOPICS = ["Italian home cooking", "the age of sail", "backyard birds", "a small-town bakery", "curling strategy",
          "the moon landing", "Victorian gardens", "a family of bears", "mountain railways", "café culture in Paris"]
FORMATS = ["Paperback", "Hardcover", "Kindle", "Audio CD", "Board book", "Library Binding"]
MEDIA = ["DVD", "VHS", "Audio CD", "Blu-ray", "Vinyl"]
USES = ["dance recitals", "everyday wear", "camping trips", "birthday parties", "holiday gifts", "school plays",
        "weeknight dinners", "the weekend market"]
FILLER = [
    "Comes individually packaged.", "Machine washable and quick to dry.", "Makes a wonderful gift.",
    "Customers love the fit and finish.", "Backed by a one-year warranty.", "Easy to clean after every use.",
    "Designed and tested by our team.", "Perfect for beginners and experts alike.", "Ships in a recyclable box.",
    "Read it aloud or enjoy it alone.", "It's a favourite with reviewers.", "Everyone's go-to gift.", "Now with an improved design.",
]
BOILERPLATE = ["--This text refers to the{fmt}edition.", "--This text refers to an alternate{fmt}edition.",
               "--This text refers to an out of print or unavailable edition of this title."]
MALFORMED_KINDS = ["truncated", "not_json", "invalid_utf8", "null_field", "number_field", "missing_field", "blank",
                   "not_object"]


def _apparel(r: random.Random) -> tuple[str, list[str]]:
    who, item, color, mat = r.choice(WHO), r.choice(APPAREL), r.choice(COLORS), r.choice(MATERIALS)
    title = f"{who} {item} {color}"
    first = f"This {color.lower()} {item.lower()} for {who.lower()} is made of soft {mat}, great for {r.choice(USES)}."
    return title, [first, f"The {mat} keeps its colour wash after wash."]


def _kitchen(r: random.Random) -> tuple[str, list[str]]:
    brand, item, mat = r.choice(BRANDS), r.choice(KITCHEN), r.choice(MATERIALS)
    size = r.choice(["8 Inch", "10 Inch", "12 Inch", "Large", "Compact", "2 Quart"])
    title = f"{brand} {size} {mat.title()} {item}"
    first = f"The {brand} {item.lower()} is built from {mat} and sized {size.lower()} for {r.choice(USES)}."
    return title, [first, f"Every {item.lower()} from {brand} is checked by hand."]


def _book(r: random.Random) -> tuple[str, list[str]]:
    adj, noun, genre, topic = r.choice(ADJ), r.choice(NOUN), r.choice(GENRES), r.choice(TOPICS)
    title = f"The {adj} {noun}: A {genre.title()} of {topic.title()}"
    if r.random() < 0.4:
        title += f" ({noun} Series, Book {r.randint(1, 9)})"
    first = f"A {genre} about {topic}, told through the story of the {adj.lower()} {noun.lower()}."
    return title, [first, f"Fans of {topic} will find something new on every page."]


def _media(r: random.Random) -> tuple[str, list[str]]:
    adj, noun, fmt = r.choice(ADJ), r.choice(NOUN), r.choice(MEDIA)
    title = f"{adj} {noun} Sessions, Volume {r.randint(1, 12)} [{fmt}]"
    first = f"The {fmt} collects live recordings of the {adj.lower()} {noun.lower()} sessions."
    return title, [first, f"Includes {r.randint(8, 24)} tracks and a printed booklet."]


CATEGORIES = [_apparel, _kitchen, _book, _media]


def _entities(r: random.Random, text: str) -> str:
    """Escape some characters the way the catalogue does, in all three entity styles."""
    text = text.replace("'", r.choice(["&#8217;", "&#x2019;", "&rsquo;"])).replace("&", "&amp;", 0)
    if r.random() < 0.5:
        text = f"&#8220;{text}&#8221;" if r.random() < 0.5 else f"&quot;{text}&quot;"
    return text + (" &copy; Publisher" if r.random() < 0.2 else "")


@dataclass(frozen=True)
class Profile:
    """Extra quirks on top of the catalogue's own mix, each drawn on its own (light adds none, so
    it draws exactly what it always drew and the bundled sample stays the same)."""

    length_mu: float = 6.0  # log of the description length: median ~400 characters
    entities: float = 0.0
    non_ascii: float = 0.0
    tags: float = 0.0


PROFILES = {"light": Profile(), "heavy": Profile(length_mu=6.3, entities=0.74, non_ascii=0.36, tags=0.4)}


def _heavier(r: random.Random, text: str, profile: Profile) -> str:
    if r.random() < profile.entities:
        text = _entities(r, text).replace(" & ", " &amp; ").replace("\"", "&quot;", 2)
    if r.random() < profile.non_ascii:
        text = text.replace("e", r.choice(["\u00e9", "\u00e8", "\u00ea"]), 2) + r.choice(
            [" \u2014 Cr\u00e8me edition\u2122", " (\u00bd price)", " \uff21\uff22 grade", " caf\u00e9 \u00b7 na\u00efve"])
    if r.random() < profile.tags:
        text = "<p>" + text.replace(". ", ".<br/>", 2).replace(" ", " <b>", 1).replace(" ", "</b> ", 1) + "</p>"
    return text


def _content(r: random.Random, title: str, lines: list[str], profile: Profile = PROFILES["light"]) -> str:
    roll = r.random()
    if roll < 0.35:
        return ""
    if roll < 0.37:
        return title  # dropped as content_equals_title
    if roll < 0.45:
        return r.choice([lines[0][: r.randint(3, 60)], title.split()[-1], "TUtu", "See description"])
    target = min(int(r.lognormvariate(profile.length_mu, 0.7)), 6000)  # median ~400 chars, long tail
    parts = list(lines)
    size = sum(len(p) + 1 for p in parts)
    while size < target:
        parts.append(r.choice(FILLER))
        size += len(parts[-1]) + 1
    text = " ".join(parts)
    quirk = r.random()
    if quirk < 0.08:
        text = _entities(r, text)
    elif quirk < 0.13:  # tags that glue words once naively stripped
        text = text.replace(". ", ".<br>", 2).replace(" ", "<i>", 1).replace(" ", "</i>", 1)
    elif quirk < 0.17:
        text = text.replace(" ", "  \t", 2).replace(".", ".\n", 1) + "\x07"
    elif quirk < 0.20:
        text = text.replace("e", "\u00e9", 1).replace("fi", "\ufb01", 1) + " \u2014 Cr\u00e8me edition\u2122"
    if profile != PROFILES["light"]:
        text = _heavier(r, text, profile)
    if r.random() < 0.05:
        text += ("&#160;&#160;" if r.random() < 0.5 else "") + r.choice(BOILERPLATE).format(fmt=r.choice(FORMATS))
    return text


def _malformed(r: random.Random, good: str) -> bytes:
    kind = r.choice(MALFORMED_KINDS)
    if kind == "truncated":
        return good.encode()[: r.randint(5, max(6, len(good) // 2))]
    if kind == "not_json":
        return b"ERROR 503 Service Unavailable"
    if kind == "invalid_utf8":
        return good.encode().replace(b'"title": "', b'"title": "\xff\xfe', 1)
    if kind == "null_field":
        return b'{"uid": "B000NULL00", "title": null, "content": "Something about it.", "target_ind": []}'
    if kind == "number_field":
        return b'{"uid": "B000NUMB00", "title": 12345, "content": 6.5, "target_ind": []}'
    if kind == "missing_field":
        return b'{"uid": "B000MISS00", "title": "A title without content"}'
    if kind == "blank":
        return b""
    return b'[1, 2, 3]'


def _label_pool(r: random.Random, size: int = 2048) -> list[str]:
    """Pre-formatted label arrays: drawing fresh ones per line would dominate the run time."""
    pool = []
    for _ in range(size):
        n = min(int(r.lognormvariate(3.15, 0.8)), 400)
        ind = sorted(r.sample(range(1_305_265), n))
        pool.append(f', "target_ind": {json.dumps(ind)}, "target_rel": {json.dumps([1.0] * n)}}}')
    return pool


def synth_lines(n: int, seed: int = 0, malformed_rate: float = 0.0, profile: str = "light"):
    """Yield `n` encoded lines (bytes, no newline)."""
    r = random.Random(seed)
    labels = _label_pool(r)
    recent: list[tuple[str, str]] = []
    for i in range(n):
        if recent and r.random() < 0.015:  # exact duplicate of a recent record under a new uid
            title, content = r.choice(recent)
        else:
            title, lines = r.choice(CATEGORIES)(r)
            if r.random() < 0.02:
                title = _entities(r, title)
            content = _content(r, title, lines, PROFILES[profile])
            if len(recent) < 512:
                recent.append((title, content))
            else:
                recent[r.randrange(512)] = (title, content)
        record = {"uid": f"B{i:09d}" if r.random() < 0.6 else f"{i:010d}", "title": title, "content": content}
        line = json.dumps(record, ensure_ascii=False)[:-1] + r.choice(labels)
        if malformed_rate and r.random() < malformed_rate:
            yield _malformed(r, line)
        else:
            yield line.encode()


def write_synth(out: Path, n: int, seed: int = 0, malformed_rate: float = 0.0, profile: str = "light") -> int:
    """Write `n` lines to `out` (gzip-compressed when it ends in .gz). Returns bytes written."""
    import gzip

    from shardtune.files import atomic_open

    with atomic_open(out, "wb") as raw:
        f = gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) if out.suffix.lower() == ".gz" else raw
        buf: list[bytes] = []
        written = 0  # a pipe cannot tell its position
        for line in synth_lines(n, seed, malformed_rate, profile):
            buf.append(line)
            if len(buf) >= 10_000:
                written += f.write(b"\n".join(buf) + b"\n")
                buf.clear()
        if buf:
            written += f.write(b"\n".join(buf) + b"\n")
        if f is not raw:
            f.close()
        return raw.tell() if raw.seekable() else written
