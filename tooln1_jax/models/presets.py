"""Qwen2.5 instruct and dense Qwen3 shapes, as the fields of their Hugging Face config.json files.

A preset is named by family and size ("qwen2.5-7b", "qwen3-8b"); a bare size ("7b") names the Qwen2.5 model, and an
"-instruct" suffix is accepted (a Qwen2.5 instruct model has its base model's shape).
"""

from __future__ import annotations

from tooln1_jax.models.qwen2 import Qwen2Config

_COMMON = {"rope_theta": 1_000_000.0, "hidden_act": "silu", "use_sliding_window": False}
_FAMILIES = {  # family: (its config.json fields every size shares, the fields each size's tuple gives)
    "qwen2.5": ({**_COMMON, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
                 "max_position_embeddings": 32768},
                ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "vocab_size", "rms_norm_eps", "tie_word_embeddings")),
    "qwen3": ({**_COMMON, "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
               "max_position_embeddings": 40960, "attention_bias": False, "vocab_size": 151936, "rms_norm_eps": 1e-6},
              ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "head_dim", "tie_word_embeddings")),
}
_SHAPES = {  # family: {size: the values of its fields}
    "qwen2.5": {
        "0.5b": (896, 4864, 24, 14, 2, 151936, 1e-6, True),
        "1.5b": (1536, 8960, 28, 12, 2, 151936, 1e-6, True),
        "3b": (2048, 11008, 36, 16, 2, 151936, 1e-6, True),
        "7b": (3584, 18944, 28, 28, 4, 152064, 1e-6, False),
        "14b": (5120, 13824, 48, 40, 8, 152064, 1e-5, False),
        "32b": (5120, 27648, 64, 40, 8, 152064, 1e-5, False),
        "72b": (8192, 29568, 80, 64, 8, 152064, 1e-5, False),
    },
    "qwen3": {
        "0.6b": (1024, 3072, 28, 16, 8, 128, True),
        "1.7b": (2048, 6144, 28, 16, 8, 128, True),
        "4b": (2560, 9728, 36, 32, 8, 128, True),
        "8b": (4096, 12288, 36, 32, 8, 128, False),
        "14b": (5120, 17408, 40, 40, 8, 128, False),
        "32b": (5120, 25600, 64, 64, 8, 128, False),
    },
}
BARE_SIZE_FAMILY = "qwen2.5"  # the family of a bare size such as "7b"
NAMES = tuple(f"{family}-{size}" for family, sizes in _SHAPES.items() for size in sizes)


def hf_config(name: str) -> dict:
    """The config.json fields of the preset `name` (see the module docstring)."""
    key = name.lower().removesuffix("-instruct")
    family, _, size = key.rpartition("-")
    family = family or BARE_SIZE_FAMILY
    if size not in _SHAPES.get(family, {}):
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(NAMES)} (a bare size such as '7b' "
                         f"names the {BARE_SIZE_FAMILY} model)")
    common, fields = _FAMILIES[family]
    return {**common, **dict(zip(fields, _SHAPES[family][size]))}


def preset(name: str, **runtime) -> Qwen2Config:
    """Qwen2Config of a preset ("qwen2.5-7b", "qwen3-8b", a bare "7b"); runtime fields (dtype, param_dtype, remat)
    as keywords."""
    return Qwen2Config.from_hf(hf_config(name), source=f"preset {name}", **runtime)
