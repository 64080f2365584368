"""Per-layer KV caches for the rollout: a tuple of (k, v) arrays [rows, kv_heads, capacity, head_dim] per layer.

Entry i of a row holds the key/value of that row's token at position i (no padding inside a row), so a row's live
length is its next position and a prompt's prefilled entries can be copied into any decode slot as they are.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from tooln1_jax import parallel
from tooln1_jax.models.qwen2 import Qwen2Config

LOGICAL_AXES = ("batch", "kv_heads", "length", "head_dim")


def sharding(config: Qwen2Config, mesh: Mesh, rows: int, capacity: int) -> NamedSharding:
    shape = (rows, config.num_key_value_heads, capacity, config.head_dim)
    return NamedSharding(mesh, parallel.logical_to_spec(LOGICAL_AXES, shape, mesh))


def allocate(config: Qwen2Config, rows: int, capacity: int, dtype) -> tuple:
    shape = (rows, config.num_key_value_heads, capacity, config.head_dim)
    return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(config.num_hidden_layers))


def nbytes(config: Qwen2Config, rows: int, capacity: int, itemsize: int) -> int:
    return 2 * config.num_hidden_layers * rows * config.num_key_value_heads * capacity * config.head_dim * itemsize


def insert(slot_caches: tuple, prompt_caches: tuple, slots: jax.Array, sources: jax.Array) -> tuple:
    """Copy prompt row sources[i]'s entries [0, prompt width) into slot slots[i] of every layer; slot ids past the
    last row are skipped (padding)."""
    width = prompt_caches[0][0].shape[2]
    return tuple((sk.at[slots, :, :width].set(pk[sources], mode="drop"),
                  sv.at[slots, :, :width].set(pv[sources], mode="drop"))
                 for (sk, sv), (pk, pv) in zip(slot_caches, prompt_caches))
