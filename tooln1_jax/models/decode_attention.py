"""Attention of new tokens over a per-row KV cache, reading only the first `width` cache entries (XLA).

The cache of one layer is [rows, kv_heads, capacity, head_dim]: entry i of a row holds the key/value of that row's
token at position i, so a query at position p attends to entries [0, p]. Callers pass `width` (static, bucketed)
>= 1 + the largest live position, so the read stops at the longest live context instead of the capacity. The
softmax is `attention.grouped`, the training path's dense core; an accelerator kernel must agree with it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tooln1_jax.models import attention


def write(cache: jax.Array, new: jax.Array, positions: jax.Array) -> jax.Array:
    """cache [B, KV, C, D] with new [B, T, KV, D] stored at entries positions [B, T] (in place when donated)."""
    rows = jnp.arange(cache.shape[0])[:, None]
    return cache.at[rows, :, positions].set(new.astype(cache.dtype), mode="drop")


def attend(q: jax.Array, k: jax.Array, v: jax.Array, positions: jax.Array, width: int) -> jax.Array:
    """q [B, T, H, D] at positions [B, T]; k, v [B, KV, C, D] caches. Returns [B, T, H, D] (q's dtype)."""
    visible = jnp.arange(width)[None, None, :] <= positions[:, :, None]  # [B, T, W]
    return attention.grouped(q, k[:, :, :width], v[:, :, :width], visible, kv_layout="bksd")


def over_cache(cache: tuple[jax.Array, jax.Array], positions: jax.Array, width: int):
    """The attention of one decoder layer (`qwen2.decoder_layer`'s `attend`) over its cache (k, v): writes the new
    keys/values at `positions`, attends over entries [0, width), and returns the updated cache beside the output."""
    def attend_cached(q, k, v):
        ck, cv = write(cache[0], k, positions), write(cache[1], v, positions)
        return attend(q, ck, cv, positions, width), (ck, cv)

    return attend_cached
