"""`shardtune tokenize`: cleaned Parquet -> memory-mapped token shards, once.

Each example is  prompt(title) + content + EOS  (ids equal to tokenizing that whole
text, see PromptTemplate.split), with the prompt's length stored so
that training can put the loss on the answer only. The question is always kept
whole; a long answer is cut to fit `max_length` and then has no EOS (it did not
end there). Examples whose prompt alone fills `max_length` are dropped and counted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shardtune import __version__
from shardtune.console import log, meter
from shardtune.errors import UserError, first_line
from shardtune.files import check_output_dir, check_outside, inside, prepare_output_dir
from shardtune.lock import locked, reading
from shardtune.manifest import MANIFEST, EtlManifest, SplitStats, TokensManifest
from shardtune.template import PromptTemplate

from .config import TokenizeConfig
from .encode import BatchEncoder, EncodeSpec, split_texts
from .shards import SHARD_GLOB, TokenShardWriter, token_dtype
from .tokenizer import Encoder, checked_digest, eos_id, load_tokenizer, vocab_size

SPLITS = ("train", "val")


def fingerprint(etl: EtlManifest, tokenizer_name: str, tokenizer_key: dict, eos: int, config: TokenizeConfig) -> str:
    """Of everything the shards depend on. `tokenizer_key` is {"tokenizer_digest": ...}; manifests
    written before 2026-12-04 hashed {"vocab": size} there, and are still recognised."""
    key = {"etl": {"shards": [vars(s) for s in etl.shards], "inputs": [vars(i) for i in etl.inputs]},
           "tokenizer": tokenizer_name, **tokenizer_key, "eos": eos, "template": config.template,
           "max_length": config.max_length, "val_fraction": config.val_fraction,
           "shard_tokens": config.shard_tokens, "version": __version__}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _up_to_date(out: Path, print_: str, older: str, records: int) -> TokensManifest | None:
    """The earlier output, if it was made from the same input and options and is still whole
    (`older`: the fingerprint as a manifest without the tokenizer's digest has it), every one of
    the ETL folder's `records` in it or counted as dropped."""
    try:
        old = TokensManifest.read(out)
        if old.fingerprint != print_ and (old.tokenizer_digest or old.fingerprint != older):
            return None
        if sum(s.examples for s in old.splits.values()) + old.dropped_prompt_too_long != records:
            return None
        old.verify(out)  # a truncated or replaced shard is not up to date
    except UserError:
        return None
    return old


def histogram_edges(max_length: int, bins: int = 64) -> list[int]:
    """At most `bins` equal bins up to max_length, each a multiple of 16 tokens wide."""
    width = max(16, -(-max_length // bins // 16) * 16)
    return list(range(0, max_length + width, width))


def _check_room_for_answers(tokenizer, template: PromptTemplate, max_length: int) -> None:
    """Refuse a --max-length that the prompt template alone fills: every example would be dropped."""
    prompt = len(Encoder(tokenizer, fast=False).encode_batch([template.split("")[0]])[0])
    if prompt >= max_length:
        raise UserError(f"--max-length {max_length} leaves no room for an answer: the prompt template alone, "
                        f"without a title, is {prompt} tokens; give --max-length {max(64, 4 * prompt)} or more")


def _row_batches(parquet_dir: Path, etl: EtlManifest, batch_examples: int):
    for shard in etl.shards:
        path = inside(parquet_dir, shard.file, "the ETL manifest")
        try:
            parquet = pq.ParquetFile(path)
            if parquet.metadata.num_rows != shard.rows:  # another etl's shard, its size and checksum edited in
                raise UserError(f"{path} holds {parquet.metadata.num_rows:,} rows where the ETL manifest says "
                                f"{shard.rows:,}; it was replaced: re-run shardtune etl")
            _check_text_columns(path, parquet.schema_arrow)
            batches = parquet.iter_batches(batch_size=batch_examples, columns=["title", "content"])
            for batch in batches:
                if batch.column(0).null_count or batch.column(1).null_count:
                    raise UserError(f"{path} holds rows without a title or content (null), which shardtune etl never "
                                    "writes; re-run shardtune etl")
                yield batch.column(0).to_pylist(), batch.column(1).to_pylist()
        except pa.ArrowException as e:  # its size and checksum matched the manifest: a file written over by hand
            why = first_line(e)[:200]
            raise UserError(f"{path} is not a shardtune ETL shard ({why}); re-run shardtune etl") from None


def _check_text_columns(path: Path, schema) -> None:
    """A Parquet file whose size and checksum match the manifest but not of the ETL's shape (a shard
    rewritten by hand): pyarrow would hand over fewer columns, or none, without a word."""
    is_view = getattr(pa.types, "is_string_view", lambda _: False)
    for name in ("title", "content"):
        index = schema.get_field_index(name)
        kind = schema.field(index).type if index >= 0 else None
        if kind is None or not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or is_view(kind)):
            what = f"its {name} column is {kind}" if kind is not None else f"it has no {name} column"
            raise UserError(f"{path} is not a shardtune ETL shard ({what}); re-run shardtune etl")


def _fast_path_holds(tokenizer, template: PromptTemplate, sample: tuple[list[str], list[str]] | None) -> bool:
    """Prove the tiktoken fast path on this very data before trusting it."""
    encoder = Encoder(tokenizer)
    if encoder.backend != "tiktoken" or sample is None:
        return encoder.backend == "tiktoken"
    prompts, answers = split_texts(template, sample[0][:500], sample[1][:500])
    return encoder.check_identity(prompts + answers)


def run_tokenize(parquet_dir: Path, out: Path, config: TokenizeConfig | None = None) -> TokensManifest:
    config = (config or TokenizeConfig()).check()
    with reading(parquet_dir, "tokenize"):  # an etl re-run meanwhile would swap shards under the reader
        return _run(parquet_dir, out, config)


def _run(parquet_dir: Path, out: Path, config: TokenizeConfig) -> TokensManifest:
    if Path(config.tokenizer).is_dir():  # a tokenizer folder, recorded so train finds it from anywhere
        config = dataclasses.replace(config, tokenizer=str(Path(config.tokenizer).resolve()))
    etl = EtlManifest.read(parquet_dir)
    etl.verify(parquet_dir)
    check_outside(out, parquet_dir, "the ETL folder")
    check_output_dir(out, (MANIFEST,), subfolders={s: SHARD_GLOB for s in SPLITS})  # before any work
    if etl.records_kept == 0:
        raise UserError(f"the ETL folder {parquet_dir} holds no records ({etl.lines_read:,} lines read, none kept); "
                        "nothing to tokenize: check the input given to shardtune etl")
    template = PromptTemplate(config.template)
    tokenizer = load_tokenizer(config.tokenizer, say_fallback=False)
    eos, digest = eos_id(tokenizer), checked_digest(tokenizer, config.tokenizer)
    _check_room_for_answers(tokenizer, template, config.max_length)
    print_ = fingerprint(etl, config.tokenizer, {"tokenizer_digest": digest}, eos, config)
    older = fingerprint(etl, config.tokenizer, {"vocab": len(tokenizer)}, eos, config)
    with locked(out, "tokenize"):
        if not config.force and (old := _up_to_date(out, print_, older, etl.records_kept)) is not None:
            log(f"tokenize: {out} is up to date with {parquet_dir} (same input, tokenizer and options); nothing to do")
            return old
        if note := getattr(tokenizer, "shardtune_note", None):
            log(note)
        return _tokenize(parquet_dir, out, config, etl, template, tokenizer, print_, digest)


def _tokenize(parquet_dir: Path, out: Path, config: TokenizeConfig, etl: EtlManifest, template: PromptTemplate,
              tokenizer, print_: str, digest: str) -> TokensManifest:
    vocab, eos = vocab_size(tokenizer), eos_id(tokenizer)
    prepare_output_dir(out, (MANIFEST,), subfolders={s: SHARD_GLOB for s in SPLITS})
    started = time.perf_counter()
    dtype = token_dtype(vocab)
    first = next(_row_batches(parquet_dir, etl, config.batch_examples), None)
    fast = config.fast and _fast_path_holds(tokenizer, template, first)
    spec = EncodeSpec(tokenizer, fast, template.text, eos, config.max_length, config.val_fraction, dtype.name)
    workers = 1 if etl.records_kept <= config.batch_examples else config.workers  # a pool costs ~1 s to start
    encoder = BatchEncoder(spec, workers)
    writers = {s: TokenShardWriter(out / s, dtype, config.shard_tokens) for s in SPLITS}
    stats = {s: SplitStats() for s in SPLITS}
    edges = histogram_edges(config.max_length)
    histogram = np.zeros(len(edges) - 1, dtype=np.int64)
    dropped = seen = 0
    try:
        with meter("tokenize", etl.records_kept, "examples", ("examples", "tokens")) as progress:
            for batch in encoder.map(_row_batches(parquet_dir, etl, config.batch_examples)):
                for split, packed in batch.splits.items():
                    writers[split].write(packed.values, packed.lengths, packed.prompt_lens)
                    st = stats[split]
                    st.examples += len(packed.lengths)
                    st.tokens += len(packed.values)
                    st.answer_tokens += packed.answer_tokens
                    st.truncated += packed.truncated
                    histogram += np.histogram(packed.lengths, bins=edges)[0]
                dropped += batch.dropped
                seen += batch.rows
                progress.update(seen, examples=seen, tokens=stats["train"].tokens + stats["val"].tokens)
        if not stats["train"].examples + stats["val"].examples:
            raise UserError(f"no example fits --max-length {config.max_length}: every one's question alone is "
                            f"longer ({dropped:,} dropped); give a larger --max-length")
        for split in SPLITS:
            stats[split].shards = writers[split].close()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        encoder.close()
    manifest = TokensManifest(
        source=str(parquet_dir), tokenizer=config.tokenizer, tokenizer_backend="tiktoken" if fast else "huggingface", vocab_size=vocab,
        eos_id=eos, dtype=dtype.name, template=template.text, template_hash=template.hash,
        max_length=config.max_length, val_fraction=config.val_fraction, splits=stats,
        dropped_prompt_too_long=dropped, length_histogram={"edges": edges, "counts": histogram.tolist()},
        fingerprint=print_, options=config.to_dict(), duration_s=round(time.perf_counter() - started, 3),
        tokenizer_digest=digest)
    manifest.write(out)
    log(f"tokenize: {progress.summary()} ({manifest.tokenizer_backend}, {encoder.workers} process(es))")
    return manifest
