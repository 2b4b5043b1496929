"""What shardtune needs to know about one architecture family, behind one small interface.

A family names the published shapes it can build with fresh weights (for speed and
memory figures without downloads), recognises its saved models by `model_type`, and
may swap in faster equivalent modules (`prepare`). A new family is one file with a
subclass, plus one line in `shardtune.models.FAMILIES`.
"""

from __future__ import annotations

from typing import Any


class Family:
    name: str = ""
    model_types: tuple[str, ...] = ()  # transformers' config.model_type values of this family
    presets: dict[str, dict[str, Any]] = {}  # preset name -> config fields of the published shape
    hub_presets: tuple[str, ...] = ()  # presets that are also hub names of pretrained weights
    tokenizer: str = ""  # the tokenizer whose vocabulary the fresh-only presets assume

    def config(self, preset: str, vocab_size: int | None = None, eos_id: int | None = None) -> Any:
        """The preset's transformers config; `vocab_size`/`eos_id` fit it to the shards' tokenizer."""
        raise NotImplementedError

    def build(self, preset: str, vocab_size: int | None = None, eos_id: int | None = None,
              prepare: bool = True) -> Any:
        """A model of the preset's shape with fresh weights (seed torch before calling);
        `prepare=False` keeps the stock modules (the seed's benchmark baseline)."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(self.config(preset, vocab_size, eos_id))
        return self.prepare(model) if prepare else model

    def prepare(self, model: Any) -> Any:
        """Equivalent, faster modules for training and generation; the default changes nothing."""
        return model
