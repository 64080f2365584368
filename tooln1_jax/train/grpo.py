"""GRPO math as pure jax functions: group advantages, KL estimators, loss aggregation, the clipped policy loss.

Arrays are [batch, time] (B = prompts x samples, T = response tokens) with a response `mask` (1 = a real token);
advantages are one number per sequence [B]. Everything that sums or exponentiates runs in at least float32
(bfloat16 inputs are promoted; float64 inputs stay float64, which the finite-difference tests use).
The formulas follow verl `trainer/ppo/core_algos.py` (`kl_penalty`, `agg_loss`, `compute_policy_loss_vanilla`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array

# ---------------------------------------------------------------------------------------------------------------
# Advantages


def group_advantages(rewards: Array, group_size: int, eps: float = 1e-6, *, scale_by_std: bool = True) -> Array:
    """GRPO advantages [B] from rewards [B] whose G = `group_size` samples per prompt are contiguous.

    A_i = (r_i - mean(group)) / (std(group, ddof=1) + eps); with `scale_by_std=False` (Dr.GRPO, TRL
    `scale_rewards=False`) just r_i - mean(group). A group whose rewards are all equal gets exactly 0, even when
    float rounding would leave a tiny residual that the 1e-6 denominator blows up.
    """
    groups = _groups("group_advantages", rewards, group_size)
    centred = groups - groups.mean(axis=1, keepdims=True)
    if scale_by_std:
        centred = centred / (groups.std(axis=1, ddof=1, keepdims=True) + eps)
    all_equal = groups.max(axis=1, keepdims=True) == groups.min(axis=1, keepdims=True)
    return jnp.where(all_equal, 0.0, centred).reshape(-1)


def group_reward_metrics(rewards: Array, group_size: int) -> dict[str, Array]:
    """Reward statistics of one rollout batch (float32 scalars).

    `reward/all_equal_group_frac` is the fraction of groups whose G rewards are all equal: their advantages are 0,
    so their samples teach nothing (wasted rollouts).
    """
    groups = _groups("group_reward_metrics", rewards, group_size)
    all_equal = groups.max(axis=1) == groups.min(axis=1)
    return {
        "reward/mean": groups.mean().astype(jnp.float32),
        "reward/std": groups.std().astype(jnp.float32),
        "reward/all_equal_group_frac": all_equal.mean().astype(jnp.float32),
    }


def _groups(caller: str, rewards: Array, group_size: int) -> Array:
    """rewards [B] -> [B / G, G], checking that the batch is made of whole groups of G >= 2."""
    r = _as_float(rewards)
    if r.ndim != 1:
        raise ValueError(f"{caller}: rewards must be 1-D [batch], got shape {r.shape}")
    if group_size < 2:
        raise ValueError(f"{caller}: group_size must be >= 2 (the group std uses ddof=1), got {group_size}")
    if r.shape[0] % group_size:
        raise ValueError(f"{caller}: batch of {r.shape[0]} rewards is not a whole number of groups of {group_size}")
    return r.reshape(-1, group_size)


# ---------------------------------------------------------------------------------------------------------------
# KL estimators of KL(pi || pi_ref) per token, from the log-probs of the sampled tokens (J. Schulman,
# "Approximating KL divergence", 2020), registered by name in KL_ESTIMATORS; "k1"/"k2"/"k3" are verl's aliases.


def _kl_k1(logp: Array, ref_logp: Array) -> Array:
    """k1 = logp - ref: unbiased, high variance, can be negative."""
    return logp - ref_logp


def _kl_abs(logp: Array, ref_logp: Array) -> Array:
    """|logp - ref|."""
    return jnp.abs(logp - ref_logp)


def _kl_k2(logp: Array, ref_logp: Array) -> Array:
    """k2 = 0.5 (logp - ref)^2: biased, low variance, >= 0."""
    return 0.5 * jnp.square(logp - ref_logp)


def _kl_k3(logp: Array, ref_logp: Array) -> Array:
    """k3 = exp(ref - logp) - (ref - logp) - 1: unbiased, low variance, >= 0.

    As in verl, the log-ratio is clamped to [-20, 20] before exp and the result to [-10, 10].
    """
    log_ratio = jnp.clip(ref_logp - logp, -20.0, 20.0)
    return jnp.clip(jnp.exp(log_ratio) - log_ratio - 1.0, -10.0, 10.0)


KL_ESTIMATORS: dict[str, Callable[[Array, Array], Array]] = {
    "kl": _kl_k1, "k1": _kl_k1, "abs": _kl_abs, "mse": _kl_k2, "k2": _kl_k2, "low_var_kl": _kl_k3, "k3": _kl_k3}


def kl_penalty(logp: Array, ref_logp: Array, kl_type: str = "low_var_kl") -> Array:
    """Per-token KL estimate [B, T] of the policy from the reference policy; `kl_type` names a KL_ESTIMATORS entry."""
    if kl_type not in KL_ESTIMATORS:
        raise ValueError(f"kl_penalty: unknown kl_type {kl_type!r}; known: {sorted(KL_ESTIMATORS)}")
    logp, ref_logp = _as_float(logp), _as_float(ref_logp)
    _check_same_shape("kl_penalty", logp=logp, ref_logp=ref_logp)
    return KL_ESTIMATORS[kl_type](logp, ref_logp)


# ---------------------------------------------------------------------------------------------------------------
# Aggregation: every loss goes through aggregate_parts, so micro-batches can be summed exactly.

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm", "token-mean-per-micro")
PER_MICRO = "token-mean-per-micro"  # verl 0.2: each micro-batch's token mean, averaged over micro-batches


def aggregate_parts(loss_mat: Array, mask: Array, agg: str = "token-mean", *, max_len: int | None = None
                    ) -> tuple[Array, Array]:
    """Split the aggregate of a per-token loss [B, T] into (numerator, denominator) with aggregate = num / den.

    Both parts are sums over rows, so for micro-batches of one mini-batch sum(nums) / sum(dens) is exactly the
    aggregate of the whole mini-batch (tunix `WeightedMetric`). In gradient accumulation, compute the mini-batch
    denominator first (`loss_denominator`, it does not depend on the parameters), divide each micro-batch's
    numerator by it and sum the gradients. A "sequence" is a row with at least one unmasked token, so all-padding
    rows (batch-size buckets) count nowhere.

    - "token-mean": num = sum of the loss over all tokens, den = number of tokens. Every token weighs the same.
    - "seq-mean-token-mean": num = sum over sequences of (that sequence's token mean), den = number of sequences.
      Every sequence weighs the same, so tokens of short replies weigh more.
    - "token-mean-per-micro" (verl 0.2, the Tool-N1 release's): here the same parts as "token-mean"; the update
      (`train/step.py`) gives each micro-batch its own token count times the number of micro-batches as the
      denominator, so the mini-batch loss is the mean over micro-batches of their token means: tokens of a
      micro-batch with fewer tokens weigh more, and the result depends on how the mini-batch is cut.
    - "seq-mean-token-sum-norm" (Dr.GRPO): num = sum of the loss over all tokens / max_len, den = number of
      sequences; i.e. mean over sequences of (token sum / max_len). `max_len` is a constant, the configured reply
      cap (Dr.GRPO's MAX_TOKENS), so a token's weight does not depend on its reply's length; it defaults to T
      (mask.shape[-1]), which is only right when every micro-batch is padded to the cap. verl divides the token sum
      by max_len but not by the number of sequences; the Dr.GRPO paper and this code take the mean.
    """
    loss_mat = _as_float(loss_mat)
    _check_same_shape("aggregate", loss_mat=loss_mat, mask=mask)
    valid = jnp.asarray(mask) > 0
    # where, not multiply: padded entries may hold inf/nan (0 * inf = nan)
    token_sum = jnp.where(valid, loss_mat, 0.0).sum(axis=-1)  # [B]
    token_count = valid.sum(axis=-1).astype(loss_mat.dtype)  # [B]
    num_sequences = (token_count > 0).sum().astype(loss_mat.dtype)
    if agg in ("token-mean", PER_MICRO):
        return token_sum.sum(), token_count.sum()
    if agg == "seq-mean-token-mean":
        return (token_sum / jnp.maximum(token_count, 1.0)).sum(), num_sequences
    if agg == "seq-mean-token-sum-norm":
        length = loss_mat.shape[-1] if max_len is None else max_len
        if length <= 0:
            raise ValueError(f"aggregate: max_len must be > 0, got {length}")
        return token_sum.sum() / length, num_sequences
    raise ValueError(f"aggregate: unknown agg {agg!r}; known: {list(AGG_MODES)}")


def loss_denominator(mask: Array, agg: str = "token-mean") -> Array:
    """The denominator of `aggregate_parts` for this mask (tokens or sequences); pass a whole mini-batch's to
    `policy_loss(..., loss_denominator=...)` of each of its micro-batches."""
    return aggregate_parts(jnp.zeros(jnp.shape(mask), jnp.float32), mask, agg)[1]


def aggregate(loss_mat: Array, mask: Array, agg: str = "token-mean", *, max_len: int | None = None) -> Array:
    """Reduce a per-token loss [B, T] to a scalar by `agg` (see `aggregate_parts`); 0 when the mask is empty."""
    num, den = aggregate_parts(loss_mat, mask, agg, max_len=max_len)
    return num / jnp.maximum(den, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# Policy loss


def policy_loss(
    logp: Array,
    old_logp: Array,
    ref_logp: Array | None,
    advantages: Array,
    mask: Array,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    kl_coef: float = 1e-3,
    kl_type: str = "low_var_kl",
    agg: str = "token-mean",
    entropy: Array | None = None,
    entropy_coef: float = 0.0,
    max_len: int | None = None,
    loss_denominator: Array | float | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Clipped GRPO/PPO loss of log-probs [B, T] under the current, rollout ("old") and reference policies.

    Per token, with rho = exp(logp - old_logp) (log-ratio clamped to [-20, 20] as in verl) and A the sequence's
    advantage:  pg = max(-A rho, -A clip(rho, 1 - clip_eps, 1 + clip_eps_high)); with `dual_clip` = c > 1 and A < 0,
    pg = min(pg, -A c) (bounds the loss of a very unlikely negative sample). Then
        loss = agg(pg) + kl_coef * agg(kl_penalty(logp, ref_logp, kl_type)) - entropy_coef * agg(entropy)
    (KL skipped when kl_coef == 0 or ref_logp is None; the entropy term needs the per-token `entropy` [B, T]).
    `loss_denominator` (default: this batch's own, see `aggregate_parts`) lets micro-batches share one mini-batch
    denominator so that their losses and gradients sum to the mini-batch's; `max_len` is Dr.GRPO's constant.

    Metrics (float32 scalars): "loss", "pg_loss", "kl" (when ref_logp is given) and "entropy" (when given) are
    aggregated like the loss, so loss = pg_loss + kl_coef * kl - entropy_coef * entropy and each sums over
    micro-batches; "clip_frac" (tokens where the clipped term is active), "dual_clip_frac" (with dual_clip),
    "approx_kl" (k1 estimate of KL(old || current), mean of old_logp - logp) and "ratio_mean" are means over this
    call's tokens, "num_tokens" their count (to weight them across micro-batches).
    Masked positions never contribute to the loss or its gradient, whatever they hold.
    """
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    if not 0.0 < clip_eps < 1.0 or eps_high <= 0.0:
        raise ValueError(f"policy_loss: need 0 < clip_eps < 1 and clip_eps_high > 0, got {clip_eps}, {eps_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"policy_loss: dual_clip must be > 1, got {dual_clip}")
    if entropy_coef != 0.0 and entropy is None:
        raise ValueError("policy_loss: entropy_coef != 0 needs the per-token entropy")
    if kl_type not in KL_ESTIMATORS:
        raise ValueError(f"policy_loss: unknown kl_type {kl_type!r}; known: {sorted(KL_ESTIMATORS)}")
    if agg not in AGG_MODES:
        raise ValueError(f"policy_loss: unknown agg {agg!r}; known: {list(AGG_MODES)}")

    logp, old_logp = _as_float(logp), _as_float(old_logp)
    arrays = {"logp": logp, "old_logp": old_logp, "mask": mask}
    if ref_logp is not None:
        arrays["ref_logp"] = ref_logp = _as_float(ref_logp)
    if entropy is not None:
        arrays["entropy"] = entropy = _as_float(entropy)
    _check_same_shape("policy_loss", **arrays)
    if logp.ndim != 2:
        raise ValueError(f"policy_loss: logp must be [batch, time], got shape {logp.shape}")
    advantages = _as_float(advantages)
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"policy_loss: advantages must be [batch] = {logp.shape[:1]}, got {advantages.shape}")

    valid = jnp.asarray(mask) > 0
    # Zero padded positions first so garbage there (e.g. -inf log-probs) reaches neither the loss nor the gradient.
    logp, old_logp = jnp.where(valid, logp, 0.0), jnp.where(valid, old_logp, 0.0)
    adv = advantages[:, None]  # [B, 1] broadcast over tokens

    log_ratio = jnp.clip(logp - old_logp, -20.0, 20.0)
    ratio = jnp.exp(log_ratio)
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + eps_high)
    pg = jnp.maximum(pg_unclipped, pg_clipped)
    clipped = pg_clipped > pg_unclipped
    if dual_clip is not None:
        pg_dual = -adv * dual_clip
        dual_clipped = (adv < 0) & (pg > pg_dual)
        pg = jnp.where(adv < 0, jnp.minimum(pg, pg_dual), pg)

    def agg_fn(x):
        num, den = aggregate_parts(x, valid, agg, max_len=max_len)
        return num / (jnp.maximum(den, 1.0) if loss_denominator is None else loss_denominator)

    def token_mean(x):
        return aggregate(x, valid, "token-mean").astype(jnp.float32)

    loss = agg_fn(pg)
    metrics = {"pg_loss": loss}
    if ref_logp is not None:
        kl = agg_fn(kl_penalty(logp, jnp.where(valid, ref_logp, 0.0), kl_type))
        metrics["kl"] = kl
        if kl_coef != 0.0:
            loss = loss + kl_coef * kl
    if entropy is not None:
        ent = agg_fn(jnp.where(valid, entropy, 0.0))
        metrics["entropy"] = ent
        loss = loss - entropy_coef * ent
    metrics = {name: value.astype(jnp.float32) for name, value in metrics.items()}
    metrics["loss"] = loss.astype(jnp.float32)
    metrics["clip_frac"] = token_mean(clipped)
    if dual_clip is not None:
        metrics["dual_clip_frac"] = token_mean(dual_clipped)
    metrics["approx_kl"] = token_mean(-log_ratio)
    metrics["ratio_mean"] = token_mean(ratio)
    metrics["num_tokens"] = valid.sum().astype(jnp.float32)
    return loss, metrics


# ---------------------------------------------------------------------------------------------------------------


def _as_float(x) -> Array:
    """x as a float array of at least float32 precision (bf16 -> f32, f64 stays f64, ints/bools -> f32)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x.astype(jnp.float32)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_same_shape(where: str, **arrays) -> None:
    shapes = {name: tuple(jnp.shape(a)) for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{where}: arrays must have the same shape, got {shapes}")
