"""Shared by tests/test_packing.py in-process and in its 8-device subprocess: one GRPO update in the padded layout
(the reference) and in the prefix-shared packed layout, on the same groups."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tooln1_jax import parallel
from tooln1_jax.config import GRPOConfig
from tooln1_jax.models import qwen2
from tooln1_jax.train import packing, sequences
from tooln1_jax.train.step import GRPOSettings, StepFunctions

LR = 1e6  # SGD steps so large that new - old params (= -LR * grad) keep float32 precision
CONFIG = qwen2.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2)


def groups(seed: int, n: int, g: int, prompt_max: int = 40, reply_max: int = 20):
    """n ragged prompts with g ragged replies each."""
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(1, 64, int(rng.integers(3, prompt_max + 1))).tolist() for _ in range(n)]
    replies = [[rng.integers(1, 64, int(rng.integers(1, reply_max + 1))).tolist() for _ in range(g)]
               for _ in range(n)]
    return prompts, replies


def params(seed: int = 0):
    return qwen2.init_params(CONFIG, jax.random.key(seed))


def padded(prompts, replies):
    """The padded layout of the same samples (one row per reply, group by group)."""
    flat_prompts = [p for p, rs in zip(prompts, replies) for _ in rs]
    return sequences.pack(flat_prompts, [r for rs in replies for r in rs])


@functools.partial(jax.jit, static_argnums=3)
def _padded_logprobs(p, tokens, attention_mask, prompt_width):
    return sequences.response_logprobs(CONFIG, p, tokens, attention_mask, prompt_width)


def padded_logprobs(p, prompts, replies):
    batch = padded(prompts, replies)
    logp, _ = _padded_logprobs(p, batch.tokens, batch.attention_mask, batch.prompt_width)
    return np.asarray(logp), batch.response_mask


packed_logprobs = jax.jit(functools.partial(sequences.packed_logprobs, CONFIG))


def packed_batch(packed: packing.PackedGroups) -> dict:
    return {k: getattr(packed, k) for k in ("tokens", "positions", "segment_ids", "prefix_ids", "predict",
                                            "targets", "response_mask")}


def sample_values(n: int, width: int, seed: int = 1):
    """Advantages [n], old and reference log-probs [n, width] (plausible, not equal to the current ones)."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=n).astype(np.float32), (-rng.uniform(0.5, 5, (n, width))).astype(np.float32),
            (-rng.uniform(0.5, 5, (n, width))).astype(np.float32))


def settings(micro: int, **grpo) -> GRPOSettings:
    return GRPOSettings(temperature=0.7, max_len=32, micro_batch_size=micro,
                        grpo=GRPOConfig(beta=0.01, **grpo))


def updates(mesh, prompts, replies, *, micro_padded: int, budget: int, micro_rows: int, loss_agg="token-mean"):
    """One SGD step in each layout from the same parameters: ((p0, padded params, metrics), (packed params,
    metrics), the packed layout)."""
    p0 = jax.device_put(params(), parallel.shardings(*qwen2.abstract_params(CONFIG), mesh))
    steps = StepFunctions(CONFIG, optax.sgd(LR), mesh, p0)
    n = sum(map(len, replies))
    ref = padded(prompts, replies)
    adv, old, ref_logp = sample_values(n, ref.response_mask.shape[1])
    put = lambda x: jax.device_put(x, parallel.batch_sharding(mesh, x.ndim))  # noqa: E731
    batch = {"tokens": ref.tokens, "attention_mask": ref.attention_mask, "response_mask": ref.response_mask,
             "advantages": adv, "old_logp": old, "ref_logp": ref_logp}
    s = settings(micro_padded, loss_agg=loss_agg)
    new_padded, _, m_padded = steps.grpo_update(jax.tree.map(jnp.copy, p0), steps.init_opt_state(p0),
                                                {k: put(v) for k, v in batch.items()}, ref.prompt_width, s)
    packed = packing.pack_groups(prompts, replies, budget=budget, rows_multiple=micro_rows,
                                 reply_width=ref.response_mask.shape[1])
    pb = packed_batch(packed)
    pb.update(advantages=packed.per_slot(adv), old_logp=packed.per_slot(old), ref_logp=packed.per_slot(ref_logp))
    s_packed = dataclasses.replace(s, micro_batch_size=micro_rows)
    new_packed, _, m_packed = steps.grpo_update_packed(jax.tree.map(jnp.copy, p0), steps.init_opt_state(p0),
                                                       {k: put(v) for k, v in pb.items()}, s_packed)
    return (p0, new_padded, m_padded), (new_packed, m_packed), packed


def max_rel_diff(a, b) -> float:
    """max |a - b| / max |b| over every leaf of two trees."""
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / max(np.max(np.abs(np.asarray(y))), 1e-30))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
