"""Log-probs (and entropies) of given tokens under the LM head's softmax, computed over vocabulary tiles.

`token_logprobs(h, w, targets)` equals `log_softmax(h @ w.T)[target]` without the [N, vocab] logits ever existing:
the forward runs an online log-sum-exp over tiles of `tile` vocabulary rows, and a custom VJP recomputes each
tile's logits and softmax in the backward. On a CPU this is the fast way (the tile's logits stay in cache; a
whole [N, vocab] logit array makes every elementwise pass a trip to memory); `resolve("auto")` picks it there.

The scan covers the whole tiles; the vocabulary's remainder (vocab % tile rows) is one smaller tile after it, so
no tile needs a mask and no padded copy of the weights is made.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

TILE = 2048  # vocabulary rows per tile: [N, TILE] float32 logits stay in a CPU's cache for N of a few hundred
IMPLEMENTATIONS = ("auto", "chunked", "tiled")


def resolve(implementation: str) -> str:
    """"tiled" or "chunked" (whole logits, a chunk of positions at a time: `train/sequences.py`) for a
    `Qwen2Config.head` setting; "auto" is tiled on a CPU."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"head must be one of {', '.join(IMPLEMENTATIONS)}, got {implementation!r}")
    if implementation == "auto":
        return "tiled" if jax.default_backend() == "cpu" else "chunked"
    return implementation


def _logits(h, wt, dtype):
    return jnp.einsum("ne,te->nt", h.astype(dtype), wt.astype(dtype), preferred_element_type=jnp.float32)


def _over_tiles(step, carry, w, tile: int):
    """carry, [per-tile outputs] of `step(carry, w_tile)` over the whole tiles of w [V, E] (a scan; each tile
    sliced in place), then over the remainder rows."""
    whole, rest = divmod(w.shape[0], tile)
    tile_at = lambda i: jax.lax.dynamic_slice_in_dim(w, i * tile, tile, axis=0)  # noqa: E731
    carry, outs = jax.lax.scan(lambda c, i: step(c, tile_at(i)), carry, jnp.arange(whole))
    outs = [] if outs is None else [outs.reshape(whole * tile, *outs.shape[2:])]
    if rest:
        carry, out = step(carry, w[whole * tile:])
        outs += [] if out is None else [out]
    return carry, outs


def _forward(h, w, targets, tile: int, dtype, with_entropy: bool):
    """(log-probs [N], entropies [N] (zeros unless with_entropy), log-sum-exp [N]) by an online softmax over the
    vocabulary tiles."""
    def step(carry, wt):
        m, s, a = carry  # running max, sum of exp(l - m), sum of exp(l - m) * l
        logits = _logits(h, wt, dtype)
        m_new = jnp.maximum(m, logits.max(1))
        e = jnp.exp(logits - m_new[:, None])
        scale = jnp.exp(m - m_new)
        a = a * scale + jnp.sum(e * logits, 1) if with_entropy else a
        return (m_new, s * scale + e.sum(1), a), None

    zeros = jnp.zeros(h.shape[:1], jnp.float32)
    (m, s, a), _ = _over_tiles(step, (jnp.full(h.shape[:1], -jnp.inf, jnp.float32), zeros, zeros), w, tile)
    lse = m + jnp.log(s)
    target_logits = jnp.einsum("ne,ne->n", h.astype(dtype), w[targets].astype(dtype),
                               preferred_element_type=jnp.float32)
    return target_logits - lse, (lse - a / s) if with_entropy else zeros, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _logprobs(h, w, targets, tile: int, dtype, with_entropy: bool):
    return _forward(h, w, targets, tile, dtype, with_entropy)[:2]


def _logprobs_fwd(h, w, targets, tile: int, dtype, with_entropy: bool):
    logp, entropy, lse = _forward(h, w, targets, tile, dtype, with_entropy)
    return (logp, entropy), (h, w, targets, lse, entropy)


def _logprobs_bwd(tile: int, dtype, with_entropy: bool, residuals, cotangents):
    """d logp_n / d l_nj = [j = target_n] - p_nj;  d H_n / d l_nj = -p_nj (l_nj - E_p[l]_n), E_p[l] = lse - H."""
    h, w, targets, lse, entropy = residuals
    g_logp, g_entropy = cotangents
    mean_logit = lse - entropy

    def step(dh, wt):
        logits = _logits(h, wt, dtype)
        p = jnp.exp(logits - lse[:, None])
        weight = g_logp[:, None]
        if with_entropy:
            weight = weight + g_entropy[:, None] * (logits - mean_logit[:, None])
        d_logits = (-p * weight).astype(dtype)
        dh = dh + jnp.einsum("nt,te->ne", d_logits, wt.astype(dtype), preferred_element_type=jnp.float32)
        return dh, jnp.einsum("nt,ne->te", d_logits, h.astype(dtype), preferred_element_type=jnp.float32)

    dh, dw = _over_tiles(step, jnp.zeros(h.shape, jnp.float32), w, tile)
    dw = jnp.concatenate(dw) if len(dw) > 1 else dw[0]
    dh = dh + g_logp[:, None] * w[targets].astype(jnp.float32)  # the one-hot part of d logp
    dw = dw.at[targets].add(g_logp[:, None] * h.astype(jnp.float32))
    return dh.astype(h.dtype), dw.astype(w.dtype), None


_logprobs.defvjp(_logprobs_fwd, _logprobs_bwd)


def token_logprobs(h: jax.Array, w: jax.Array, targets: jax.Array, *, tile: int = TILE, dtype=jnp.float32,
                   with_entropy: bool = True) -> tuple[jax.Array, jax.Array]:
    """log_softmax(h @ w.T)[n, targets[n]] and the softmax's entropy (zeros unless `with_entropy`), float32 [N].

    h [N, E] hidden states (already divided by any temperature), w [V, E] the output embedding (rows = vocabulary
    entries), targets int [N]; the products run in `dtype` with float32 accumulation, as `qwen2.apply_head`."""
    return _logprobs(h, w, jnp.asarray(targets, jnp.int32), min(tile, w.shape[0]), dtype, with_entropy)
