"""RUN_DIR/metrics.jsonl: the one owner of its format. One JSON object per line:

    {"type": "train", "step": 100, "epoch": 0, "loss": 2.31, "lr": 5e-05, "grad_norm": 0.91,
     "tokens_per_s": 21034.5, "padding": 0.011, "peak_memory_mb": 2610.0}
    {"type": "eval", "step": 500, "val_loss": 2.05, "val_perplexity": 7.77, "val_tokens": 81234}

`peak_memory_mb` is the peak GPU memory allocated (torch.cuda.max_memory_allocated) on a
GPU, and the process's peak resident memory (ru_maxrss) on the CPU.
Training appends; eval, the benchmarks and the tests read through `MetricsLog`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from shardtune.errors import UserError
from shardtune.files import atomic_open

FILE = "metrics.jsonl"
LINE_LIMIT = 1 << 20  # an entry is a few hundred bytes


TENSORBOARD = "tensorboard"  # RUN_DIR/tensorboard/: event files, with --report-to tensorboard
SCALARS = {"train": ("loss", "lr", "tokens_per_s", "grad_norm", "padding", "peak_memory_mb"),
           "eval": ("val_loss", "val_perplexity")}


class MetricsLog:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / FILE
        self._board = None

    def report_to_tensorboard(self, first_step: int) -> None:
        """Also write every entry as TensorBoard scalars under RUN_DIR/tensorboard. After a resume,
        `first_step` is the first step to come: TensorBoard drops what an interrupted run logged
        from there on (its purge_step), so no step shows twice."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--report-to tensorboard needs the tensorboard package, which is not installed "
                            "(pip install 'shardtune[tensorboard]'); or leave --report-to none") from None
        self._board = SummaryWriter(str(self.path.parent / TENSORBOARD), purge_step=first_step or None)

    def append(self, entry: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(_json_line(entry))
        if self._board is not None:
            for name in SCALARS.get(entry["type"], ()):
                if name in entry:
                    self._board.add_scalar(f"{entry['type']}/{name}", entry[name], entry["step"])
            self._board.flush()

    def close(self) -> None:
        if self._board is not None:
            self._board.close()
            self._board = None

    def read(self, kind: str | None = None) -> list[dict]:
        """Every entry (of one `kind`, "train" or "eval"); a line torn by a kill is skipped."""
        if not self.path.exists():
            return []
        if not self.path.is_file():  # a device or a pipe in its place would never end
            raise UserError(f"{self.path} is not a plain file; move it away to start the run's log afresh")
        entries = []
        with open(self.path, "rb") as f:
            # bounded lines: one far longer than any entry (a replaced file) is skipped, never held whole
            while line := f.readline(LINE_LIMIT):
                if len(line) == LINE_LIMIT and not line.endswith(b"\n"):
                    while (rest := f.readline(LINE_LIMIT)) and not rest.endswith(b"\n"):
                        pass
                    continue
                try:
                    entry = json.loads(line)
                except (ValueError, RecursionError):  # a torn line, or not UTF-8
                    continue
                if _well_formed(entry) and (kind is None or entry["type"] == kind):
                    entries.append(entry)
        return entries

    def truncate_after(self, step: int) -> None:
        """Forget what an interrupted run logged after its last checkpoint (atomically)."""
        kept = [e for e in self.read() if e["step"] <= step]
        with atomic_open(self.path, "w", encoding="utf-8") as f:
            f.writelines(_json_line(e) for e in kept)


def _well_formed(entry) -> bool:
    """An entry as training writes it: its type, an integer step, and its figures numbers (or null,
    a non-finite one). Anything else (an edited line) is skipped like a torn one, not trusted
    (a step of null once stopped --resume with a TypeError)."""
    def number(v) -> bool:
        return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))

    if not isinstance(entry, dict) or entry.get("type") not in SCALARS:
        return False
    step = entry.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return False
    fields = SCALARS[entry["type"]] + (("val_tokens",) if entry["type"] == "eval" else ())
    return all(number(entry[name]) for name in fields if name in entry)


def _json_line(entry: dict) -> str:
    """One JSON line; a non-finite figure (a diverged loss) as null, since NaN is not JSON."""
    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in entry.items()}
    return json.dumps(clean) + "\n"


def describe_eval(entry: dict) -> str:
    """"val loss 2.0500, perplexity 7.77", or why there is none (a split of no examples)."""
    if not entry.get("val_tokens"):
        return "no validation loss (the token folder has no validation examples)"
    return f"val loss {entry['val_loss']:.4f}, perplexity {entry['val_perplexity']:.2f}"


def describe(entry: dict) -> str:
    """The log line of one entry."""
    if entry["type"] == "eval":
        return f"step {entry['step']:>6}: {describe_eval(entry)}"
    return (f"step {entry['step']:>6}: loss {entry['loss']:.4f}, lr {entry['lr']:.2e}, "
            f"{entry['tokens_per_s']:,.0f} tokens/s, padding {entry['padding']:.1%}, "
            f"grad norm {entry['grad_norm']:.2f}, peak memory {entry['peak_memory_mb']:,.0f} MB")
