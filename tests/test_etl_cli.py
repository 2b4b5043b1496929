"""The `shardtune etl` and `synth` commands as a user meets them: exit codes, one-line errors, kill and re-run."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import rec, write_lines
from shardtune.cli import main
from shardtune.data.synth import synth_lines


def shardtune(*args, **kw):
    env = dict(os.environ, SHARDTUNE_PLAIN_LOGS="1")
    return subprocess.run([sys.executable, "-m", "shardtune.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, **kw)


def test_help_explains_every_command():
    for args in ([], ["etl"], ["synth"], ["bench", "etl"]):
        result = shardtune(*args, "--help")
        assert result.returncode == 0 and "usage: shardtune" in result.stdout
    assert "--min-content-chars" in shardtune("etl", "--help").stdout


@pytest.mark.parametrize("setup, message", [
    (lambda d: [str(d / "missing.json")], "input file not found"),
    (lambda d: [str(d)], "is a folder"),
])
def test_bad_input_paths_end_in_one_line_and_exit_2(tmp_path, setup, message):
    result = shardtune("etl", *setup(tmp_path), "--out", tmp_path / "out")
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_output_folder_holding_other_files_is_refused(tmp_path):
    src = write_lines(tmp_path / "trn.json", [rec()])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    result = shardtune("etl", src, "--out", tmp_path / "out")
    assert result.returncode == 2 and "notes.txt" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_config_file_with_flag_override(tmp_path, capsys):
    src = write_lines(tmp_path / "trn.json", [rec(content="Ten chars!"), rec(uid="2", content="Exactly fifteen")])
    cfg = tmp_path / "shardtune.toml"
    cfg.write_text("[etl]\nmin_content_chars = 12\nshard_rows = 7\n")
    assert main(["etl", str(src), "--out", str(tmp_path / "a"), "--config", str(cfg)]) == 0
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["records_kept"] == 1 and manifest["options"]["shard_rows"] == 7
    assert main(["etl", str(src), "--out", str(tmp_path / "b"), "--config", str(cfg), "--min-content-chars", "5"]) == 0
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["records_kept"] == 2
    cfg.write_text("[etl]\nmin_chars = 3\n")
    assert main(["etl", str(src), "--out", str(tmp_path / "c"), "--config", str(cfg)]) == 2
    assert "unknown key 'min_chars'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_run_is_detected_and_replaced_by_the_next(tmp_path):
    # The input is a pipe that this test feeds, so the kill lands mid-run for certain:
    # the rest of the input has not even been written when it comes.
    lines = list(synth_lines(20_000, seed=5))
    src, fifo, out = tmp_path / "trn.json", tmp_path / "trn.fifo", tmp_path / "out"
    src.write_bytes(b"".join(line + b"\n" for line in lines))
    os.mkfifo(fifo)
    args = [sys.executable, "-m", "shardtune.cli", "etl", str(fifo), "--out", str(out), "--batch-lines", "2000",
            "--shard-rows", "500"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(fifo, "wb") as feed:
        feed.write(b"".join(line + b"\n" for line in lines[:10_000]))
        feed.flush()
        deadline = time.time() + 60
        while not (out / "part-00001.parquet").exists() and time.time() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None  # still waiting for the rest of its input
        workers = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / "part-00001.parquet").exists() and not (out / "manifest.json").exists()  # incomplete, visibly
    assert workers and not psutil.wait_procs(workers, timeout=10)[1]  # its worker processes died with it
    assert shardtune("etl", src, "--out", out, "--shard-rows", 500).returncode == 0
    clean = tmp_path / "clean"
    assert shardtune("etl", src, "--out", clean, "--shard-rows", 500).returncode == 0
    names = sorted(p.name for p in clean.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names
    for name in names:
        if name.endswith(".parquet"):
            assert (out / name).read_bytes() == (clean / name).read_bytes()


def test_synth_is_deterministic_and_carries_the_catalogue_quirks(tmp_path):
    lines = list(synth_lines(3000, seed=7))
    assert lines == list(synth_lines(3000, seed=7)) and lines != list(synth_lines(3000, seed=8))
    records = [json.loads(line) for line in lines]
    contents = [r["content"] for r in records]
    assert {"uid", "title", "content", "target_ind", "target_rel"} <= set(records[0])
    assert 0.35 < sum(len(c) < 100 for c in contents) / len(contents) < 0.55
    assert any("&#8217;" in c or "&#x2019;" in c for c in contents) and any("<br>" in c for c in contents)
    assert any("This text refers to" in c for c in contents) and any(r["title"] == r["content"] for r in records)
    assert any(ord(ch) > 127 for c in contents for ch in c)
    assert 600 < sum(len(line) for line in lines) / len(lines) < 1100  # the real file: ~840 bytes a line


def test_a_status_line_shows_a_newline_in_a_path_escaped_on_one_line(tmp_path):
    write_lines(tmp_path / "in.json", [rec(uid=str(i)) for i in range(5)])
    result = shardtune("etl", tmp_path / "in.json", "--out", tmp_path / "two\nlines")
    assert result.returncode == 0, result.stderr
    summary = [line for line in result.stdout.splitlines() if "5 lines:" in line]
    assert len(summary) == 1 and summary[0].endswith("two\\nlines"), result.stderr


def test_synth_command_writes_malformed_lines_on_request(tmp_path):
    result = shardtune("synth", tmp_path / "s.json.gz", "--lines", 2000, "--malformed-rate", 0.05)
    assert result.returncode == 0, result.stderr
    out = shardtune("etl", tmp_path / "s.json.gz", "--out", tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert 40 < manifest["malformed"] < 160 and manifest["lines_read"] == 2000, out.stderr


def test_synth_writes_a_redirected_stdout_in_place_and_follows_links_but_never_a_planted_tmp(tmp_path):
    import subprocess
    import sys

    def synth(out, *flags, stdout=subprocess.DEVNULL):
        return subprocess.run([sys.executable, "-m", "shardtune.cli", "synth", str(out), "--lines", "3", *flags],
                              cwd=tmp_path, stdout=stdout, stderr=subprocess.PIPE, text=True)

    for out in ("-", "/dev/stdout"):  # a file the shell opened: written through, not refused or replaced
        with open(tmp_path / "so.txt", "w") as redirected:
            assert synth(out, stdout=redirected).returncode == 0
        assert len((tmp_path / "so.txt").read_text().splitlines()) == 3
    (tmp_path / "precious.txt").write_text("keep me")
    (tmp_path / "o.json.tmp").symlink_to(tmp_path / "precious.txt")  # a link where synth writes first
    assert synth(tmp_path / "o.json").returncode == 0
    assert (tmp_path / "precious.txt").read_text() == "keep me" and not (tmp_path / "o.json").is_symlink()
    (tmp_path / "real.json").write_text("old")
    (tmp_path / "link.json").symlink_to("real.json")
    assert synth(tmp_path / "link.json", "--force").returncode == 0
    assert (tmp_path / "link.json").is_symlink() and len((tmp_path / "real.json").read_text().splitlines()) == 3
    assert synth(tmp_path / "upper.JSON.GZ").returncode == 0
    assert (tmp_path / "upper.JSON.GZ").read_bytes()[:2] == b"\x1f\x8b"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_an_output_that_is_a_pipe_is_streamed_into_not_replaced(tmp_path):
    """`--output /dev/stdout` or a named pipe: there is nothing to rename onto, so it is written in place."""
    import stat
    import threading

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    received = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_bytes()), daemon=True)
    reader.start()
    assert main(["synth", str(pipe), "--lines", "5"]) == 0
    reader.join(timeout=10)
    assert stat.S_ISFIFO(os.stat(pipe).st_mode) and not (tmp_path / "pipe.tmp").exists()
    assert received[0].splitlines() == list(synth_lines(5, seed=0))
