"""The jitted, sharded training computations: the optimizer, the log-prob pass, and the update steps (GRPO and
supervised), each with gradient accumulation over micro-batches and every input/output sharding declared.

Batches are in the prefix-shared packed layout (`packing.pack_groups`): arrays per row, [rows, L] and [rows, S, R]
reply slots. A mini-batch of M rows is split into M / m micro-batches of m rows (`train.micro_batch_rows`; row j
of micro-batch i is row j*n + i, so each micro-batch spreads over all devices); their gradients are summed with
the loss normalised by the whole mini-batch's denominator, so the update equals one pass over the mini-batch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from tooln1_jax import parallel
from tooln1_jax.config import GRPOConfig, OptimConfig
from tooln1_jax.models import lora
from tooln1_jax.models.qwen2 import Qwen2Config
from tooln1_jax.train import grpo
from tooln1_jax.train.sequences import packed_logprobs

PACKED_KEYS = ("tokens", "positions", "segment_ids", "prefix_ids", "predict", "targets")
SCHEDULES = ("constant", "cosine")  # optim.schedule


def make_optimizer(cfg: OptimConfig, total_updates: int,
                   token_ids: Sequence[int] = ()) -> optax.GradientTransformation:
    """AdamW with global-norm clipping; constant or warmup + cosine learning rate. The embedding (and untied head)
    rows of `token_ids` train at `cfg.token_rows_lr` (their updates scaled by token_rows_lr / lr)."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    if cfg.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup_steps, max(total_updates, cfg.warmup_steps + 1))
    elif cfg.warmup_steps:
        lr = optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps),
                                   optax.constant_schedule(cfg.lr)], [cfg.warmup_steps])
    else:
        lr = cfg.lr
    adamw = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    rows = [scale_token_rows(token_ids, cfg.token_rows_lr / cfg.lr)] if token_ids and cfg.token_rows_lr else []
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw, *rows)


def scale_token_rows(token_ids: Sequence[int], factor: float) -> optax.GradientTransformation:
    """Multiplies the updates of the token embedding rows `token_ids` (and the untied head's columns) by `factor`."""
    ids = jnp.asarray(sorted(set(token_ids)), jnp.int32)

    def update(updates, state, params=None):
        embedding = updates["model"]["embed_tokens"]["embedding"].at[ids].multiply(factor)
        updates = {**updates, "model": {**updates["model"], "embed_tokens": {"embedding": embedding}}}
        if "lm_head" in updates:
            updates["lm_head"] = {"kernel": updates["lm_head"]["kernel"].at[:, ids].multiply(factor)}
        return updates, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _split_micro(x: jax.Array, micro: int, sharding: NamedSharding | None) -> jax.Array:
    n = x.shape[0] // micro
    y = x.reshape(micro, n, *x.shape[1:]).swapaxes(0, 1)  # [n, micro, ...]: micro-batch i = rows i, i+n, ...
    if sharding is not None:
        spec = jax.sharding.PartitionSpec(None, *sharding.spec)
        y = jax.lax.with_sharding_constraint(y, NamedSharding(sharding.mesh, spec))
    return y


def _accumulate(loss_fn, params, batch: dict, micro: int, mesh: Mesh):
    """Sum of gradients of the trainable parameters (`lora.partition`) and of metrics over micro-batches of `batch`
    (loss_fn(params, micro_batch) returns (loss, metrics))."""
    micro_batches = {k: _split_micro(v, micro, parallel.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
    trainable, frozen = lora.partition(params)
    grad_fn = jax.value_and_grad(lambda t, mb: loss_fn(lora.combine(t, frozen), mb), has_aux=True)

    def body(grads, mb):
        with parallel.activation_sharding(mesh):  # batch over (data, fsdp): FSDP gathers weights, not activations
            (_, metrics), g = grad_fn(trainable, mb)
        return jax.tree.map(jnp.add, grads, g), metrics

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable)
    return jax.lax.scan(body, zeros, micro_batches)


def _token_weighted(metrics: dict, summed: tuple[str, ...]) -> dict:
    """Per-micro-batch metrics [n] -> scalars: `summed` keys add up, the rest are token-weighted means."""
    tokens = metrics["num_tokens"]
    return {key: jnp.sum(values) if key in summed or key == "num_tokens"
            else jnp.sum(values * tokens) / jnp.maximum(jnp.sum(tokens), 1.0) for key, values in metrics.items()}


def _update(loss_fn, summed: tuple[str, ...], micro: int, optimizer, mesh: Mesh, params, opt_state, batch: dict):
    """One optimizer step on the trainable parameters with the gradients summed over micro-batches (`_accumulate`)
    -> (params, opt_state, metrics: `_token_weighted` by `summed`, plus the gradients' global norm)."""
    grads, metrics = _accumulate(loss_fn, params, batch, micro, mesh)
    trainable, frozen = lora.partition(params)
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    params, grad_norm = lora.combine(optax.apply_updates(trainable, updates), frozen), optax.global_norm(grads)
    return params, opt_state, {**_token_weighted(metrics, summed), "grad_norm": grad_norm}


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
    temperature: float
    max_len: int  # Dr.GRPO's constant (the reply cap)
    micro_batch_size: int  # packed rows per forward/backward pass (`train.micro_batch_rows`)
    grpo: GRPOConfig


def _micro_denominator(agg: str, mini_batch_den: jax.Array, micro_mask: jax.Array, n_micro) -> jax.Array:
    """The denominator of one micro-batch's loss: the mini-batch's (the update is one pass over the mini-batch),
    or for "token-mean-per-micro" (verl 0.2) the micro-batch's own token count times the number of micro-batches."""
    if agg != grpo.PER_MICRO:
        return mini_batch_den
    return jnp.maximum(grpo.loss_denominator(micro_mask, "token-mean"), 1.0) * n_micro


def _flat(x: jax.Array) -> jax.Array:
    """[rows, S, R] slots -> [rows * S, R] (the [batch, time] of grpo's functions); [rows, S] -> [rows * S]."""
    return x.reshape(-1, x.shape[-1]) if x.ndim == 3 else x.reshape(-1)


def _grpo_update(config: Qwen2Config, settings: GRPOSettings, optimizer, mesh: Mesh, log_entropy: bool,
                 params, opt_state, batch: dict):
    """The clipped GRPO loss (`grpo.policy_loss`) on a packed mini-batch. Without "old_logp" in the batch (a step's
    first mini-batch: the sampling policy is the current one) the old log-probs are this forward's own, stop-gradient.
    `log_entropy` adds "entropy_sum" (the current policy's entropy summed over reply tokens, no gradient)."""
    g = settings.grpo
    den = jnp.maximum(grpo.loss_denominator(_flat(batch["response_mask"]), g.loss_agg), 1.0)
    # micro-batches that hold reply tokens: the rows that pad a batch to its shape bucket may fill whole ones
    micro_masks = _split_micro(batch["response_mask"], settings.micro_batch_size, None)
    n_micro = jnp.maximum(jnp.sum(jnp.any(micro_masks > 0, axis=(1, 2, 3))), 1)
    with_entropy = g.entropy_coef != 0.0 or log_entropy

    def loss_fn(p, mb):
        logp, entropy = packed_logprobs(config, p, mb, temperature=settings.temperature, with_entropy=with_entropy)
        logp, entropy, mask = _flat(logp), _flat(entropy), _flat(mb["response_mask"])
        old = _flat(mb["old_logp"]) if "old_logp" in mb else jax.lax.stop_gradient(logp)
        loss, metrics = grpo.policy_loss(
            logp, old, _flat(mb["ref_logp"]) if g.beta > 0 else None, _flat(mb["advantages"]), mask,
            clip_eps=g.epsilon, clip_eps_high=g.epsilon_high, dual_clip=g.dual_clip, kl_coef=g.beta,
            kl_type=g.kl_type, agg=g.loss_agg, entropy=entropy if g.entropy_coef != 0.0 else None,
            entropy_coef=g.entropy_coef, max_len=settings.max_len,
            loss_denominator=_micro_denominator(g.loss_agg, den, mask, n_micro))
        if log_entropy:
            metrics["entropy_sum"] = jnp.sum(jnp.where(mask > 0, jax.lax.stop_gradient(entropy), 0.0))
        return loss, metrics

    summed = ("loss", "pg_loss", "kl", "entropy", "entropy_sum")
    return _update(loss_fn, summed, settings.micro_batch_size, optimizer, mesh, params, opt_state, batch)


def _sft_update(config: Qwen2Config, micro_rows: int, optimizer, mesh: Mesh, params, opt_state, batch: dict):
    """Masked next-token cross-entropy on the reply tokens (token mean over the mini-batch) of packed examples
    (groups of one reply)."""
    den = jnp.maximum(jnp.sum(batch["response_mask"]), 1.0)

    def loss_fn(p, mb):
        logp = packed_logprobs(config, p, mb)[0]
        mask = mb["response_mask"]
        nll = -jnp.sum(jnp.where(mask > 0, logp, 0.0))
        num_tokens = jnp.sum(mask)
        target_prob = jnp.sum(jnp.where(mask > 0, jnp.exp(logp), 0.0)) / jnp.maximum(num_tokens, 1.0)
        return nll / den, {"loss": nll / den, "num_tokens": num_tokens, "target_prob": target_prob}

    return _update(loss_fn, ("loss",), micro_rows, optimizer, mesh, params, opt_state, batch)


def _logprobs(config: Qwen2Config, temperature: float, with_entropy: bool, micro_rows: int, mesh: Mesh,
              params, batch: dict):
    """Reply log-probs (and entropies) [rows, S, R] of a packed batch, `micro_rows` rows at a time."""
    def one(mb):
        with parallel.activation_sharding(mesh):
            return packed_logprobs(config, params, mb, temperature=temperature, with_entropy=with_entropy)

    rows = batch["tokens"].shape[0]
    if rows <= micro_rows:
        return one(batch)
    split = {k: _split_micro(v, micro_rows, parallel.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
    logp, entropy = jax.lax.map(one, split)  # [n, micro, S, R]
    merge = lambda x: x.swapaxes(0, 1).reshape(rows, *x.shape[2:])  # noqa: E731  inverse of _split_micro
    return merge(logp), merge(entropy)


class StepFunctions:
    """Jitted log-prob pass and update steps of one run (one program per batch shape, shardings declared). The
    optimizer holds state for the trainable parameters only: all of them, or the LoRA adapters (`lora.partition`)."""

    def __init__(self, config: Qwen2Config, optimizer: optax.GradientTransformation, mesh: Mesh, params):
        self.config, self.optimizer, self.mesh = config, optimizer, mesh
        self.param_shardings = jax.tree.map(lambda x: x.sharding, params)
        self.trainable_shardings = lora.partition(self.param_shardings)[0]
        abstract_state = jax.eval_shape(optimizer.init, lora.partition(params)[0])
        self.opt_shardings = optax.tree_map_params(optimizer, lambda _, s: s, abstract_state, self.trainable_shardings,
                                                   transform_non_params=lambda _: parallel.replicated(mesh))
        self._programs: dict = {}  # one jitted function per static setting (jit then compiles per shape)

    def init_opt_state(self, params):
        return jax.jit(self.optimizer.init, in_shardings=(self.trainable_shardings,),
                       out_shardings=self.opt_shardings)(lora.partition(params)[0])

    def packed_logprobs(self, params, batch: dict, *, micro_rows: int, temperature: float = 1.0,
                        with_entropy: bool = False):
        """Reply log-probs (and entropies) of a packed batch (a dict with at least PACKED_KEYS): slots
        [rows, S, R], `micro_rows` rows at a time."""
        program = self.packed_logprob_program(float(temperature), with_entropy, micro_rows)
        return program(params, {k: batch[k] for k in PACKED_KEYS})

    def packed_logprob_program(self, temperature: float, with_entropy: bool, micro_rows: int):
        """The jitted packed log-prob pass: (params, {PACKED_KEYS: arrays}) -> (logp, entropy) [rows, S, R]."""
        key = ("packed_logprobs", temperature, with_entropy, micro_rows)
        if key not in self._programs:
            shardings = {k: parallel.batch_sharding(self.mesh, 2 if k in PACKED_KEYS[:4] else 3) for k in PACKED_KEYS}
            slots = parallel.batch_sharding(self.mesh, 3)
            fn = functools.partial(_logprobs, self.config, temperature, with_entropy, micro_rows, self.mesh)
            self._programs[key] = jax.jit(fn, in_shardings=(self.param_shardings, shardings),
                                          out_shardings=(slots, slots))
        return self._programs[key]

    def grpo_update_packed(self, params, opt_state, batch: dict, settings: GRPOSettings, *,
                           log_entropy: bool = False):
        """One optimizer step on a packed mini-batch."""
        return self.grpo_packed_program(batch, settings, log_entropy)(params, opt_state, batch)

    def grpo_packed_program(self, batch: dict, settings: GRPOSettings, log_entropy: bool = False):
        """The jitted packed GRPO update for batches with these keys (arrays or ShapeDtypeStructs)."""
        fn = functools.partial(_grpo_update, self.config, settings, self.optimizer, self.mesh, log_entropy)
        return self._update_program(("grpo", settings, log_entropy), fn, batch)

    def sft_update_packed(self, params, opt_state, batch: dict, micro_rows: int):
        return self.sft_packed_program(batch, micro_rows)(params, opt_state, batch)

    def sft_packed_program(self, batch: dict, micro_rows: int):
        """The jitted packed supervised update for batches with these keys (arrays or ShapeDtypeStructs)."""
        fn = functools.partial(_sft_update, self.config, micro_rows, self.optimizer, self.mesh)
        return self._update_program(("sft", micro_rows), fn, batch)

    def _update_program(self, setting: tuple, fn, batch: dict):
        """The jitted update `fn`(params, opt_state, batch), one per `setting` and batch keys and ranks."""
        batch_keys = tuple(sorted((k, len(v.shape)) for k, v in batch.items()))
        key = (*setting, batch_keys)
        if key not in self._programs:
            batch_sh = {k: parallel.batch_sharding(self.mesh, ndim) for k, ndim in batch_keys}
            replicated = parallel.replicated(self.mesh)
            self._programs[key] = jax.jit(fn, in_shardings=(self.param_shardings, self.opt_shardings, batch_sh),
                                          out_shardings=(self.param_shardings, self.opt_shardings, replicated),
                                          donate_argnums=(0, 1))
        return self._programs[key]
