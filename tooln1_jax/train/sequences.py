"""The log-probs of the reply tokens of a prefix-shared packed batch (`packing.py`), for the training passes.

Log-probs go through the LM head either over vocabulary tiles with an online log-sum-exp (`models/head.py`; the CPU
default) or in chunks of reply positions, rematerialised in the backward pass; either way the [N, R, vocab] logits
never exist at once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tooln1_jax.models import head, qwen2
from tooln1_jax.models.qwen2 import Qwen2Config


def _chunk_logprobs(config: Qwen2Config, params, hidden, targets, temperature: float, with_entropy: bool):
    logits = qwen2.apply_head(config, params, hidden) / temperature  # [N, C, V] float32
    logz = jax.nn.logsumexp(logits, axis=-1)
    logp = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - logz
    if not with_entropy:
        return logp, jnp.zeros_like(logp)
    probs = jax.nn.softmax(logits, axis=-1)
    return logp, logz - jnp.sum(probs * logits, axis=-1)


def packed_logprobs(config: Qwen2Config, params, batch: dict, *, temperature: float = 1.0, chunk: int = 128,
                    with_entropy: bool = False) -> tuple[jax.Array, jax.Array]:
    """Reply log-probs (and entropies) [rows, S, R] of a prefix-shared packed batch (`packing.PackedGroups` as a
    dict: tokens, positions, segment_ids, prefix_ids [rows, L]; predict, targets [rows, S, R]). The hidden state
    of each reply position is gathered within its row, so the LM head runs at reply positions only."""
    hidden = qwen2.hidden_states(config, params, batch["tokens"], positions=batch["positions"],
                                 segment_ids=batch["segment_ids"], prefix_ids=batch["prefix_ids"])
    rows, slots, reply = batch["predict"].shape
    h = jnp.take_along_axis(hidden, batch["predict"].reshape(rows, slots * reply, 1), axis=1)
    logp, entropy = _head_logprobs(config, params, h.reshape(rows * slots, reply, -1),
                                   batch["targets"].reshape(rows * slots, reply), temperature, chunk, with_entropy)
    return logp.reshape(rows, slots, reply), entropy.reshape(rows, slots, reply)


def _head_logprobs(config: Qwen2Config, params, h, targets, temperature: float, chunk: int, with_entropy: bool):
    """LM head + log-softmax over hidden states h [N, R, E]: over vocabulary tiles (`models/head.py`, the CPU
    default), or as whole logits `chunk` reply positions at a time (accelerators)."""
    if head.resolve(config.head) == "tiled":
        n, reply, e = h.shape
        tied = config.tie_word_embeddings
        w = params["model"]["embed_tokens"]["embedding"] if tied else params["lm_head"]["kernel"].T  # [V, E]
        logp, entropy = head.token_logprobs((h / temperature).reshape(n * reply, e), w, targets.reshape(-1),
                                            dtype=config.dtype, with_entropy=with_entropy)
        return logp.reshape(n, reply), entropy.reshape(n, reply)
    reply = h.shape[1]
    chunk = min(chunk, reply)
    pad = -reply % chunk
    if pad:
        h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    n = h.shape[0]
    h = h.reshape(n, -1, chunk, h.shape[-1]).swapaxes(0, 1)  # [chunks, N, C, E]
    targets = targets.reshape(n, -1, chunk).swapaxes(0, 1)
    fn = jax.checkpoint(lambda hc, tc: _chunk_logprobs(config, params, hc, tc, temperature, with_entropy))
    logp, entropy = jax.lax.map(lambda xs: fn(*xs), (h, targets))
    unchunk = lambda x: x.swapaxes(0, 1).reshape(n, -1)[:, :reply]  # noqa: E731
    return unchunk(logp), unchunk(entropy)
