"""Shared by the packed-layout tests in-process and in their 8-device subprocess: one GRPO update in the
prefix-shared packed layout (`StepFunctions`), and the same SGD step computed in the padded layout
(`padded_reference`), on the same groups."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tooln1_jax import parallel
from tooln1_jax.config import GRPOConfig
from tooln1_jax.models import qwen2
import padded_reference
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


def padded_logprobs(p, prompts, replies):
    """The reference's log-probs [replies, R] and reply mask of the groups."""
    batch = padded_reference.pad_groups(prompts, replies)
    logp, _ = padded_reference.response_logprobs(CONFIG, p, batch)
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


def packed_update(mesh, prompts, replies, *, budget: int, micro_rows: int, loss_agg: str = "token-mean"):
    """One SGD step of `StepFunctions.grpo_update_packed` on the groups, `micro_rows` packed rows a pass, from
    `params()` with `sample_values`: (p0, new params, metrics, the packed layout)."""
    p0 = jax.device_put(params(), parallel.shardings(*qwen2.abstract_params(CONFIG), mesh))
    steps = StepFunctions(CONFIG, optax.sgd(LR), mesh, p0)
    width = padded_reference.pad_groups(prompts, replies).response_mask.shape[1]
    adv, old, ref_logp = sample_values(sum(map(len, replies)), width)
    packed = packing.pack_groups(prompts, replies, budget=budget, rows_multiple=micro_rows, reply_width=width)
    batch = packed_batch(packed)
    batch.update(advantages=packed.per_slot(adv), old_logp=packed.per_slot(old), ref_logp=packed.per_slot(ref_logp))
    put = lambda x: jax.device_put(x, parallel.batch_sharding(mesh, x.ndim))  # noqa: E731
    new, _, metrics = steps.grpo_update_packed(jax.tree.map(jnp.copy, p0), steps.init_opt_state(p0),
                                               {k: put(v) for k, v in batch.items()}, settings(micro_rows,
                                                                                              loss_agg=loss_agg))
    return p0, new, metrics, packed


def reference_update(prompts, replies, *, loss_agg: str = "token-mean"):
    """`packed_update`'s SGD step in the padded layout, one pass over the whole batch: (new params, metrics)."""
    batch = padded_reference.pad_groups(prompts, replies)
    adv, old, ref_logp = sample_values(sum(map(len, replies)), batch.response_mask.shape[1])
    s = settings(1, loss_agg=loss_agg)
    loss = functools.partial(padded_reference.grpo_loss, CONFIG, batch=batch, advantages=adv, old_logp=old,
                             ref_logp=ref_logp, g=s.grpo, temperature=s.temperature, max_len=s.max_len)
    p0 = params()
    (_, metrics), grads = jax.value_and_grad(loss, has_aux=True)(p0)
    return jax.tree.map(lambda p, g: p - LR * g, p0, grads), metrics


def max_rel_diff(a, b) -> float:
    """max |a - b| / max |b| over every leaf of two trees."""
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / max(np.max(np.abs(np.asarray(y))), 1e-30))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
