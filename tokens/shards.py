"""Token shards: the stage boundary between `shardtune tokenize` and `shardtune train`.

Layout of a tokens folder:

    TOKENS_DIR/manifest.json              written last (shardtune.manifest.TokensManifest)
    TOKENS_DIR/train/tokens-00000.arrow   Arrow IPC *stream* files, uncompressed, so they
    TOKENS_DIR/train/tokens-00001.arrow   can be memory-mapped (pyarrow.memory_map) and open
    TOKENS_DIR/val/tokens-00000.arrow     with datasets.Dataset.from_file

Each file holds record batches of this schema:

    input_ids   list<uint16>   (uint32 when the vocabulary has 65,536 entries or more)
    prompt_len  int32          tokens of input_ids that are the prompt; the rest is the answer

and, in bytes, one record batch is Arrow's columnar layout:

    input_ids.offsets  int32[n+1]    example i is values[offsets[i]:offsets[i+1]]
    input_ids.values   uint16[sum]   all token ids of the batch, back to back
    prompt_len.values  int32[n]

so a reader maps the file once and slices token ids out of it without copying.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from shardtune.errors import UserError, first_line
from shardtune.files import file_crc32
from shardtune.shard_writer import RollingShardWriter
from shardtune.manifest import TokenShard

SHARD_GLOB = "tokens-*.arrow"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 2**16 else np.dtype(np.uint32)


def schema(dtype: np.dtype) -> pa.Schema:
    return pa.schema([("input_ids", pa.list_(pa.from_numpy_dtype(dtype))), ("prompt_len", pa.int32())])


class TokenShardWriter(RollingShardWriter):
    """Appends examples to `tokens-NNNNN.arrow` files of at most `shard_tokens` tokens each."""

    def __init__(self, folder: Path, dtype: np.dtype, shard_tokens: int) -> None:
        super().__init__(folder)
        self.dtype, self.shard_tokens = dtype, shard_tokens
        self.schema = schema(dtype)
        self._sink = None
        self._rows = self._tokens = 0
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self) -> Path:
        return self.folder / f"tokens-{len(self.shards):05d}.arrow"

    def _open_writer(self, tmp: Path) -> pa.ipc.RecordBatchStreamWriter:
        self._rows = self._tokens = 0
        self._sink = pa.OSFile(str(tmp), "wb")
        return pa.ipc.new_stream(self._sink, self.schema)

    def _close_writer(self) -> None:
        self._writer.close()
        self._sink.close()

    def _describe(self, path: Path) -> TokenShard:
        return TokenShard(file=f"{self.folder.name}/{path.name}", examples=self._rows, tokens=self._tokens,
                          bytes=path.stat().st_size, crc32=file_crc32(path))

    def write(self, values: np.ndarray, lengths: np.ndarray, prompt_lens: np.ndarray) -> None:
        """Append examples given as all their ids back to back plus each one's length."""
        if len(lengths) == 0:
            return
        self._ensure_open()
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(self.dtype, copy=False)))
        batch = pa.record_batch([column, pa.array(np.asarray(prompt_lens, dtype=np.int32))], schema=self.schema)
        self._writer.write_batch(batch)
        self._rows += len(lengths)
        self._tokens += int(offsets[-1])
        if self._tokens >= self.shard_tokens:
            self._finish_shard()


class TokenShards:
    """Memory-mapped, zero-copy view of one split's shards, indexed by example.

    Only offsets (4 bytes an example) are read into RAM; token ids stay in the
    page cache, so memory does not grow with the dataset.
    """

    def __init__(self, files: list[Path], expected: list[tuple[int, int]] | None = None) -> None:
        """`expected`: each file's (examples, tokens) as its manifest records them, checked."""
        self._values: list[np.ndarray] = []
        self._offsets: list[np.ndarray] = []
        self._prompt: list[np.ndarray] = []
        for k, path in enumerate(files):
            rows = tokens = 0
            try:
                with pa.ipc.open_stream(pa.memory_map(str(path), "r")) as reader:
                    if reader.schema.names != ["input_ids", "prompt_len"]:
                        raise pa.ArrowInvalid(f"columns {reader.schema.names}")
                    for batch in reader:
                        ids = batch.column(0)
                        self._values.append(ids.values.to_numpy(zero_copy_only=True))
                        self._offsets.append(ids.offsets.to_numpy(zero_copy_only=True))
                        self._prompt.append(batch.column(1).to_numpy(zero_copy_only=True))
                        rows, tokens = rows + len(batch), tokens + len(self._values[-1])
            except (pa.ArrowException, OSError, AttributeError) as e:  # AttributeError: columns of another type
                why = first_line(e)[:200]
                raise UserError(f"{path} is not a shardtune token shard ({why}); re-run shardtune tokenize") from None
            if expected is not None and (rows, tokens) != tuple(expected[k]):
                raise UserError(f"token shard {path} holds {rows:,} examples and {tokens:,} tokens where its manifest "
                                f"says {expected[k][0]:,} and {expected[k][1]:,}; re-run shardtune tokenize")
        counts = np.array([len(p) for p in self._prompt], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self.lengths = np.concatenate([np.diff(o) for o in self._offsets]) if self._offsets else np.zeros(0, np.int32)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        """(token ids, prompt length) of example i; the ids are a view into the mapped file."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        b = int(np.searchsorted(self._starts, i, side="right")) - 1
        j = i - int(self._starts[b])
        off = self._offsets[b]
        return self._values[b][off[j]:off[j + 1]], int(self._prompt[b][j])

    def prompt_lengths(self) -> np.ndarray:
        return np.concatenate(self._prompt) if self._prompt else np.zeros(0, np.int32)

    def max_id(self) -> int:
        """The largest token id in the shards (-1 when empty): a scan of the mapped ids, no copy."""
        return max((int(v.max()) for v in self._values if len(v)), default=-1)
