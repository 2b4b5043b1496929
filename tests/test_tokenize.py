"""`shardtune tokenize`: the template round trip, truncation, the split, the shard format, the tokenizers."""


import datasets
import numpy as np
import pyarrow as pa
import pytest

from conftest import etl_folder, rec, synth_tokens
from shardtune.cli import main
from shardtune.errors import UserError
from shardtune.manifest import TokenShard, TokensManifest
from shardtune.template import DEFAULT_TEMPLATE, PromptTemplate
from shardtune.tokens.config import TokenizeConfig
from shardtune.tokens.encode import assemble, is_validation
from shardtune.tokens.shards import TokenShards, TokenShardWriter, token_dtype
from shardtune.tokens.tokenize import run_tokenize
from shardtune.tokens.tokenizer import Encoder, load_tokenizer

PRODUCTS = [
    rec(uid="1", title="Girls Ballet Tutu Neon Pink", content="High quality 3 layer ballet tutu. 12 inches in length."),
    rec(uid="2", title="Kestrel 10 Inch Cast Iron Skillet", content="The Kestrel skillet is built from cast iron. Café-grade sear — naïve crème."),
    rec(uid="3", title="The Silent Harbor: A Mystery", content="A mystery about a small-town bakery, told through the story of the harbor."),
]


def all_examples(tokens_dir):
    m = TokensManifest.read(tokens_dir)
    return [ex for split in ("train", "val") for ex in TokenShards(m.shard_paths(tokens_dir, split))]


def test_offline_gpt2_tokenizer_is_gpt2s(gpt2_tokenizer):
    assert gpt2_tokenizer("Hello world", add_special_tokens=False)["input_ids"] == [15496, 995]
    assert len(gpt2_tokenizer) == 50257 and gpt2_tokenizer.eos_token_id == 50256


def test_an_unknown_tokenizer_offline_gets_a_clear_error():
    with pytest.raises(UserError, match="hub is unreachable.*download it"):
        load_tokenizer("some-org/some-llama")


def test_a_folder_with_only_a_wordpiece_vocabulary_is_a_tokenizer(tmp_path):
    # older checkpoints ship config.json and vocab.txt, no tokenizer.json
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]))
    assert load_tokenizer(str(tmp_path))("hello world", add_special_tokens=False)["input_ids"] == [5, 6]


def test_examples_decode_back_to_exactly_the_template_text(tmp_path, gpt2_tokenizer):
    m = run_tokenize(etl_folder(tmp_path, PRODUCTS), tmp_path / "tok", TokenizeConfig(val_fraction=0.0))
    assert m.splits["train"].examples == 3 and m.dtype == "uint16" and m.eos_id == 50256
    decoded = sorted(gpt2_tokenizer.decode(ids.tolist()) for ids, _ in all_examples(tmp_path / "tok"))
    expected = sorted(DEFAULT_TEMPLATE.format(title=r["title"]) + r["content"] + "<|endoftext|>" for r in PRODUCTS)
    assert decoded == expected


def test_prompt_length_marks_where_the_answer_starts(tmp_path, gpt2_tokenizer):
    run_tokenize(etl_folder(tmp_path, PRODUCTS[:1]), tmp_path / "tok", TokenizeConfig(val_fraction=0.0))
    (ids, prompt_len), = all_examples(tmp_path / "tok")
    title, content = PRODUCTS[0]["title"], PRODUCTS[0]["content"]
    assert gpt2_tokenizer.decode(ids[:prompt_len].tolist()) + " " == DEFAULT_TEMPLATE.format(title=title)
    assert gpt2_tokenizer.decode(ids[prompt_len:].tolist()) == " " + content + "<|endoftext|>"


def test_ids_equal_tokenizing_the_whole_text_with_hugging_face(tmp_path, gpt2_tokenizer):
    run_tokenize(etl_folder(tmp_path, PRODUCTS), tmp_path / "tok", TokenizeConfig(val_fraction=0.0))
    ours = sorted(ids[:-1].tolist() for ids, _ in all_examples(tmp_path / "tok"))
    whole = sorted(gpt2_tokenizer(DEFAULT_TEMPLATE.format(title=r["title"]) + r["content"])["input_ids"] for r in PRODUCTS)
    assert ours == whole


def test_truncation_keeps_the_question_and_cuts_the_answer_without_eos():
    assert assemble([1, 2, 3], [4, 5], eos=9, max_length=6) == ([1, 2, 3, 4, 5, 9], False)
    assert assemble([1, 2, 3], [4, 5, 6], eos=9, max_length=6) == ([1, 2, 3, 4, 5, 6], True)
    assert assemble([1, 2, 3], [4, 5, 6, 7], eos=9, max_length=5) == ([1, 2, 3, 4, 5], True)
    assert assemble([1, 2, 3], [4], eos=9, max_length=3) == (None, False)


def test_max_length_counts_truncated_and_dropped_examples(tmp_path):
    long_title = rec(uid="4", title="Tutu " * 40, content="A tutu with a very long name indeed.")
    m = run_tokenize(etl_folder(tmp_path, PRODUCTS + [long_title]), tmp_path / "tok",
                     TokenizeConfig(max_length=40, val_fraction=0.0))
    assert m.dropped_prompt_too_long == 1 and m.splits["train"].examples == 3
    examples = all_examples(tmp_path / "tok")
    cut = [ids for ids, _ in examples if ids[-1] != 50256]
    assert m.splits["train"].truncated == len(cut) >= 2
    assert all(len(ids) == 40 for ids in cut) and all(len(ids) <= 40 for ids, _ in examples)


def test_the_split_is_stable_and_by_product():
    titles = [f"Product number {i}" for i in range(20_000)]
    val = [t for t in titles if is_validation(t, 0.1)]
    assert 1700 < len(val) < 2300
    assert val == [t for t in titles if is_validation(t, 0.1)]  # same answer every time
    assert all(is_validation(t.upper(), 0.1) for t in val[:50])  # a product is its title, whatever the case
    assert not any(is_validation(t, 0.0) for t in titles[:100])


def test_token_dtype_follows_the_vocabulary_size(tmp_path):
    assert token_dtype(50257) == np.uint16 and token_dtype(65535) == np.uint16 and token_dtype(65536) == np.uint32
    writer = TokenShardWriter(tmp_path / "train", token_dtype(100_000), shard_tokens=4)
    writer.write(np.array([1, 99_999, 70_000, 2, 3]), np.array([2, 3]), np.array([1, 2]))
    writer.write(np.array([5]), np.array([1]), np.array([1]))
    shards = writer.close()
    assert [s.examples for s in shards] == [2, 1]  # a new file once a shard holds shard_tokens
    view = TokenShards([tmp_path / s.file for s in shards])
    assert len(view) == 3 and view[1][0].dtype == np.uint32 and view[1][0].tolist() == [70_000, 2, 3]
    assert view[2][0].tolist() == [5] and view[2][1] == 1


def test_shards_open_memory_mapped_and_in_hugging_face_datasets(tmp_path):
    m = run_tokenize(etl_folder(tmp_path, PRODUCTS), tmp_path / "tok", TokenizeConfig(val_fraction=0.0))
    (path,) = m.shard_paths(tmp_path / "tok", "train")
    with pa.ipc.open_stream(pa.memory_map(str(path))) as reader:
        table = reader.read_all()
    assert table.schema.field("input_ids").type == pa.list_(pa.uint16()) and table.num_rows == 3
    ds = datasets.Dataset.from_file(str(path))
    assert ds.num_rows == 3 and ds.features["input_ids"].feature.dtype == "uint16"
    assert ds[0]["input_ids"] == table.column("input_ids")[0].as_py()


def test_the_fast_path_is_used_only_when_identical(gpt2_tokenizer, monkeypatch):
    encoder = Encoder(gpt2_tokenizer)
    texts = ["Hello world", "Café-grade sear™ — 12 inches", " leading space", "ﬁ ligature &amp; entity"]
    assert encoder.backend == "tiktoken" and encoder.check_identity(texts)
    assert encoder.encode_batch(texts) == gpt2_tokenizer(texts, add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(encoder, "_tiktoken", type("Broken", (), {"encode_ordinary": lambda self, t: [0]})())
    assert not encoder.check_identity(texts) and encoder.backend == "huggingface"
    assert Encoder(gpt2_tokenizer, fast=False).backend == "huggingface"


def test_a_second_run_on_unchanged_input_skips_the_work(tmp_path, capsys):
    clean = etl_folder(tmp_path, PRODUCTS)
    run_tokenize(clean, tmp_path / "tok", TokenizeConfig())
    shard = tmp_path / "tok" / "train" / "tokens-00000.arrow"
    before = shard.stat().st_mtime_ns
    run_tokenize(clean, tmp_path / "tok", TokenizeConfig())
    assert shard.stat().st_mtime_ns == before and "up to date" in capsys.readouterr().err
    run_tokenize(clean, tmp_path / "tok", TokenizeConfig(max_length=64))  # a changed option redoes it
    assert TokensManifest.read(tmp_path / "tok").max_length == 64
    # a manifest written before the tokenizer's digest (its fingerprint hashed the vocabulary's size) is
    # still up to date: a new version does not redo hours of tokenizing for nothing
    import json

    from shardtune.manifest import EtlManifest
    from shardtune.tokens.tokenize import fingerprint

    manifest = json.loads((tmp_path / "tok" / "manifest.json").read_text())
    older = fingerprint(EtlManifest.read(clean), "distilgpt2", {"vocab": 50257}, 50256, TokenizeConfig(max_length=64))
    del manifest["tokenizer_digest"]
    (tmp_path / "tok" / "manifest.json").write_text(json.dumps({**manifest, "fingerprint": older}))
    capsys.readouterr()
    run_tokenize(clean, tmp_path / "tok", TokenizeConfig(max_length=64))
    assert "up to date" in capsys.readouterr().err


def test_a_tokenizer_folder_given_relative_is_recorded_so_it_is_found_from_anywhere(tmp_path, gpt2_tokenizer,
                                                                                     monkeypatch):
    gpt2_tokenizer.save_pretrained(tmp_path / "mytok")
    clean = etl_folder(tmp_path, PRODUCTS)
    monkeypatch.chdir(tmp_path)
    m = run_tokenize(clean, tmp_path / "tok", TokenizeConfig(tokenizer="mytok", max_length=64, val_fraction=0.3))
    assert m.tokenizer == str((tmp_path / "mytok").resolve())


def test_a_tokenizer_folder_edited_since_is_not_up_to_date_and_training_refuses_it(tmp_path, gpt2_tokenizer, capsys):
    """The same tokenizer name can make other ids: a local folder edited (two ids swapped) redoes the
    shards, and a run refuses shards whose tokenizer has changed since, before its first step."""
    import json

    from shardtune.train.config import TrainConfig
    from shardtune.train.loop import run_train

    folder = tmp_path / "mytok"
    gpt2_tokenizer.save_pretrained(folder)
    clean = etl_folder(tmp_path, PRODUCTS)
    config = TokenizeConfig(tokenizer=str(folder), max_length=64, val_fraction=0.3)

    def swap_the_and_and():
        data = json.loads((folder / "tokenizer.json").read_text())
        vocab = data["model"]["vocab"]
        vocab["\u0120the"], vocab["\u0120and"] = vocab["\u0120and"], vocab["\u0120the"]
        (folder / "tokenizer.json").write_text(json.dumps(data))

    before = run_tokenize(clean, tmp_path / "tok", config)
    swap_the_and_and()
    capsys.readouterr()
    after = run_tokenize(clean, tmp_path / "tok", config)
    assert "up to date" not in capsys.readouterr().err and after.tokenizer_digest != before.tokenizer_digest
    swap_the_and_and()  # back as it was: the shards are stale now
    with pytest.raises(UserError, match="has changed since `shardtune tokenize`"):
        run_train(tmp_path / "tok", tmp_path / "run", TrainConfig(model="tiny", max_steps=1, max_length=64))
    assert not (tmp_path / "run").exists()


def test_a_special_tokens_name_in_the_text_is_text_not_the_token(tmp_path, gpt2_tokenizer):
    """"<|endoftext|>" in a description once became an EOS inside the question and the answer:
    the model would learn to stop mid-answer. Only the one EOS that ends the example is left."""
    from shardtune.tokens.tokenizer import encode_text

    assert 50256 not in encode_text(gpt2_tokenizer, "Widget <|endoftext|> Pro")
    clean = etl_folder(tmp_path, [rec(uid=f"u{i}", title=f"Widget <|endoftext|> Pro {i}",
                                      content="Great widget. <|endoftext|> More content here, long enough.")
                                  for i in range(20)])
    run_tokenize(clean, tmp_path / "tok", TokenizeConfig(val_fraction=0.0))
    for ids, _ in all_examples(tmp_path / "tok"):
        assert [i for i, t in enumerate(ids) if t == 50256] == [len(ids) - 1]


def test_a_template_files_byte_order_mark_is_not_the_templates(tmp_path):
    clean = etl_folder(tmp_path, PRODUCTS)
    (tmp_path / "t.txt").write_bytes(b"\xef\xbb\xbfQ: {title}\nA: ")
    assert main(["tokenize", str(clean), "--out", str(tmp_path / "tok"), "--template-file", str(tmp_path / "t.txt")]) == 0
    assert TokensManifest.read(tmp_path / "tok").template == "Q: {title}\nA: "


def test_token_shards_are_checked_against_the_counts_of_their_manifest(tmp_path):
    tokens = synth_tokens(tmp_path, 300, seed=5)
    m = TokensManifest.read(tokens)
    paths, counts = m.shard_paths(tokens, "train"), m.shard_counts("train")
    assert len(TokenShards(paths, counts)) == m.splits["train"].examples
    (examples, n), *rest = counts
    for wrong in ((examples + 1, n), (examples, n - 1)):  # a shard swapped for another of as many examples
        with pytest.raises(UserError, match="where its manifest says"):
            TokenShards(paths, [wrong, *rest])


def test_a_template_with_literal_braces_means_what_format_means():
    t = PromptTemplate("Q {{json}}: {title} }} A: ")
    assert t.prompt("Tutu") == "Q {json}: Tutu } A: "
    assert t.around() == ("Q {json}: ", " } A:")
    assert t.title_of(t.split("Tutu")[0]) == "Tutu"
    for bad in ("Q: {{title}} A: ", "{title} and {title}", "{title!r}", "{title:>9}", "Q: {title A: "):
        with pytest.raises(UserError):
            PromptTemplate(bad)


def test_custom_template_from_the_command_line(tmp_path, gpt2_tokenizer):
    clean = etl_folder(tmp_path, PRODUCTS[:1])
    assert main(["tokenize", str(clean), "--out", str(tmp_path / "tok"), "--template", "Q: {title}\nA: ",
                 "--val-fraction", "0"]) == 0
    m = TokensManifest.read(tmp_path / "tok")
    assert m.template == "Q: {title}\nA: " and m.template_hash == PromptTemplate("Q: {title}\nA: ").hash
    (ids, _), = all_examples(tmp_path / "tok")
    assert gpt2_tokenizer.decode(ids.tolist()).startswith("Q: Girls Ballet Tutu Neon Pink\nA: High quality")


@pytest.mark.parametrize("args, message", [
    (["tokenize", "{tmp}/nowhere", "--out", "{tmp}/tok"], "ETL manifest not found"),
    (["tokenize", "{clean}", "--out", "{tmp}/tok", "--template", "no title here"], "must contain {title}"),
    (["tokenize", "{clean}", "--out", "{tmp}/tok", "--tokenizer", "no-such/tokenizer"], "hub is unreachable"),
])
def test_user_mistakes_exit_2_with_one_line(tmp_path, capsys, args, message):
    clean = etl_folder(tmp_path, PRODUCTS[:1])
    argv = [a.format(tmp=tmp_path, clean=clean) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("shardtune tokenize: error:")


@pytest.mark.slow
def test_worker_processes_write_the_same_shards_as_one_process(tmp_path):
    from shardtune.data.synth import write_synth
    from shardtune.etl.config import EtlConfig
    from shardtune.etl.pipeline import run_etl

    write_synth(tmp_path / "trn.json", 600, seed=2)
    run_etl([tmp_path / "trn.json"], tmp_path / "clean", EtlConfig())
    one = run_tokenize(tmp_path / "clean", tmp_path / "one", TokenizeConfig(batch_examples=50, workers=1))
    two = run_tokenize(tmp_path / "clean", tmp_path / "two", TokenizeConfig(batch_examples=50, workers=2))
    assert one.splits == two.splits and one.splits["val"].examples > 0
    for split in ("train", "val"):
        for a, b in zip(one.shard_paths(tmp_path / "one", split), two.shard_paths(tmp_path / "two", split)):
            assert a.read_bytes() == b.read_bytes()


def test_token_shards_roll_over_and_an_aborted_shard_leaves_no_file(tmp_path):
    writer = TokenShardWriter(tmp_path / "train", np.dtype(np.uint16), shard_tokens=5)
    writer.write(np.arange(6), np.array([2, 4]), np.array([1, 1]))  # 6 tokens >= 5: the shard is finished
    writer.write(np.arange(3), np.array([3]), np.array([1]))  # a second shard, still open
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["tokens-00000.arrow", "tokens-00001.arrow.tmp"]
    writer.abort()
    assert [p.name for p in (tmp_path / "train").iterdir()] == ["tokens-00000.arrow"]
    from shardtune.files import file_crc32

    shard = tmp_path / "train" / "tokens-00000.arrow"
    assert writer.shards == [TokenShard(file="train/tokens-00000.arrow", examples=2, tokens=6,
                                        bytes=shard.stat().st_size, crc32=file_crc32(shard))]
    shards = TokenShards([tmp_path / "train" / "tokens-00000.arrow"])
    assert [list(shards[i][0]) for i in range(len(shards))] == [[0, 1], [2, 3, 4, 5]]
