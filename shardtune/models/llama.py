"""The Llama family: Llama, Qwen2, SmolLM2, TinyLlama, Mistral (rotary positions, RMSNorm,
SwiGLU, grouped-query attention). Published shapes for fresh weights, and what LoRA targets.

`tiny-llama` is ours: a 2-layer, 128-wide Llama with GPT-2's vocabulary, for the tests.
The others are the published configs (rope settings, tied embeddings, Qwen2's q/k/v bias).
"""

from __future__ import annotations

from .family import Family


def _llama(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, vocab: int, tied: bool,
           theta: float, positions: int, **extra) -> dict:
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                intermediate_size=intermediate, vocab_size=vocab, tie_word_embeddings=tied,
                max_position_embeddings=positions, rope_parameters={"rope_type": "default", "rope_theta": theta},
                **extra)


SHAPES = {
    "tiny-llama": ("llama", _llama(128, 2, 4, 2, 384, 50257, True, 10_000.0, 512)),
    "smollm2-135m": ("llama", _llama(576, 30, 9, 3, 1536, 49152, True, 100_000.0, 8192, rms_norm_eps=1e-5)),
    "smollm2-360m": ("llama", _llama(960, 32, 15, 5, 2560, 49152, True, 100_000.0, 8192, rms_norm_eps=1e-5)),
    "qwen2.5-0.5b": ("qwen2", _llama(896, 24, 14, 2, 4864, 151936, True, 1_000_000.0, 32768, rms_norm_eps=1e-6)),
    "qwen2.5-1.5b": ("qwen2", _llama(1536, 28, 12, 2, 8960, 151936, True, 1_000_000.0, 32768, rms_norm_eps=1e-6)),
    "llama-3.2-1b": ("llama", {**_llama(2048, 16, 32, 8, 8192, 128256, True, 500_000.0, 131072, rms_norm_eps=1e-5),
                               "rope_parameters": {"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 32.0,
                                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                   "original_max_position_embeddings": 8192}}),
    "tinyllama-1.1b": ("llama", _llama(2048, 22, 32, 4, 5632, 32000, False, 10_000.0, 2048, rms_norm_eps=1e-5)),
}
EOS = {"tiny-llama": 50256, "smollm2-135m": 0, "smollm2-360m": 0, "qwen2.5-0.5b": 151643, "qwen2.5-1.5b": 151643,
       "llama-3.2-1b": 128001, "tinyllama-1.1b": 2}


class Llama(Family):
    name = "llama"
    model_types = ("llama", "qwen2", "mistral")
    presets = {name: fields for name, (_, fields) in SHAPES.items()}
    tokenizer = "gpt2"  # tiny-llama's; the published presets are for speed and memory figures

    def config(self, preset: str, vocab_size: int | None = None, eos_id: int | None = None):
        """The published config; a larger `vocab_size` (the shards' tokenizer) widens the embedding."""
        from transformers import LlamaConfig, Qwen2Config

        kind, fields = SHAPES[preset]
        vocab = max(vocab_size or 0, fields["vocab_size"]) if preset != "tiny-llama" else (vocab_size or 50257)
        eos = EOS[preset] if eos_id is None else eos_id
        cls = Qwen2Config if kind == "qwen2" else LlamaConfig
        return cls(**{**fields, "vocab_size": vocab}, bos_token_id=eos, eos_token_id=eos)
