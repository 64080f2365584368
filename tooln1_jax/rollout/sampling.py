"""Token sampling: temperature, top-k, top-p, and one draw per row keyed by the sample alone.

Log-probs are those of the sampling distribution before top-k/top-p filtering: log_softmax(logits / T) (T = 1 for
greedy decoding), which is what the GRPO ratio needs.

A draw is an inverse-CDF lookup with ONE uniform number per row (blocks of 256 tokens, then a token inside the
block), not `jax.random.categorical`, which draws a Gumbel number per vocabulary entry: 152k random numbers per row
per step cost more than the rest of the sampling (0.30 s vs 0.015 s for 32 rows on a 2-core CPU).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

BLOCK = 256  # vocabulary entries per block of the two-level inverse CDF


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Static sampling settings (hashable: part of the compiled program's identity)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def validate(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")


def filter_logits(scaled: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Mask (to -inf) everything outside the top-k tokens and outside the smallest top-p nucleus. [N, V] f32.
    Free when both are off; top-p sorts the vocabulary."""
    if top_k and top_k < scaled.shape[-1]:
        kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
        scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    if top_p < 1.0:
        sorted_desc = jnp.sort(scaled, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
        keep = before < top_p  # the first token always stays
        threshold = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
        scaled = jnp.where(scaled < threshold, -jnp.inf, scaled)
    return scaled


def _last_positive(x: jax.Array) -> jax.Array:
    """Index of the last entry > 0 along the last axis (0 when none)."""
    n = x.shape[-1]
    return n - 1 - jnp.argmax(jnp.flip(x > 0, axis=-1), axis=-1)


def inverse_cdf(weights: jax.Array, u: jax.Array) -> jax.Array:
    """Index i of each row with probability weights[i] / sum(weights); weights [N, V] >= 0, u [N] in [0, 1).
    Entries of weight 0 are never returned."""
    n, v = weights.shape
    blocks = jnp.pad(weights, ((0, 0), (0, -v % BLOCK))).reshape(n, -1, BLOCK)
    block_mass = blocks.sum(-1)  # [N, nb]
    block_cdf = jnp.cumsum(block_mass, axis=-1)
    target = u * block_cdf[:, -1]
    b = jnp.minimum(jnp.sum(block_cdf <= target[:, None], axis=-1), _last_positive(block_mass))
    inside = jnp.take_along_axis(blocks, b[:, None, None], axis=1)[:, 0]  # [N, BLOCK]
    rest = target - (jnp.take_along_axis(block_cdf, b[:, None], axis=1)[:, 0]
                     - jnp.take_along_axis(block_mass, b[:, None], axis=1)[:, 0])
    i = jnp.minimum(jnp.sum(jnp.cumsum(inside, axis=-1) <= rest[:, None], axis=-1), _last_positive(inside))
    return (b * BLOCK + i).astype(jnp.int32)


def sample_keys(rng: jax.Array, steps: jax.Array, sample_ids: jax.Array) -> jax.Array:
    """One key per row: fold_in(fold_in(rng, reply step), sample id) -- independent of the row it runs in."""
    return jax.vmap(lambda s, i: jax.random.fold_in(jax.random.fold_in(rng, s), i))(steps, sample_ids)


def sample_step(logits: jax.Array, keys: jax.Array, sampling: Sampling) -> tuple[jax.Array, jax.Array]:
    """Next tokens [N] and their log-probs [N] under log_softmax(logits / T); keys: one PRNG key per row."""
    logits = logits.astype(jnp.float32)
    if sampling.temperature == 0:
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logp = jax.nn.log_softmax(logits, axis=-1)
    else:
        scaled = logits / sampling.temperature
        logp = jax.nn.log_softmax(scaled, axis=-1)
        weights = jnp.exp(logp)
        if sampling.top_k or sampling.top_p < 1.0:
            weights = jnp.where(filter_logits(scaled, sampling.top_k, sampling.top_p) == -jnp.inf, 0.0, weights)
        tokens = inverse_cdf(weights, jax.vmap(jax.random.uniform)(keys))
    return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
