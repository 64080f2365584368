"""Attention of new tokens over a per-row KV cache, reading only the first `width` cache entries (XLA).

The cache of one layer is [rows, kv_heads, capacity, head_dim]: entry i of a row holds the key/value of that row's
token at position i, so a query at position p attends to entries [0, p]. Callers pass `width` (static, bucketed)
>= 1 + the largest live position, so the read stops at the longest live context instead of the capacity. This is
the reference path (and the CPU one); an accelerator kernel must agree with it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def write(cache: jax.Array, new: jax.Array, positions: jax.Array) -> jax.Array:
    """cache [B, KV, C, D] with new [B, T, KV, D] stored at entries positions [B, T] (in place when donated)."""
    rows = jnp.arange(cache.shape[0])[:, None]
    return cache.at[rows, :, positions].set(new.astype(cache.dtype), mode="drop")


def attend(q: jax.Array, k: jax.Array, v: jax.Array, positions: jax.Array, width: int) -> jax.Array:
    """q [B, T, H, D] at positions [B, T]; k, v [B, KV, C, D] caches. Returns [B, T, H, D] (q's dtype)."""
    b, t, h, d = q.shape
    kv = k.shape[1]
    k, v = k[:, :, :width], v[:, :, :width]
    q = q.reshape(b, t, kv, h // kv, d)
    scores = jnp.einsum("btkgd,bkwd->bkgtw", q, k, preferred_element_type=jnp.float32) * (d ** -0.5)
    visible = jnp.arange(width)[None, None, :] <= positions[:, :, None]  # [B, T, W]
    scores = jnp.where(visible[:, None, None], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("bkgtw,bkwd->btkgd", probs, v).reshape(b, t, h, d)
