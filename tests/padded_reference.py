"""The padded training layout: the reference the tests prove the prefix-shared packed one (train/packing.py) against.

One row per reply: its prompt left-padded to a common width P (so every reply starts at column P), the reply right
after it, right-padded to width R; the logits that predict reply token j sit at column P - 1 + j. The LM head gives
whole logits (no vocabulary tiles, no chunks of positions), and each loss is one pass over the whole batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tooln1_jax.config import GRPOConfig
from tooln1_jax.models import qwen2
from tooln1_jax.shapes import bucket
from tooln1_jax.train import grpo


@dataclasses.dataclass
class PaddedBatch:
    tokens: np.ndarray  # int32 [N, P + R]
    attention_mask: np.ndarray  # bool [N, P + R]
    response_mask: np.ndarray  # float32 [N, R]: 1 on reply tokens
    prompt_width: int  # P


def pad(prompts: Sequence[Sequence[int]], replies: Sequence[Sequence[int]]) -> PaddedBatch:
    """Row i = prompts[i] + replies[i]; widths: the longest prompt and reply, bucketed (`shapes.bucket`)."""
    assert len(prompts) == len(replies)
    p, r = bucket(max(map(len, prompts)), 16), bucket(max(1, max(map(len, replies))), 16)
    n = len(prompts)
    tokens, attention = np.zeros((n, p + r), np.int32), np.zeros((n, p + r), bool)
    response = np.zeros((n, r), np.float32)
    for i, (prompt, reply) in enumerate(zip(prompts, replies)):
        tokens[i, p - len(prompt):p] = prompt
        tokens[i, p:p + len(reply)] = reply
        attention[i, p - len(prompt):p + len(reply)] = True
        response[i, :len(reply)] = 1.0
    return PaddedBatch(tokens, attention, response, p)


def pad_groups(prompts, replies) -> PaddedBatch:
    """The rows of groups (prompts[i] with each of replies[i]), group by group: the packed layout's sample order."""
    return pad([p for p, rs in zip(prompts, replies) for _ in rs], [r for rs in replies for r in rs])


def response_logprobs(config: qwen2.Qwen2Config, params, batch: PaddedBatch, *, temperature: float = 1.0):
    """Log-probs and entropies [N, R] of the reply positions under log_softmax(logits / temperature)."""
    hidden = qwen2.hidden_states(config, params, jnp.asarray(batch.tokens),
                                 attention_mask=jnp.asarray(batch.attention_mask))
    p = batch.prompt_width
    reply = batch.tokens.shape[1] - p
    logits = qwen2.apply_head(config, params, hidden[:, p - 1:p - 1 + reply]) / temperature
    logp_all = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    logp = jnp.take_along_axis(logp_all, jnp.asarray(batch.tokens[:, p:])[..., None], axis=-1)[..., 0]
    return logp, -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)


def grpo_loss(config: qwen2.Qwen2Config, params, batch: PaddedBatch, advantages, old_logp, ref_logp,
              g: GRPOConfig, *, temperature: float, max_len: int):
    """(loss, metrics) of `grpo.policy_loss` over the whole batch, as the trainer's update sets it."""
    logp, entropy = response_logprobs(config, params, batch, temperature=temperature)
    return grpo.policy_loss(logp, old_logp, ref_logp if g.beta > 0 else None, advantages, batch.response_mask,
                            clip_eps=g.epsilon, clip_eps_high=g.epsilon_high, dual_clip=g.dual_clip,
                            kl_coef=g.beta, kl_type=g.kl_type, agg=g.loss_agg,
                            entropy=entropy if g.entropy_coef != 0.0 else None, entropy_coef=g.entropy_coef,
                            max_len=max_len)


def sft_loss(config: qwen2.Qwen2Config, params, batch: PaddedBatch):
    """Masked next-token cross-entropy: the token mean over every reply token of the batch."""
    logp, _ = response_logprobs(config, params, batch)
    mask = jnp.asarray(batch.response_mask)
    return -jnp.sum(jnp.where(mask > 0, logp, 0.0)) / jnp.sum(mask)
