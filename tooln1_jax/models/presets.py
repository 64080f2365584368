"""Qwen2.5 instruct shapes, as the fields of their Hugging Face config.json files."""

from __future__ import annotations

from tooln1_jax.models.qwen2 import Qwen2Config

_COMMON = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "max_position_embeddings": 32768,
           "rope_theta": 1_000_000.0, "hidden_act": "silu", "use_sliding_window": False}

_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
           "vocab_size", "rms_norm_eps", "tie_word_embeddings")
_SHAPES = {  # name: the values of _FIELDS
    "0.5b": (896, 4864, 24, 14, 2, 151936, 1e-6, True),
    "1.5b": (1536, 8960, 28, 12, 2, 151936, 1e-6, True),
    "3b": (2048, 11008, 36, 16, 2, 151936, 1e-6, True),
    "7b": (3584, 18944, 28, 28, 4, 152064, 1e-6, False),
    "14b": (5120, 13824, 48, 40, 8, 152064, 1e-5, False),
    "32b": (5120, 27648, 64, 40, 8, 152064, 1e-5, False),
    "72b": (8192, 29568, 80, 64, 8, 152064, 1e-5, False),
}
NAMES = tuple(_SHAPES)


def hf_config(name: str) -> dict:
    """The config.json fields of Qwen2.5-<name>-Instruct."""
    key = name.lower().removeprefix("qwen2.5-").removesuffix("-instruct")
    if key not in _SHAPES:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(NAMES)}")
    return {**_COMMON, **dict(zip(_FIELDS, _SHAPES[key]))}


def preset(name: str, **runtime) -> Qwen2Config:
    """Qwen2Config of a Qwen2.5 size ("0.5b" ... "72b"); runtime fields (dtype, param_dtype, remat) as keywords."""
    return Qwen2Config.from_hf(hf_config(name), source=f"preset {name}", **runtime)
