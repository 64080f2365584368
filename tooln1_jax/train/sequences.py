"""Prompt + reply sequences for the training passes, and the log-probs of the reply tokens.

A packed batch is [N, P + R]: each prompt left-padded to width P (so every reply starts at column P), the
reply right after it, right-padded to width R. The logits that predict reply token j sit at column P - 1 + j.
This padded layout is the reference of the prefix-shared packed one (`packing.py`, `packed_logprobs`).
Log-probs go through the LM head either over vocabulary tiles with an online log-sum-exp (`models/head.py`; the
CPU default) or in chunks of reply positions, rematerialised in the backward pass; either way the [N, R, vocab]
logits never exist at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tooln1_jax.models import head, qwen2
from tooln1_jax.models.qwen2 import Qwen2Config
from tooln1_jax.shapes import bucket


@dataclasses.dataclass
class Packed:
    tokens: np.ndarray  # int32 [N, P + R]
    attention_mask: np.ndarray  # bool [N, P + R]
    response_mask: np.ndarray  # float32 [N, R]: 1 on reply tokens
    prompt_width: int  # P


def pack(prompts: Sequence[Sequence[int]], replies: Sequence[Sequence[int]], *, prompt_width: int | None = None,
         reply_width: int | None = None) -> Packed:
    """Pack row i = prompts[i] + replies[i]. Widths default to bucketed maxima (few distinct shapes)."""
    if len(prompts) != len(replies):
        raise ValueError(f"{len(prompts)} prompts but {len(replies)} replies")
    p = prompt_width or bucket(max(map(len, prompts)), 16)
    r = reply_width or bucket(max(1, max(map(len, replies))), 16)
    n = len(prompts)
    tokens = np.zeros((n, p + r), np.int32)
    attention = np.zeros((n, p + r), bool)
    response = np.zeros((n, r), np.float32)
    for i, (prompt, reply) in enumerate(zip(prompts, replies)):
        if len(prompt) > p or len(reply) > r:
            raise ValueError(f"row {i}: prompt {len(prompt)} / reply {len(reply)} tokens exceed widths {p} / {r}")
        tokens[i, p - len(prompt):p] = prompt
        tokens[i, p:p + len(reply)] = reply
        attention[i, p - len(prompt):p + len(reply)] = True
        response[i, :len(reply)] = 1.0
    return Packed(tokens, attention, response, p)


def _chunk_logprobs(config: Qwen2Config, params, hidden, targets, temperature: float, with_entropy: bool):
    logits = qwen2.apply_head(config, params, hidden) / temperature  # [N, C, V] float32
    logz = jax.nn.logsumexp(logits, axis=-1)
    logp = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - logz
    if not with_entropy:
        return logp, jnp.zeros_like(logp)
    probs = jax.nn.softmax(logits, axis=-1)
    return logp, logz - jnp.sum(probs * logits, axis=-1)


def response_logprobs(config: Qwen2Config, params, tokens: jax.Array, attention_mask: jax.Array,
                      prompt_width: int, *, temperature: float = 1.0, chunk: int = 128,
                      with_entropy: bool = False) -> tuple[jax.Array, jax.Array]:
    """Log-probs [N, R] of the reply tokens under log_softmax(logits / temperature), and the per-token entropy
    (zeros unless `with_entropy`). Padding positions hold finite garbage: mask them."""
    hidden, _ = qwen2.hidden_states(config, params, tokens, attention_mask=attention_mask)
    reply = tokens.shape[1] - prompt_width
    h = hidden[:, prompt_width - 1: prompt_width - 1 + reply]  # [N, R, E]
    return _head_logprobs(config, params, h, tokens[:, prompt_width:], temperature, chunk, with_entropy)


def packed_logprobs(config: Qwen2Config, params, batch: dict, *, temperature: float = 1.0, chunk: int = 128,
                    with_entropy: bool = False) -> tuple[jax.Array, jax.Array]:
    """Reply log-probs (and entropies) [rows, S, R] of a prefix-shared packed batch (`packing.PackedGroups` as a
    dict: tokens, positions, segment_ids, prefix_ids [rows, L]; predict, targets [rows, S, R]). The hidden state
    of each reply position is gathered within its row, so the LM head runs at reply positions only."""
    hidden, _ = qwen2.hidden_states(config, params, batch["tokens"], positions=batch["positions"],
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
