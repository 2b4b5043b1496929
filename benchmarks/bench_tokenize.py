"""`shardtune bench tokenize`: pre-tokenized shards vs the seed's padded datasets.map, same data, one run."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from shardtune.options import Config, add_command, option


@dataclass
class BenchTokenizeConfig(Config):
    SECTION = "bench.tokenize"

    lines: int = option(200_000, "lines to generate", min=1)
    workdir: str = option("runs/bench-tokenize", "scratch folder", metavar="DIR")


def add_parser(sub) -> None:
    add_command(sub, "tokenize", BenchTokenizeConfig, run, help="token shards vs the seed's padded datasets.map",
                description="Generate N lines, clean them, then tokenize the same Parquet with "
                "`shardtune tokenize` and with the seed's datasets.map (padding to 256, labels copied, "
                "num_proc=1); print examples/s, tokens/s, bytes on disk and peak RSS, and check the ids agree.")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def same_ids(etl_dir: Path, tokens_dir: Path, seed_dir: Path, limit: int = 5000) -> tuple[int, int]:
    """Compare, example by example, our ids (EOS aside) with the seed's unpadded ids."""
    import datasets
    import polars as pl

    from shardtune.manifest import TokensManifest
    from shardtune.tokens.encode import is_validation
    from shardtune.tokens.shards import TokenShards

    manifest = TokensManifest.read(tokens_dir)
    ours = {s: TokenShards(manifest.shard_paths(tokens_dir, s)) for s in ("train", "val")}
    seed = datasets.load_from_disk(str(seed_dir))
    titles = pl.read_parquet(sorted(etl_dir.glob("part-*.parquet")), columns=["title"])["title"].head(limit).to_list()
    cursor = {"train": 0, "val": 0}
    same = 0
    for i, title in enumerate(titles):
        split = "val" if is_validation(title, manifest.val_fraction) else "train"
        ids, _ = ours[split][cursor[split]]
        cursor[split] += 1
        ids = ids.tolist()
        if ids and ids[-1] == manifest.eos_id:
            ids = ids[:-1]
        row = seed[i]
        mask = row["attention_mask"]
        same += ids == [t for t, m in zip(row["input_ids"], mask) if m]
    return same, len(titles)


def run(args, config) -> int:
    return bench_tokenize(config)


def bench_tokenize(config: BenchTokenizeConfig) -> int:
    from shardtune.console import log
    from shardtune.manifest import TokensManifest

    from .common import machine, print_table, run_measured, scratch_dir, synth_input

    workdir = scratch_dir(config.workdir)
    src = synth_input(workdir, config.lines, 0.0)
    etl_dir = workdir / "etl"
    if not (etl_dir / "manifest.json").exists():
        run_measured(["-m", "shardtune.cli", "etl", str(src), "--out", str(etl_dir)])
    log("bench tokenize: shardtune tokenize ...")
    ours = run_measured(["-m", "shardtune.cli", "tokenize", str(etl_dir), "--out", str(workdir / "tokens"), "--force"])
    log("bench tokenize: the seed's datasets.map with padding ...")
    seed_out = workdir / "seed-tokens"
    shutil.rmtree(seed_out, ignore_errors=True)
    seed = run_measured(["-m", "shardtune.benchmarks.seed_tokenize", str(etl_dir), str(seed_out)])

    m = TokensManifest.read(workdir / "tokens")
    n = m.splits["train"].examples + m.splits["val"].examples
    tokens = m.splits["train"].tokens + m.splits["val"].tokens
    ours_bytes = sum(s.bytes for sp in m.splits.values() for s in sp.shards)
    seed_bytes = folder_bytes(seed_out)
    same, checked = same_ids(etl_dir, workdir / "tokens", seed_out)
    rows = [[f"shardtune ({m.tokenizer_backend})", f"{ours.seconds:.1f}", f"{n / ours.seconds:,.0f}",
             f"{tokens / ours.seconds:,.0f}", f"{ours_bytes / 1e6:,.1f} MB", f"{ours.peak_rss_mb:,.0f}"],
            ["seed datasets.map", f"{seed.seconds:.1f}", f"{n / seed.seconds:,.0f}",
             f"{tokens / seed.seconds:,.0f}", f"{seed_bytes / 1e6:,.1f} MB", f"{seed.peak_rss_mb:,.0f}"],
            ["ratio", "", f"{seed.seconds / ours.seconds:.1f}x", f"{seed.seconds / ours.seconds:.1f}x",
             f"1/{seed_bytes / ours_bytes:.1f}", f"{ours.peak_rss_mb / seed.peak_rss_mb:.1f}x"]]
    print_table(f"Tokenization of {n:,} examples (distilgpt2 BPE, max 256), {machine()}",
                ["approach", "seconds", "examples/s", "tokens/s", "bytes on disk", "peak RSS MB"], rows,
                f"same ids as the seed (EOS and padding aside) on {same:,} of the first {checked:,} examples; "
                f"tokens/s counts real tokens, not padding")
    return 0
