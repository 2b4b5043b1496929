"""`run_etl` end to end on tiny inline files: drop reasons, bad input, formats, accounting."""

import gzip
import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from conftest import rec, write_lines
from shardtune.etl.config import EtlConfig
from shardtune.etl.pipeline import run_etl
from shardtune.manifest import EtlManifest


def rows(out):
    return pl.read_parquet(out / "part-*.parquet").to_dicts()


def rejects(out):
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def test_kept_records_are_cleaned_and_sharded(tmp_path):
    src = write_lines(tmp_path / "trn.json", [rec(uid=f"B{i}", title=f"Tutu &quot;{i}&quot;") for i in range(5)])
    m = run_etl([src], tmp_path / "out", EtlConfig(shard_rows=2))
    assert [s.rows for s in m.shards] == [2, 2, 1]
    assert [s.file for s in m.shards] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert pq.read_schema(tmp_path / "out" / "part-00000.parquet").names == ["uid", "title", "content"]
    assert rows(tmp_path / "out")[0] == {"uid": "B0", "title": 'Tutu "0"',
                                         "content": "High quality 3 layer ballet tutu, 12 inches long."}
    assert m.lines_read == m.records_kept == 5 and m.balanced()
    assert EtlManifest.read(tmp_path / "out") == m


def test_each_drop_reason_is_counted(tmp_path):
    src = write_lines(tmp_path / "trn.json", [
        rec(uid="keep"),
        rec(uid="t", title="  <br> "),  # empty title after cleaning
        rec(uid="c", content=""),
        rec(uid="c2", content="&#160; <p></p>"),  # empty after cleaning
        rec(uid="s", content="TUtu"),
        rec(uid="e", title="Worship with Don Moen [VHS]", content="Worship with  Don Moen [VHS]"),
        rec(uid="dup"),  # same (title, content) as "keep"
    ])
    m = run_etl([src], tmp_path / "out", EtlConfig())
    assert m.dropped == {"empty_title": 1, "empty_content": 2, "short_content": 1, "content_equals_title": 1,
                         "duplicate": 1}
    assert [r["uid"] for r in rows(tmp_path / "out")] == ["keep"]
    assert m.balanced()


def test_duplicates_are_found_across_batches_and_dropped_rows_can_be_kept(tmp_path):
    src = write_lines(tmp_path / "trn.json", [rec(uid="a"), rec(uid="b", content="Other text that is long enough."),
                                              rec(uid="c"), rec(uid="d", content="x")])
    m = run_etl([src], tmp_path / "out", EtlConfig(batch_lines=1, keep_dropped=True))
    assert m.dropped["duplicate"] == 1 and m.records_kept == 2
    dropped = pl.read_parquet(tmp_path / "out" / "dropped-*.parquet")
    assert dropped.select("uid", "reason").rows() == [("c", "duplicate"), ("d", "short_content")]


def test_min_content_chars_option(tmp_path):
    src = write_lines(tmp_path / "trn.json", [rec(content="Short one.")])
    assert run_etl([src], tmp_path / "a", EtlConfig()).dropped["short_content"] == 1
    assert run_etl([src], tmp_path / "b", EtlConfig(min_content_chars=5)).records_kept == 1


BAD_LINES = [
    (b'{"uid": "x1", "title": "Cut off', "invalid_json"),
    (b"ERROR 503 Service Unavailable", "invalid_json"),
    (b'{"uid": "x2", "title": "Bad \xff\xfe bytes", "content": "Some long enough content here."}', "invalid_utf8"),
    (b'{"uid": "x3", "title": null, "content": "Some long enough content here."}', "wrong_type"),
    (b'{"uid": "x4", "title": 12345, "content": 6.5}', "wrong_type"),
    (b'{"uid": "x5", "title": "No content field"}', "missing_field"),
    (b"", "blank_line"),
    (b"   \r", "blank_line"),
    (b"[1, 2, 3]", "wrong_type"),
]


@pytest.mark.parametrize("bad, kind", BAD_LINES)
def test_a_bad_line_is_quarantined_and_loses_no_good_record(tmp_path, bad, kind):
    src = write_lines(tmp_path / "trn.json", [rec(uid="before"), bad, rec(uid="after", content="Another good one here.")])
    m = run_etl([src], tmp_path / "out", EtlConfig())
    assert [r["uid"] for r in rows(tmp_path / "out")] == ["before", "after"]
    assert m.malformed == 1 and m.malformed_reasons == {kind: 1} and m.balanced()
    if kind == "blank_line":  # nothing in it to audit: counted in the manifest, not written out
        assert rejects(tmp_path / "out") == []
        return
    (reject,) = rejects(tmp_path / "out")
    assert reject["line"] == 2 and reject["kind"] == kind and reject["file"] == str(src)


def test_a_10_mb_line_is_quarantined_without_holding_it(tmp_path):
    huge = rec(uid="huge", content="x" * 10_000_000)
    src = write_lines(tmp_path / "trn.json", [rec(uid="a"), huge, rec(uid="b", content="Another good one here.")])
    m = run_etl([src], tmp_path / "out", EtlConfig())
    assert [r["uid"] for r in rows(tmp_path / "out")] == ["a", "b"]
    (reject,) = rejects(tmp_path / "out")
    assert reject["kind"] == "line_too_long" and reject["line"] == 2 and len(reject["raw"]) <= 1024
    # A user who wants such lines can raise the limit.
    m = run_etl([src], tmp_path / "out2", EtlConfig(max_line_bytes=20_000_000))
    assert m.records_kept == 3 and m.malformed == 0


def test_gzip_input_and_several_inputs(tmp_path):
    plain = write_lines(tmp_path / "a.json", [rec(uid="a")])
    packed = tmp_path / "b.json.gz"
    packed.write_bytes(gzip.compress(write_lines(tmp_path / "b.json", [rec(uid="b", content="A different text here.")]).read_bytes()))
    m = run_etl([plain, packed], tmp_path / "out", EtlConfig())
    assert [r["uid"] for r in rows(tmp_path / "out")] == ["a", "b"]
    assert [(i.path, i.lines_read, i.records_kept) for i in m.inputs] == [(str(plain), 1, 1), (str(packed), 1, 1)]


def test_truncated_gzip_keeps_what_came_before(tmp_path):
    data = write_lines(tmp_path / "a.json", [rec(uid=f"u{i}", content=f"Content number {i} is long enough.") for i in range(2000)])
    packed = gzip.compress(data.read_bytes())
    (tmp_path / "cut.json.gz").write_bytes(packed[: len(packed) // 2])
    m = run_etl([tmp_path / "cut.json.gz"], tmp_path / "out", EtlConfig())
    assert m.records_kept > 0 and m.malformed_reasons.get("broken_stream") == 1 and m.balanced()


@pytest.mark.parametrize("cut", [2, 3, 9, 11])
def test_a_gzip_cut_inside_its_header_is_a_broken_stream_not_an_empty_file(tmp_path, cut):
    # Python's gzip raises once for a header cut short, then reads as empty: that error must count
    packed = gzip.compress(json.dumps(rec(uid="a")).encode() + b"\n")
    (tmp_path / "cut.json.gz").write_bytes(packed[:cut])
    m = run_etl([tmp_path / "cut.json.gz"], tmp_path / "out", EtlConfig())
    assert m.lines_read == 1 and m.malformed_reasons == {"broken_stream": 1} and m.balanced()
    assert rejects(tmp_path / "out")[0]["kind"] == "broken_stream"


def test_json_array_input_is_streamed(tmp_path):
    src = tmp_path / "trn_array.json"
    src.write_text(json.dumps([rec(uid="a"), {"uid": "b", "title": None}, rec(uid="c", content="Another good one here.")],
                              indent=1))
    m = run_etl([src], tmp_path / "out", EtlConfig())
    assert [r["uid"] for r in rows(tmp_path / "out")] == ["a", "c"]
    assert m.lines_read == 3 and m.malformed_reasons == {"wrong_type": 1}
    assert rejects(tmp_path / "out")[0]["line"] == 2


def test_ndjson_whose_first_line_is_a_bare_array_is_still_read_line_by_line(tmp_path):
    src = write_lines(tmp_path / "trn.json", ["[1, 2]", rec(uid="a"), rec(uid="b", content="Another good one here.")])
    m = run_etl([src], tmp_path / "out", EtlConfig())
    assert [r["uid"] for r in rows(tmp_path / "out")] == ["a", "b"]
    assert m.lines_read == 3 and m.malformed_reasons == {"wrong_type": 1} and m.balanced()
    one_line_array = tmp_path / "one_line.json"
    one_line_array.write_text(json.dumps([rec(uid="c")]) + "\n")
    assert run_etl([one_line_array], tmp_path / "out2", EtlConfig()).records_kept == 1


@pytest.mark.parametrize("first", ["[1, 2", "[", "[{\"uid\": \"x\""])
def test_ndjson_whose_first_line_is_a_broken_array_costs_that_line_alone(tmp_path, first):
    src = write_lines(tmp_path / "trn.json", [first] + [rec(uid=f"u{i}", content=f"Content number {i} is long.")
                                                        for i in range(300)])
    m = run_etl([src], tmp_path / "out", EtlConfig())
    assert m.lines_read == 301 and m.records_kept == 300 and m.malformed == 1 and m.balanced()


@pytest.mark.skipif(not Path("/proc/self/mountinfo").is_file(), reason="no /proc here")
def test_a_file_that_says_it_is_empty_but_is_not_is_read_as_a_stream(tmp_path):
    m = run_etl([Path("/proc/self/mountinfo")], tmp_path / "out", EtlConfig())  # st_size 0, lines inside
    assert m.lines_read > 0 and m.malformed == m.lines_read and m.balanced()


def test_a_broken_json_array_keeps_the_elements_before_the_break(tmp_path):
    src = tmp_path / "trn_array.json"
    text = json.dumps([rec(uid="a"), rec(uid="b", content="Another good one here.")])
    src.write_text(text[:-30])
    m = run_etl([src], tmp_path / "out", EtlConfig())
    assert [r["uid"] for r in rows(tmp_path / "out")] == ["a"]
    assert m.malformed_reasons == {"broken_stream": 1} and m.balanced()


@pytest.mark.parametrize("after", [b"", b"  \n", b" [" + json.dumps(rec(uid="c")).encode() + b"]", b" garbage"])
def test_a_json_array_with_a_byte_order_mark_is_read_and_data_after_it_is_counted(tmp_path, after):
    src = tmp_path / "trn_array.json"
    src.write_bytes(b"\xef\xbb\xbf" + json.dumps([rec(uid="a"), rec(uid="b", content="Another good one here.")]).encode()
                    + after)
    m = run_etl([src], tmp_path / "out", EtlConfig())
    assert [r["uid"] for r in rows(tmp_path / "out")] == ["a", "b"] and m.balanced()
    # whitespace after the array is nothing; anything else would go uncounted, so it is one reject
    assert m.malformed_reasons == ({} if not after.strip() else {"broken_stream": 1})


def test_reruns_are_deterministic_and_replace_the_old_output(tmp_path):
    from shardtune.data.synth import write_synth

    src = tmp_path / "trn.json"
    write_synth(src, 3000, seed=3, malformed_rate=0.01)
    first = run_etl([src], tmp_path / "out", EtlConfig(shard_rows=500))
    digest = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("part-*.parquet")}
    second = run_etl([src], tmp_path / "out", EtlConfig(shard_rows=500))
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").glob("part-*.parquet")} == digest
    assert first.shards == second.shards and first.dropped == second.dropped and second.balanced()
    # Fewer shards on a re-run with other options: the old extra shards are gone.
    run_etl([src], tmp_path / "out", EtlConfig(shard_rows=100_000))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".shardtune.lock", "manifest.json",
                                                                    "part-00000.parquet", "rejects.jsonl"]


def test_a_utf8_byte_order_mark_and_crlf_line_ends_are_tolerated(tmp_path):
    src = tmp_path / "trn.json"
    src.write_bytes(b"\xef\xbb\xbf" + json.dumps(rec(uid="a")).encode() + b"\r\n" +
                    json.dumps(rec(uid="b", content="Another good one here.")).encode() + b"\r\n")
    m = run_etl([src], tmp_path / "out", EtlConfig())
    assert m.records_kept == 2 and m.malformed == 0


@pytest.mark.slow
def test_output_is_byte_identical_for_any_number_of_workers(tmp_path):
    import gzip as gz

    from shardtune.data.synth import write_synth

    write_synth(tmp_path / "trn.json", 6000, seed=9, malformed_rate=0.01, profile="heavy")
    (tmp_path / "trn.json.gz").write_bytes(gz.compress((tmp_path / "trn.json").read_bytes()))
    texts = []  # the lines that are JSON (a broken one could break the array's frame), every other one pretty
    for i, line in enumerate((tmp_path / "trn.json").read_bytes().splitlines()):
        try:
            record = json.loads(line)
            texts.append(json.dumps(record, indent=2).encode() if i % 2 else line)
        except ValueError:  # UnicodeDecodeError included
            pass
    (tmp_path / "trn_array.json").write_bytes(b"[\n" + b",\n".join(texts) + b"\n]\n")
    lines = {"trn.json": 6000, "trn.json.gz": 6000, "trn_array.json": len(texts)}
    for name in lines:  # read in spans by the workers; streamed in blocks from gzip; an array's elements
        outs = {}
        for workers in (1, 2, 3):
            out = tmp_path / f"{name}-{workers}"
            m = run_etl([tmp_path / name], out, EtlConfig(workers=workers, batch_bytes=256 << 10, shard_rows=700,
                                                          keep_dropped=True))
            files = sorted(p for p in out.iterdir() if p.name not in ("manifest.json", ".shardtune.lock"))
            outs[workers] = ({p.name: p.read_bytes() for p in files}, m.records_kept, m.dropped, m.malformed_reasons)
            assert m.balanced() and m.lines_read == lines[name] and len(m.shards) > 3
        assert outs[1] == outs[2] == outs[3], name


def test_a_bad_line_in_a_later_span_keeps_its_own_line_number(tmp_path):
    good = [rec(uid=f"u{i}", content=f"Content number {i} is long enough.") for i in range(3000)]
    src = write_lines(tmp_path / "trn.json", good[:2000] + [b"{broken"] + good[2000:])
    m = run_etl([src], tmp_path / "out", EtlConfig(workers=2, batch_bytes=32 << 10))
    (reject,) = rejects(tmp_path / "out")
    assert reject["line"] == 2001 and m.lines_read == 3001 and m.records_kept == 3000


def test_blocks_and_spans_depend_on_the_input_alone_not_on_how_it_was_read(tmp_path, monkeypatch):
    import random

    import shardtune.etl.lines as lines_module
    import shardtune.etl.read as read

    r = random.Random(0)
    lines = [b"x" * r.randint(0, 300) for _ in range(4000)]
    path = tmp_path / "x.json"
    path.write_bytes(b"\n".join(lines) + b"\n")

    def by_hand(batch_lines, batch_bytes):  # the definition, line by line
        out, current, size = [], [], 0
        for line in lines:
            current.append(line)
            size += len(line) + 1
            if len(current) >= batch_lines or size >= batch_bytes:
                out.append(current)
                current, size = [], 0
        return out + [current] if current else out  # no empty block at the end

    for batch_lines, batch_bytes in ((7, 10**9), (10**9, 1024), (50, 5000), (13, 1100)):
        for chunk in (1024, 4096, 1 << 16):
            monkeypatch.setattr(lines_module, "CHUNK_BYTES", chunk)
            reader = read.InputReader(path, batch_lines, 1 << 20, batch_bytes)
            assert [b.lines() for b in reader._blocks()] == by_hand(batch_lines, batch_bytes)
            spans = list(reader._spans())
            reader.close()
            assert spans[0].start == 0 and spans[-1].end == path.stat().st_size
            assert all(a.end == b.start for a, b in zip(spans, spans[1:]))  # no gap, no overlap
            data = path.read_bytes()
            assert all(data[s.end - 1:s.end] == b"\n" for s in spans)  # each ends after a whole line
            assert spans == list(read.InputReader(path, batch_lines, 1 << 20, batch_bytes)._spans())


def test_a_span_read_whole_gives_what_streaming_it_gives(tmp_path, monkeypatch):
    import shardtune.etl.lines as lines
    import shardtune.etl.read as read
    from shardtune.etl.fields import Fields, schema

    path = tmp_path / "x.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(rec(uid="a")).encode() + b"\r\n\n" + b'{"uid": "' + b"y" * 5000
                     + b'"}\n' + b"{broken\n" + json.dumps(rec(uid="b")).encode())  # no newline at the end

    def judged(whole_span_bytes):
        monkeypatch.setattr(lines, "WHOLE_SPAN_BYTES", whole_span_bytes)
        reader = read.InputReader(path, 10**9, 1000, 1024)
        out = []
        for span in reader._spans():
            batch = read.decode_lines(lines.span_lines(span, 1000), 1, 0, 1000, schema(Fields()))
            out.append(([r.f0 for r in batch.records], [(m.line, m.kind, m.raw) for m in batch.malformed]))
        reader.close()
        return out

    whole = judged(1 << 30)
    assert whole == judged(0)  # 0: every span streams
    real_pread = lines.os.pread
    monkeypatch.setattr(lines.os, "pread", lambda fd, n, at: real_pread(fd, min(n, 100), at))  # a file system reading short
    assert judged(1 << 30) == whole
    assert [kind for _, bad in whole for _, kind, _ in bad] == ["blank_line", "line_too_long", "invalid_json"]
    assert [uid for uids, _ in whole for uid in uids] == ["a", "b"]


def test_the_heavy_profile_is_heavy():
    import re

    from shardtune.data.synth import synth_lines

    for profile, entities, non_ascii, tags, length in (("light", (0.05, 0.15), (0.1, 0.2), (0.02, 0.08), (400, 520)),
                                                        ("heavy", (0.5, 0.7), (0.3, 0.5), (0.28, 0.42), (560, 720))):
        contents = [c for c in (json.loads(line)["content"] for line in synth_lines(4000, seed=3, profile=profile)) if c]
        share = lambda pattern: sum(bool(re.search(pattern, c)) for c in contents) / len(contents)  # noqa: E731
        assert entities[0] < share(r"&(#\d+|#x[0-9a-fA-F]+|[a-z]+);") < entities[1], profile
        assert non_ascii[0] < share(r"[^\x00-\x7f]") < non_ascii[1], profile
        assert tags[0] < share(r"<[a-z/][^>]*>") < tags[1], profile
        assert length[0] < sum(map(len, contents)) / len(contents) < length[1], profile


def other_catalogue(n: int = 30) -> list[dict]:
    """Records shaped like Amazon's newer metadata dumps or a shop's export: other names, nested, lists."""
    return [{"parent_asin": 1000 + i, "product": {"name": f"Girls Hoodie Navy Blue {i}", "brand": "Kestrel"},
             "details": {"description": ["A navy blue hoodie", f"for girls, model {i}."]}, "price": 9.5}
            for i in range(n)]


def test_other_catalogues_map_their_own_nested_keys(tmp_path):
    items = other_catalogue() + [{"parent_asin": 7, "product": {"name": "No details here"}}]
    src = write_lines(tmp_path / "meta.jsonl", items)
    config = EtlConfig(id_field="parent_asin", title_field="product.name", content_field="details.description")
    m = run_etl([src], tmp_path / "out", config)
    assert rows(tmp_path / "out")[0] == {"uid": "1000", "title": "Girls Hoodie Navy Blue 0",
                                         "content": "A navy blue hoodie for girls, model 0."}
    assert m.records_kept == 30 and m.malformed_reasons == {"missing_field": 1}
    assert (m.options["id_field"], m.options["title_field"], m.options["content_field"]) == \
        ("parent_asin", "product.name", "details.description")  # recorded in the manifest


def test_the_mapping_comes_from_flags_or_the_toml_table(tmp_path):
    from shardtune.cli import main

    src = write_lines(tmp_path / "meta.jsonl", other_catalogue())
    cfg = tmp_path / "shardtune.toml"
    cfg.write_text('[etl]\nid_field = "parent_asin"\ntitle_field = "product.name"\n')
    assert main(["etl", str(src), "--out", str(tmp_path / "out"), "--config", str(cfg),
                 "--content-field", "details.description"]) == 0
    assert EtlManifest.read(tmp_path / "out").records_kept == 30


def test_default_fields_missing_from_most_lines_is_an_error_naming_the_keys_found(tmp_path, capsys):
    from shardtune.cli import main

    src = write_lines(tmp_path / "meta.jsonl", other_catalogue())
    assert main(["etl", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "parent_asin" in err[0] and "product.name" in err[0] and "--title-field" in err[0]
    assert not (tmp_path / "out").exists()  # nothing was started


@pytest.mark.parametrize("change", ["cut", "grown"])
def test_an_input_changed_while_read_is_an_error_not_a_hang(tmp_path, change):
    import shardtune.etl.read as read
    from shardtune.errors import UserError

    path = write_lines(tmp_path / "trn.json", [rec(uid=f"u{i}", content=f"Content number {i} here.") for i in range(400)])
    reader = read.InputReader(path, 10**9, 1000, 1024)
    spans = reader._spans()
    next(spans)
    with open(path, "r+b") as f:  # another program cuts the file, or appends to it, mid-run
        f.truncate(2000) if change == "cut" else (f.seek(0, 2), f.write(b'{"uid": "late"}\n'))
    with pytest.raises(UserError, match="changed while it was read"):
        list(spans)
    reader.close()
