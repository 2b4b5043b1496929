"""The one way every command gets a model: training, generation, eval, the planner and
the benchmarks all call `load_model` or `load_for_inference`.

A model name is one of:
- a preset: a published shape built with fresh weights (`tiny`, or `distilgpt2` with
  --from-scratch), for offline runs and for speed and memory figures;
- a local folder: a run's final/ or any Hugging Face model folder;
- a Hugging Face hub name, loaded from the hub or, offline, from the local cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardtune.errors import UserError, first_line
from shardtune.hub import hub_reachable, is_local, looks_like_path, model_key, quiet_transformers

from .adapters import ADAPTER_CONFIG, merge_adapter
from .family import Family
from .gpt2 import GPT2
from .llama import Llama

FAMILIES: tuple[Family, ...] = (GPT2(), Llama())


def preset_family(name: str) -> Family | None:
    """The family that has `name` as a preset, if any (its shape: "org/name" has the same)."""
    key = model_key(name)
    return next((f for f in FAMILIES if key in f.presets), None)


def family_of(model: Any) -> Family | None:
    model_type = getattr(model.config, "model_type", None)
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def is_fresh_only(name: str) -> bool:
    """A preset with no pretrained weights here (`tiny`, `smollm2-135m`): always built fresh. Only a
    bare name is one: "HuggingFaceTB/SmolLM2-135M" names the hub's pretrained model, which is
    loaded or refused, never silently replaced by fresh weights of its shape."""
    family = preset_family(name)
    return family is not None and model_key(name) not in family.hub_presets and not is_local(name) and \
        "/" not in name.strip("/")


def tokenizer_name(model: str) -> str:
    """The tokenizer to tokenize for `model`: a preset's family tokenizer, else the model's own."""
    return preset_family(model).tokenizer if is_fresh_only(model) else model


def require_name(name: str) -> None:
    """An empty name would mean the current folder (Path("") is "."): refuse it by name."""
    if not name.strip():
        raise UserError(f"the model name {name!r} is empty; give a preset (tiny, tiny-llama, distilgpt2, ...), "
                        "a model folder or a Hugging Face hub name")


def load_model(name: str, *, from_scratch: bool | None = False, vocab_size: int | None = None,
               eos_id: int | None = None, prepare: bool = True) -> Any:
    """A causal LM from a preset, a folder or the hub; user mistakes become one-line UserErrors.
    `prepare=False` keeps stock modules (the seed's baseline)."""
    model = _load(name, from_scratch, vocab_size, eos_id)  # from_scratch None: a command without the flag
    family = family_of(model)  # prepared here, once, however the model was loaded
    return family.prepare(model) if prepare and family is not None else model


def _load(name: str, from_scratch: bool, vocab_size: int | None, eos_id: int | None) -> Any:
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    require_name(name)
    family = preset_family(name)
    if is_fresh_only(name) or (from_scratch and family is not None and not is_local(name)):
        return family.build(model_key(name), vocab_size, eos_id, prepare=False)
    if is_local(name):
        check_model(name)
        try:
            model, info = AutoModelForCausalLM.from_pretrained(Path(name).expanduser(), output_loading_info=True)
        except Exception as e:  # a damaged or foreign folder can make the loader raise almost anything
            _refuse_mismatched(e, name)
            first = first_line(e)
            raise UserError(f"{name} is not a causal language model folder transformers can load: {first}") from None
        return _all_weights_loaded(model, info, name)
    if from_scratch:
        known = ", ".join(p for f in FAMILIES for p in f.presets)
        raise UserError(f"--from-scratch knows these shapes: {known}; not {name!r}")
    if looks_like_path(name):
        raise UserError(f"model folder not found: {name}")
    if not hub_reachable():
        try:
            model, info = AutoModelForCausalLM.from_pretrained(name, local_files_only=True, output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as e:
            _refuse_mismatched(e, name)
            offer = family is not None and from_scratch is not None  # None: the command has no --from-scratch
            hint = " or --from-scratch for fresh weights in its architecture" if offer else ""
            raise _not_cached(name, hint) from None
        return _all_weights_loaded(model, info, name)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(name, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:
        _refuse_mismatched(e, name)
        raise UserError(f"cannot load model {name!r}: {first_line(e)}") from None
    return _all_weights_loaded(model, info, name)


ANOTHER_MODEL = ("its weight files belong to another model than its config.json describes; give a folder whose "
                 "config.json and weights were saved together")


def _all_weights_loaded(model: Any, info: dict, name: str) -> Any:
    """transformers fills a weight the files lack with fresh random numbers and only logs it (which
    shardtune quiets): weights of another architecture, or a config.json edited to another model
    type, would load as a random model and train or answer as if nothing were wrong. (Tied weights
    and the buffers a model may lack are not listed as missing.)"""
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise UserError(f"model {name!r} lacks {len(missing)} of its weights (such as {missing[0]}): {ANOTHER_MODEL}")
    # and the other way: a config.json edited to fewer layers would load some weights and drop the rest
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        raise UserError(f"model {name!r} holds {len(unexpected)} weights its config.json has no place for (such as "
                        f"{unexpected[0]}): {ANOTHER_MODEL}")
    return model


def _refuse_mismatched(error: Exception, name: str) -> None:
    """Weights of another shape than the config's make transformers raise, pointing at a report it
    logged (and shardtune quieted): say what it means instead."""
    if "ignore_mismatched_sizes" in str(error):
        raise UserError(f"model {name!r} holds weights of another shape than its config.json says: "
                        f"{ANOTHER_MODEL}") from None


def positions_of(config: Any) -> int | None:
    """How many positions a model reads: GPT-2's n_positions, Llama's max_position_embeddings."""
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def check_max_length(name: str, config: Any, length: int) -> None:
    """Train, plan and the memory bench refuse steps longer than the model reads, in the same words."""
    positions = positions_of(config)
    if positions and length > positions:
        raise UserError(f"--max-length {length:,} is longer than model {name!r} can read ({positions:,} "
                        f"positions); use at most {positions:,}")


def check_model(name: str) -> None:
    """Fail now, in one line, where loading `name` would fail later, reading a config.json at most
    (never weights): eval checks both of its models before it spends minutes on the first."""
    require_name(name)
    if is_fresh_only(name):
        return
    folder = Path(name).expanduser()
    if is_local(name):
        if not (folder / "config.json").exists() and not (folder / ADAPTER_CONFIG).exists():
            raise UserError(f"{name} is not a model folder (no config.json); give a run's final/ folder or a "
                            "Hugging Face model folder")
        check_plain_files(folder)
        return
    if looks_like_path(name):
        raise UserError(f"model folder not found: {name}")
    from transformers import AutoConfig

    quiet_transformers()
    online = hub_reachable()
    try:
        AutoConfig.from_pretrained(name, local_files_only=not online)
    except (OSError, ValueError) as e:
        raise (UserError(f"cannot load model {name!r}: {first_line(e)}") if online else _not_cached(name)) from None


MODEL_FILES = (".json", ".txt", ".model", ".safetensors", ".tiktoken", ".bin")  # what the loaders may read
SMALL_JSON_BYTES = 16 << 20  # config.json and its kin are kilobytes; tokenizer.json is read by `tokenizers`


def check_plain_files(folder: Path) -> None:
    """Refuse a model folder whose files are not plain files (a device or a pipe in the place of
    config.json or tokenizer.json: the loaders skip it or choke on it, far from the cause) or
    whose config files are too large to be read whole."""
    import stat

    for path in folder.iterdir():
        if not path.name.endswith(MODEL_FILES):
            continue
        try:
            info = path.stat()
        except OSError:
            continue  # a broken link: the loader names the file it misses
        if not stat.S_ISREG(info.st_mode) and not stat.S_ISDIR(info.st_mode):
            raise UserError(f"{path} is not a plain file (a device or a pipe); put the model's own file there")
        if path.name.endswith("config.json") and info.st_size > SMALL_JSON_BYTES:
            raise UserError(f"{path} is {info.st_size >> 20} MB, too large to be a model's config; "
                            "put the model's own file there")


def refuse_checkpoint(folder: Path) -> None:
    """A checkpoint holds weights but neither tokenizer nor template: it resumes training, it does not answer."""
    if (folder / "state.json").is_file() and (folder / "rng.pt").is_file():
        raise UserError(f"{folder} is a training checkpoint, which holds no tokenizer or prompt template; give the "
                        "run's final/ folder, or continue the run with `shardtune train --resume`")


def _not_cached(name: str, hint: str = "") -> UserError:
    return UserError(f"cannot load model {name!r}: the Hugging Face hub is unreachable and it is not in the local "
                     f"cache; pass a downloaded model folder{hint}")


@dataclass
class Loaded:
    """A model ready to answer: its tokenizer, the template it was taught with, its context."""

    model: Any
    tokenizer: Any
    template: Any  # shardtune.template.PromptTemplate
    context: int
    run_dir: Path | None  # the run that trained it, when shardtune did


def load_for_inference(name: str) -> Loaded:
    """A model and everything needed to ask it questions the way it was trained."""
    import torch

    from shardtune.manifest import RunInfo
    from shardtune.template import PromptTemplate
    from shardtune.tokens.tokenizer import load_tokenizer

    require_name(name)
    folder = Path(name).expanduser()
    refuse_checkpoint(folder)
    if is_local(name) and folder.is_dir():
        check_plain_files(folder)
    info = RunInfo.read(folder) if is_local(name) and folder.is_dir() else None
    if is_fresh_only(name):  # the weights `shardtune train --model tiny` starts from, sized to the tokenizer
        from shardtune.tokens.tokenizer import eos_id, vocab_size

        tokenizer = load_tokenizer(tokenizer_name(name))
        torch.manual_seed(42)
        model = load_model(name, vocab_size=vocab_size(tokenizer), eos_id=eos_id(tokenizer))
    else:  # the model first: a folder that is no model says so before its tokenizer is looked for
        adapter = (folder / ADAPTER_CONFIG).exists()
        model = _load_adapter(folder, info) if adapter else load_model(name, from_scratch=None)
        tokenizer = load_tokenizer(str(Path(name).expanduser()) if is_local(name) else tokenizer_name(name))
    template = PromptTemplate(info.template) if info else PromptTemplate()
    config = model.config
    context = positions_of(config) or 1024
    return Loaded(model, tokenizer, template, int(context), Path(info.run_dir) if info and info.run_dir else None)


def _load_adapter(folder: Path, info: Any) -> Any:
    """A run's adapter/ folder: its base rebuilt as training built it, the adapter merged in."""
    import torch

    if info is None:
        raise UserError(f"{folder} holds a LoRA adapter but no shardtune.json naming its base; give the run's "
                        "final/ folder (the merged model) instead")
    config = info.train_config
    torch.manual_seed(config["seed"])
    base = load_model(config["model"], from_scratch=config["from_scratch"], vocab_size=info.vocab_size or None,
                      eos_id=info.eos_id)
    try:
        return merge_adapter(base, folder)
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        raise UserError(f"the adapter in {folder} does not fit its base {config['model']!r}: "
                        f"{first_line(e)}") from None


def enable_activation_checkpointing(model: Any) -> None:
    """Recompute each layer's activations in the backward pass (transformers renamed the method).
    Non-reentrant, so it works when the base is frozen and only adapters learn (LoRA, QLoRA)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers 4
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
