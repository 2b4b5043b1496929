"""A JSON array input is read element by element, and each element is judged as the same record on
its own NDJSON line would be: odd values cost themselves alone, whatever the layout or chunking."""

import io
import json

import polars as pl
import pytest

from conftest import rec
from shardtune.etl import json_array
from shardtune.etl.config import EtlConfig
from shardtune.etl.json_array import array_elements
from shardtune.etl.lines import BrokenStream, _TooLong
from shardtune.etl.pipeline import run_etl

# Raw JSON texts of records, the hostile ones among them: each is one NDJSON line, or one array element.
RECORDS = [
    json.dumps(rec(uid="a")),
    '{"uid": "big", "title": "Huge id", "content": "A number past 64-bit integers.", "n": 18446744073709551616}',
    '{"uid": "inf", "title": "Huge float", "content": "A number past doubles, in a field left out.", "n": 1e400}',
    '{"uid": "s", "title": "Lone \\ud800 surrogate", "content": "An escaped half of a pair."}',
    json.dumps(rec(uid='q},]{"', title='Braces }, ] { and "quotes" and \\ in strings, }, }, }, }, }, more than guessed')),
    '{"uid": "nested", "title": "Nested", "content": "An object inside the record.", "x": {"y": [1, {"z": 2}]}}',
    '{"uid": "bad", "title": "Broken", "content": }',
    '{"uid": "nul", "title": null, "content": "A title of the wrong type here."}',
    '{"uid": "deep", "title": "Deep", "content": "Nested past the decoder.", "n": ' + '{"a": ' * 1200 + "1" + "}" * 1200 + "}",
    "[1, 2]",
    '"just a string"',
    json.dumps(rec(uid="z", content="The last good record of them all.")),
]


def etl_of(path, tmp_path, name, **options):
    m = run_etl([path], tmp_path / name, EtlConfig(**options))
    return m, pl.read_parquet(tmp_path / name / "part-*.parquet").to_dicts()


@pytest.mark.parametrize("layout", ["compact", "one per line", "pretty"])
def test_an_array_is_judged_element_by_element_as_ndjson_is_line_by_line(tmp_path, layout):
    lines = tmp_path / "trn.json"
    lines.write_text("\n".join(RECORDS) + "\n")
    array = tmp_path / "trn_array.json"
    if layout == "pretty":  # one field a line, by text: re-encoding would change the huge numbers
        texts = ["{\n    " + t[1:-1].replace(', "', ',\n    "') + "\n  }" if t[0] == "{" else t for t in RECORDS]
        array.write_text("[\n  " + ",\n  ".join(texts) + "\n]\n")
    else:
        array.write_text("[" + (", " if layout == "compact" else ",\n").join(RECORDS) + "]")
    from_lines, kept_lines = etl_of(lines, tmp_path, "lines")
    from_array, kept_array = etl_of(array, tmp_path, "array")
    assert from_array.lines_read == from_lines.lines_read == len(RECORDS)
    assert from_array.malformed_reasons == from_lines.malformed_reasons
    assert from_array.malformed_reasons == {"invalid_json": 2, "wrong_type": 3, "too_deep": 1}  # huge numbers kept
    assert kept_array == kept_lines and [r["uid"] for r in kept_array][-1] == "z" and from_array.balanced()


def elements(data: bytes, limit: int = 1 << 20) -> list:
    return list(array_elements(io.BufferedReader(io.BytesIO(data)), limit))


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8, 13, 64])
def test_elements_are_the_same_however_the_stream_is_chunked(monkeypatch, chunk):
    data = ("[" + ", ".join(RECORDS) + ' , \n{"esc": "ends in \\\\"}, {"t": "a \\"}, \\" b"}  ]  \n').encode()
    whole = elements(data)
    assert [bytes(e) for e in whole] == [t.encode() for t in RECORDS] + [b'{"esc": "ends in \\\\"}',
                                                                        b'{"t": "a \\"}, \\" b"}']
    monkeypatch.setattr(json_array, "CHUNK_BYTES", chunk)
    assert elements(data) == whole


@pytest.mark.parametrize("data, expected", [
    (b"[]", []),
    (b"  [ \n ]  ", []),
    (b"[{}]", [b"{}"]),
    (b"[{}, , {}]", [b"{}", b"", b"{}"]),  # an empty element is counted, as a blank line is
    (b"[{}, ]", [b"{}", b""]),
    (b"[1, 2 ,3]", [b"1", b"2", b"3"]),
    (b"[{}, {}", [b"{}", BrokenStream(b"JSON array cut off before its closing ']'")]),
    (b"[{},", [b"{}", BrokenStream(b"JSON array cut off before its closing ']'")]),
    (b'[{"a": "}, ]', [BrokenStream(b"JSON array cut off before its closing ']'")]),
    (b"[{}}, {}]", [b"{}}", b"{}"]),  # a stray `}` is part of its element, not the array's end
    (b"[{}}", [BrokenStream(b"JSON array cut off before its closing ']'")]),
    (b"[{}] x", [b"{}", BrokenStream(b"data after the end of the JSON array")]),
    (b"[{}] \n\n", [b"{}"]),
])
def test_the_frame_of_an_array(data, expected, monkeypatch):
    assert elements(data) == expected
    monkeypatch.setattr(json_array, "CHUNK_BYTES", 2)
    assert elements(data) == expected


@pytest.mark.parametrize("data, expected", [
    # A raw newline breaks a string (JSON's have none): its element ends there, the next line goes on
    (b'[{"a": "cut\n{"b": 1},\n{"c": 2}]', [b'{"a": "cut', b'{"b": 1}', b'{"c": 2}']),
    (b'[{"a": "cut\n,{"b": 1}\n,{"c": 2}\n]', [b'{"a": "cut', b'{"b": 1}', b'{"c": 2}']),  # commas first
    (b'[{"a": 1},\n{"a": "cut\n]', [b'{"a": 1}', b'{"a": "cut']),
    (b'["a\\\n, 1, 2]', [b'"a\\', b"1", b"2"]),  # a backslash before the newline escapes nothing
    (b"[1," + b" " * 3000 + b"2]", [b"1", b"2"]),  # blanks count as a line's do, limit 4000 here
    (b"[1," + b" " * 5000 + b"2]", [b"1", _TooLong(b"2")]),
    (b"[" + b" " * 5000 + b"]", []),
    (b"[1," + b" " * 5000 + b"]", [b"1", _TooLong(b"")]),
    (b"[1" + b" " * 5000 + b",2]", [_TooLong(b"1" + b" " * 1023), b"2"]),
    (b"[1,  " + b"7" * 5000 + b"]", [b"1", _TooLong(b"7" * 1024)]),  # a head starts at the first non-blank
])
def test_what_an_element_is_does_not_depend_on_the_read_chunks(data, expected, monkeypatch):
    for chunk in (1, 2, 3, 7, 64, 4096, 1 << 20):
        monkeypatch.setattr(json_array, "CHUNK_BYTES", chunk)
        got = elements(data, limit=4000)
        assert got == expected and [type(e) for e in got] == [type(e) for e in expected], chunk


def test_guessing_where_objects_end_reads_a_chunk_once(monkeypatch):
    """Objects the fast path cannot confirm (junk after them) each fall back to the scan; the search
    for the next `},` is shared by the chunk, not repeated per element (that was quadratic)."""
    scanned = []

    class Counted:
        def search(self, buf, at):
            found = pattern.search(buf, at)
            scanned.append((found.start() if found else len(buf)) - at)
            return found

    pattern = json_array._OBJECT_END
    monkeypatch.setattr(json_array, "_OBJECT_END", Counted())
    data = b"[" + b"{}x," * 20_000 + b"{}]"
    assert len(elements(data)) == 20_001
    assert sum(scanned) < 2 * len(data)


def test_an_element_over_the_limit_keeps_its_head_and_the_rest_is_read(monkeypatch):
    long = b'{"uid": "' + b"x" * 5000 + b'"}'
    data = b"[" + long + b", {}, " + long + b"]"
    for chunk in (64, 1 << 20):  # held whole in one buffer, or skipped across many
        monkeypatch.setattr(json_array, "CHUNK_BYTES", chunk)
        got = elements(data, limit=1000)
        assert [type(e) for e in got] == [_TooLong, bytes, _TooLong] and got[1] == b"{}"
        assert got[0] == long[:1024]


def test_a_large_array_in_small_chunks_holds_bounded_memory(tmp_path, monkeypatch):
    """Many elements and many chunks: each element arrives whole and nothing is lost at a boundary."""
    records = [rec(uid=f"u{i}", content=f"Content number {i} is long enough, with }}, and ] inside.") for i in range(3000)]
    src = tmp_path / "trn_array.json"
    src.write_text(json.dumps(records, indent=1))
    monkeypatch.setattr(json_array, "CHUNK_BYTES", 4096)
    m, kept = etl_of(src, tmp_path, "out")
    assert m.lines_read == m.records_kept == 3000 and [r["uid"] for r in kept] == [r["uid"] for r in records]


def long_records(n: int, words: int) -> list[str]:
    return [json.dumps({"uid": f"u{i}", "title": f"Title {i}", "content": "Product description words " * words})
            for i in range(n)]


def test_the_format_is_judged_on_whole_lines_not_on_what_a_buffer_holds(tmp_path):
    """peek() gives 4 KB of a file: long first lines were judged on a piece of themselves."""
    cases = {  # file text -> (lines read, kept)
        "[" + json.dumps("x" * 5000) + "]\n" + "\n".join(long_records(5, 5)) + "\n": (6, 5),  # NDJSON, bare array first
        "[1, 2\n" + "\n".join(long_records(5, 200)) + "\n": (6, 5),  # NDJSON whose first line is broken
        "[\n" + "\n,".join(long_records(6, 120)) + "\n]\n": (6, 6),  # an array, commas first
        "\n" * 5000 + json.dumps([json.loads(r) for r in long_records(5, 5)], indent=2): (5, 5),  # blank lines first
    }
    for i, (text, (lines, kept)) in enumerate(cases.items()):
        src = tmp_path / f"in{i}.json"
        src.write_text(text)
        m = run_etl([src], tmp_path / f"out{i}", EtlConfig())
        assert (m.lines_read, m.records_kept) == (lines, kept) and m.balanced(), (i, m.malformed_reasons)


def test_classic_mac_line_ends_are_refused_whatever_the_record_length(tmp_path):
    from shardtune.errors import UserError

    src = tmp_path / "cr.json"
    src.write_text("\r".join(long_records(6, 200)) + "\r")
    with pytest.raises(UserError, match="lone CR"):
        run_etl([src], tmp_path / "out", EtlConfig())


@pytest.mark.parametrize("prefix", [b" \xef\xbb\xbf", b"\xef\xbb\xbf\xef\xbb\xbf", b"\n\xef\xbb\xbf", b"\xbb\xbf"])
def test_junk_before_the_bracket_is_a_counted_line_not_a_crash(tmp_path, prefix):
    src = tmp_path / "in.json"
    src.write_bytes(prefix + b'[{"uid": "a", "title": "t", "content": "Long enough content here."}]\n')
    m = run_etl([src], tmp_path / "out", EtlConfig())
    assert m.records_kept == 0 and m.malformed_reasons.get("invalid_json") == 1 and m.balanced()


def test_an_array_of_one_record_a_line_loses_no_more_than_ndjson_does(tmp_path):
    """Records cut short (inside a string, a label list, between keys) cost themselves alone, as lines do."""
    from shardtune.data.synth import write_synth

    write_synth(tmp_path / "trn.json", 3000, seed=5, malformed_rate=0.02)
    lines = [line for line in (tmp_path / "trn.json").read_bytes().split(b"\n") if line.strip()]
    (tmp_path / "lines.json").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "array.json").write_bytes(b"[" + b",\n".join(lines) + b"]\n")
    from_lines, kept_lines = etl_of(tmp_path / "lines.json", tmp_path, "a")
    from_array, kept_array = etl_of(tmp_path / "array.json", tmp_path, "b")
    assert from_array.lines_read == from_lines.lines_read == len(lines) and from_array.balanced()
    assert kept_array == kept_lines and from_array.malformed_reasons == from_lines.malformed_reasons


def test_another_catalogues_field_names_are_named_for_an_array_as_for_lines(tmp_path):
    from shardtune.errors import UserError

    records = [{"parent_asin": f"A{i}", "title": f"P {i}", "description": [f"Line one of product {i}"]} for i in range(30)]
    (tmp_path / "array.json").write_text(json.dumps(records))
    with pytest.raises(UserError, match="parent_asin.*--id-field"):
        run_etl([tmp_path / "array.json"], tmp_path / "out", EtlConfig())
