"""GRPO math against independent numpy references: advantages, KL estimators, aggregation, the clipped loss and
its gradient (central differences of a float64 numpy re-implementation, plus the analytic expectation)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tooln1_jax.train import grpo

# ---------------------------------------------------------------------------------------------------------------
# numpy references, written per sequence / per token and independently of the jax code


def np_group_advantages(rewards, group_size, eps=1e-6):
    out = []
    for start in range(0, len(rewards), group_size):
        group = np.asarray(rewards[start:start + group_size], np.float64)
        out.extend((group - group.mean()) / (group.std(ddof=1) + eps))
    return np.array(out)


def np_kl(logp, ref, kl_type):
    logp, ref = np.asarray(logp, np.float64), np.asarray(ref, np.float64)
    if kl_type in ("kl", "k1"):
        return logp - ref
    if kl_type == "abs":
        return np.abs(logp - ref)
    if kl_type in ("mse", "k2"):
        return 0.5 * (logp - ref) ** 2
    d = np.clip(ref - logp, -20, 20)
    return np.clip(np.exp(d) - d - 1, -10, 10)


def np_aggregate(loss, mask, agg, max_len=None):
    rows = [(loss[i][mask[i] > 0]) for i in range(len(loss)) if mask[i].sum() > 0]
    if agg in ("token-mean", "token-mean-per-micro"):  # one batch: per-micro weighting is the update's (step.py)
        return np.concatenate(rows).sum() / sum(len(r) for r in rows)
    if agg == "seq-mean-token-mean":
        return np.mean([r.mean() for r in rows])
    length = loss.shape[1] if max_len is None else max_len
    return np.mean([r.sum() / length for r in rows])


def np_token_loss(logp, old_logp, adv, eps_low=0.2, eps_high=0.2, dual_clip=None):
    """-(PPO surrogate objective) of one token, written as the paper's min of objectives."""
    rho = np.exp(logp - old_logp)
    objective = min(rho * adv, np.clip(rho, 1 - eps_low, 1 + eps_high) * adv)
    if dual_clip is not None and adv < 0:
        objective = max(objective, dual_clip * adv)
    return -objective


def np_policy_loss(logp, old_logp, ref_logp, adv, mask, *, kl_coef=0.0, kl_type="low_var_kl", agg="token-mean",
                   entropy=None, entropy_coef=0.0, **clip):
    logp = np.asarray(logp, np.float64)
    per_token = np.zeros_like(logp)
    for i in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if mask[i, t]:
                per_token[i, t] = np_token_loss(logp[i, t], old_logp[i, t], adv[i], **clip)
    if kl_coef:
        per_token = per_token + kl_coef * np_kl(logp, ref_logp, kl_type)
    if entropy_coef:
        per_token = per_token - entropy_coef * np.asarray(entropy, np.float64)
    return np_aggregate(per_token, mask, agg)


def central_differences(f, x, h=1e-6):
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        grad[idx] = (f(up) - f(down)) / (2 * h)
    return grad


def ragged_mask(lengths, width):
    return (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# advantages


def test_group_advantages_match_numpy_ddof1():
    rewards = np.random.default_rng(0).uniform(0, 1, size=20).astype(np.float32)
    got = np.asarray(grpo.group_advantages(rewards, 5))
    np.testing.assert_allclose(got, np_group_advantages(rewards, 5), rtol=1e-5, atol=1e-6)
    # the standardised group: mean 0 and (up to eps) unbiased std 1
    groups = got.reshape(4, 5)
    np.testing.assert_allclose(groups.mean(1), 0, atol=1e-6)
    np.testing.assert_allclose(groups.std(1, ddof=1), 1, atol=1e-4)


def test_binary_group_advantages_known_values():
    # one success out of 5: mean 0.2, std(ddof=1) = sqrt(0.2) -> 0.8/sqrt(0.2), -0.2/sqrt(0.2)
    got = np.asarray(grpo.group_advantages(np.array([1, 0, 0, 0, 0], np.float32), 5, eps=0.0))
    np.testing.assert_allclose(got, [0.8 / np.sqrt(0.2)] + [-0.2 / np.sqrt(0.2)] * 4, rtol=1e-6)


def test_all_equal_groups_have_exactly_zero_advantage():
    # 0.45 and 0.9 are values where float32 group mean/std leave rounding residue that eps=1e-6 would blow up
    rewards = np.array([1] * 5 + [0] * 5 + [0.45] * 5 + [0.9] * 5 + [0, 1, 1, 0, 1], np.float32)
    got = np.asarray(grpo.group_advantages(rewards, 5))
    assert np.all(got[:20] == 0.0)
    assert np.all(got[20:] != 0.0)
    metrics = grpo.group_reward_metrics(rewards, 5)
    assert float(metrics["reward/all_equal_group_frac"]) == pytest.approx(4 / 5)
    assert float(metrics["reward/mean"]) == pytest.approx(rewards.mean(), rel=1e-6)


def test_unscaled_advantages_are_centred_rewards():
    rewards = np.array([3.0, 1.0, 2.0, 0.0], np.float32)
    got = np.asarray(grpo.group_advantages(rewards, 2, scale_by_std=False))
    np.testing.assert_allclose(got, [1.0, -1.0, 1.0, -1.0])


@pytest.mark.parametrize("group_size, n, match", [(1, 4, "group_size must be >= 2"), (3, 10, "not a whole number")])
def test_group_advantages_reject_bad_groups(group_size, n, match):
    with pytest.raises(ValueError, match=match):
        grpo.group_advantages(np.zeros(n, np.float32), group_size)


# ---------------------------------------------------------------------------------------------------------------
# KL estimators


@pytest.mark.parametrize("kl_type", ["kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3"])
def test_kl_estimators_match_their_formulas(kl_type):
    rng = np.random.default_rng(1)
    logp = rng.uniform(-6, 0, size=(4, 9))
    ref = logp + rng.normal(0, 1.5, size=(4, 9))
    ref[0, :4] = logp[0, :4] + np.array([5.0, 30.0, -30.0, -12.0])  # exercise the k3 clamps
    got = np.asarray(grpo.kl_penalty(logp.astype(np.float32), ref.astype(np.float32), kl_type))
    np.testing.assert_allclose(got, np_kl(logp, ref, kl_type), rtol=2e-5, atol=2e-5)


def test_low_var_kl_is_clamped_and_nonnegative():
    logp = np.zeros(4, np.float32)
    ref = np.array([0.0, 5.0, 30.0, -30.0], np.float32)
    got = np.asarray(grpo.kl_penalty(logp, ref, "low_var_kl"))
    np.testing.assert_allclose(got, [0.0, 10.0, 10.0, 10.0])  # exp(5)-6 = 142 -> 10; -30 -> 29 -> 10
    assert float(grpo.kl_penalty(np.float32(0.0), np.float32(-1.0), "low_var_kl")) == pytest.approx(np.exp(-1))


def test_unknown_kl_type_is_an_error():
    with pytest.raises(ValueError, match="unknown kl_type 'k4'"):
        grpo.kl_penalty(np.zeros(2), np.zeros(2), "k4")


# ---------------------------------------------------------------------------------------------------------------
# aggregation

LENGTHS = [3, 0, 7, 1, 5, 8]  # ragged, with one all-padding row


@pytest.mark.parametrize("agg", grpo.AGG_MODES)
def test_aggregate_matches_numpy_on_a_ragged_mask(agg):
    rng = np.random.default_rng(2)
    loss = rng.normal(size=(6, 8)).astype(np.float32)
    mask = ragged_mask(LENGTHS, 8)
    loss_with_garbage = np.where(mask > 0, loss, np.nan).astype(np.float32)  # padding must not leak
    got = float(grpo.aggregate(loss_with_garbage, mask, agg))
    assert got == pytest.approx(np_aggregate(loss.astype(np.float64), mask, agg), rel=1e-5)


def test_dr_grpo_norm_uses_the_given_constant():
    loss = np.ones((2, 4), np.float32)
    mask = ragged_mask([1, 3], 4)
    # sequences sum to 1 and 3; mean over sequences of sum / 16
    assert float(grpo.aggregate(loss, mask, "seq-mean-token-sum-norm", max_len=16)) == pytest.approx(2 / 16)
    assert float(grpo.aggregate(loss, mask, "seq-mean-token-sum-norm")) == pytest.approx(2 / 4)


def test_aggregate_rejects_unknown_mode_and_shape_mismatch():
    with pytest.raises(ValueError, match="unknown agg 'mean'"):
        grpo.aggregate(np.zeros((2, 3)), np.ones((2, 3)), "mean")
    with pytest.raises(ValueError, match="same shape"):
        grpo.aggregate(np.zeros((2, 3)), np.ones((2, 4)))


@pytest.mark.parametrize("agg", grpo.AGG_MODES)
def test_micro_batch_parts_sum_to_the_full_batch_aggregate(agg):
    rng = np.random.default_rng(3)
    loss = rng.normal(size=(6, 8)).astype(np.float32)
    mask = ragged_mask(LENGTHS, 8)
    full = float(grpo.aggregate(loss, mask, agg, max_len=8))
    num = den = 0.0
    for rows in (slice(0, 1), slice(1, 4), slice(4, 6)):  # uneven micro-batches, each padded to its own width
        width = int(mask[rows].sum(1).max()) or 1
        n, d = grpo.aggregate_parts(loss[rows, :width], mask[rows, :width], agg, max_len=8)
        num, den = num + float(n), den + float(d)
    assert num / den == pytest.approx(full, rel=1e-6)
    assert den == float(grpo.loss_denominator(mask, agg))


# ---------------------------------------------------------------------------------------------------------------
# policy loss: values, gradients, metrics

# One token per (advantage sign, ratio region) case; eps = 0.2 so the clip range is [0.8, 1.2].
CASES = [  # (advantage, ratio, expected to be on the flat clipped side)
    (+1.5, 0.5, False),  # A > 0, below the range: the unclipped term is the smaller objective
    (+1.5, 1.05, False),  # inside
    (+1.5, 1.5, True),  # A > 0, above: clipped, flat
    (-0.7, 0.5, True),  # A < 0, below: clipped, flat
    (-0.7, 1.05, False),  # inside
    (-0.7, 1.5, False),  # A < 0, above: unclipped, the gradient keeps pushing logp down
]


def case_batch(cases, dtype=np.float32):
    """Each case is one sequence with one real token plus padding (holding garbage)."""
    rng = np.random.default_rng(4)
    adv = np.array([c[0] for c in cases], dtype)
    old = rng.uniform(-3, -0.5, size=(len(cases), 3)).astype(dtype)
    logp = old.copy()
    logp[:, 0] = old[:, 0] + np.log([c[1] for c in cases])
    logp[:, 1:] = np.nan  # padding garbage must reach neither the loss nor the gradient
    mask = np.zeros((len(cases), 3), np.float32)
    mask[:, 0] = 1
    return logp, old, adv, mask


def jax_grad_wrt_logp(logp, old, adv, mask, **kwargs):
    def loss_fn(lp):
        return grpo.policy_loss(lp, old, None, adv, mask, kl_coef=0.0, **kwargs)[0]

    return np.asarray(jax.grad(loss_fn)(jnp.asarray(logp)))


def numpy_fd_grad_wrt_logp(logp, old, adv, mask, **clip):
    real = logp[:, :1].astype(np.float64)

    def f(x):
        full = np.zeros(logp.shape)
        full[:, :1] = x
        return np_policy_loss(full, old.astype(np.float64), None, adv.astype(np.float64), mask, **clip)

    return central_differences(f, real)


def test_clipped_loss_gradient_matches_central_differences_and_the_analytic_expectation():
    logp, old, adv, mask = case_batch(CASES)
    got = jax_grad_wrt_logp(logp, old, adv, mask)
    assert np.all(np.isfinite(got)) and np.all(got[:, 1:] == 0.0)
    np.testing.assert_allclose(got[:, :1], numpy_fd_grad_wrt_logp(logp, old, adv, mask), rtol=1e-4, atol=1e-7)
    # analytic: d/dlogp of -A*rho/N is -A*rho/N where unclipped, 0 on the flat clipped side
    n = len(CASES)
    for i, (a, rho, flat) in enumerate(CASES):
        expected = 0.0 if flat else -a * rho / n
        assert got[i, 0] == pytest.approx(expected, rel=1e-5, abs=1e-8), CASES[i]
        assert (expected > 0) == (a < 0 and not flat)  # the sign: positive advantages raise logp


def test_clipped_loss_value_matches_numpy():
    logp, old, adv, mask = case_batch(CASES)
    loss, metrics = grpo.policy_loss(logp, old, None, adv, mask, kl_coef=0.0)
    expected = np_policy_loss(np.where(mask > 0, logp, 0), old, None, adv, mask)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["clip_frac"]) == pytest.approx(sum(c[2] for c in CASES) / len(CASES))
    assert float(metrics["ratio_mean"]) == pytest.approx(np.mean([c[1] for c in CASES]), rel=1e-5)
    assert float(metrics["approx_kl"]) == pytest.approx(np.mean([-np.log(c[1]) for c in CASES]), rel=1e-5)


def test_dual_clip_bounds_the_loss_of_negative_advantages():
    cases = [(-0.7, 4.0), (-0.7, 2.0), (+1.5, 4.0)]  # c = 3: only the first is dual-clipped
    logp, old, adv, mask = case_batch([(a, r, None) for a, r in cases])
    got = jax_grad_wrt_logp(logp, old, adv, mask, dual_clip=3.0)
    fd = numpy_fd_grad_wrt_logp(logp, old, adv, mask, dual_clip=3.0)
    np.testing.assert_allclose(got[:, :1], fd, rtol=1e-4, atol=1e-7)
    assert got[0, 0] == 0.0  # dual-clipped: constant -A*c
    assert got[1, 0] == pytest.approx(0.7 * 2.0 / 3, rel=1e-5)  # unclipped A<0 above the range
    assert got[2, 0] == 0.0  # A > 0 above the range: ordinary clip
    without = jax_grad_wrt_logp(logp, old, adv, mask)
    assert without[0, 0] == pytest.approx(0.7 * 4.0 / 3, rel=1e-5)
    loss, metrics = grpo.policy_loss(logp, old, None, adv, mask, kl_coef=0.0, dual_clip=3.0)
    assert float(loss) == pytest.approx((0.7 * 3.0 + 0.7 * 2.0 - 1.5 * 1.2) / 3, rel=1e-5)
    assert float(metrics["dual_clip_frac"]) == pytest.approx(1 / 3)


def test_asymmetric_clip_eps_high():
    cases = [(+1.5, 1.25), (-0.7, 0.75), (+1.5, 1.35)]
    logp, old, adv, mask = case_batch([(a, r, None) for a, r in cases])
    sym = jax_grad_wrt_logp(logp, old, adv, mask)
    asym = jax_grad_wrt_logp(logp, old, adv, mask, clip_eps_high=0.28)
    np.testing.assert_allclose(
        asym[:, :1], numpy_fd_grad_wrt_logp(logp, old, adv, mask, eps_high=0.28), rtol=1e-4, atol=1e-7)
    assert sym[0, 0] == 0.0  # 1.25 > 1.2: clipped with eps 0.2 ...
    assert asym[0, 0] == pytest.approx(-1.5 * 1.25 / 3, rel=1e-5)  # ... but inside [0.8, 1.28]
    assert sym[1, 0] == asym[1, 0] == 0.0  # the low side stays at 1 - 0.2
    assert asym[2, 0] == 0.0  # 1.35 > 1.28


def test_gradient_with_kl_and_entropy_on_random_tokens_in_float64():
    """Random ratios and advantages on a ragged mask, KL (k3) and entropy on, every agg mode; float64 jax."""
    rng = np.random.default_rng(5)
    mask = ragged_mask([4, 1, 6, 3], 6)
    old = rng.uniform(-4, -0.2, size=(4, 6))
    logp = old + rng.uniform(-0.6, 0.6, size=(4, 6))
    ref = old + rng.normal(0, 0.5, size=(4, 6))
    ent = rng.uniform(0, 3, size=(4, 6))
    adv = rng.normal(size=4)
    kwargs = dict(kl_coef=0.05, kl_type="low_var_kl", entropy=ent, entropy_coef=0.01)
    for agg in grpo.AGG_MODES:
        with jax.enable_x64(True):
            def loss_fn(lp):
                return grpo.policy_loss(lp, old, ref, adv, mask, agg=agg, **kwargs)[0]

            got = np.asarray(jax.grad(loss_fn)(jnp.asarray(logp, jnp.float64)))
            own_fd = central_differences(lambda x: float(loss_fn(jnp.asarray(x))), logp)
        ref_fd = central_differences(
            lambda x: np_policy_loss(x, old, ref, adv, mask, agg=agg, **kwargs), logp)
        np.testing.assert_allclose(got, ref_fd, rtol=1e-6, atol=1e-9, err_msg=agg)
        np.testing.assert_allclose(got, own_fd, rtol=1e-6, atol=1e-9, err_msg=agg)
        assert np.all(got[mask == 0] == 0)


def test_loss_is_the_sum_of_its_reported_terms():
    rng = np.random.default_rng(6)
    mask = ragged_mask([5, 2, 6], 6)
    old = rng.uniform(-3, -0.5, size=(3, 6)).astype(np.float32)
    logp = (old + rng.uniform(-0.4, 0.4, size=(3, 6))).astype(np.float32)
    ref = (old + rng.normal(0, 0.3, size=(3, 6))).astype(np.float32)
    ent = rng.uniform(0, 2, size=(3, 6)).astype(np.float32)
    adv = np.array([1.0, -1.0, 0.5], np.float32)
    loss, m = grpo.policy_loss(logp, old, ref, adv, mask, kl_coef=0.1, entropy=ent, entropy_coef=0.02,
                               agg="seq-mean-token-mean")
    assert float(loss) == pytest.approx(float(m["pg_loss"] + 0.1 * m["kl"] - 0.02 * m["entropy"]), rel=1e-6)
    assert float(m["kl"]) == pytest.approx(np_aggregate(np_kl(logp, ref, "k3"), mask, "seq-mean-token-mean"),
                                           rel=1e-5)
    assert float(m["num_tokens"]) == 13
    assert all(v.dtype == jnp.float32 and v.shape == () for v in m.values())
    # no reference policy: no KL term, no "kl" metric; kl_coef 0: kl reported, not added
    loss_no_ref, m_no_ref = grpo.policy_loss(logp, old, None, adv, mask)
    assert "kl" not in m_no_ref and float(loss_no_ref) == float(m_no_ref["pg_loss"])
    loss_zero, m_zero = grpo.policy_loss(logp, old, ref, adv, mask, kl_coef=0.0)
    assert float(loss_zero) == float(m_zero["pg_loss"]) and float(m_zero["kl"]) > 0


def test_identical_policies_give_ratio_one_and_minus_mean_advantage():
    rng = np.random.default_rng(7)
    mask = ragged_mask([2, 4, 3], 4)
    logp = rng.uniform(-3, -0.1, size=(3, 4)).astype(np.float32)
    adv = np.array([1.0, -2.0, 0.5], np.float32)
    loss, m = grpo.policy_loss(logp, logp, logp, adv, mask)
    assert float(loss) == pytest.approx(-(2 * 1.0 + 4 * -2.0 + 3 * 0.5) / 9, rel=1e-6)
    assert float(m["ratio_mean"]) == 1.0 and float(m["approx_kl"]) == 0.0 and float(m["kl"]) == 0.0
    assert float(m["clip_frac"]) == 0.0


@pytest.mark.parametrize("agg", grpo.AGG_MODES)
def test_micro_batch_gradient_accumulation_equals_the_full_batch(agg):
    rng = np.random.default_rng(8)
    mask = ragged_mask(LENGTHS, 8)
    old = rng.uniform(-3, -0.5, size=(6, 8)).astype(np.float32)
    logp = (old + rng.uniform(-0.5, 0.5, size=(6, 8))).astype(np.float32)
    ref = (old + rng.normal(0, 0.3, size=(6, 8))).astype(np.float32)
    adv = rng.normal(size=6).astype(np.float32)
    loss_fn = functools.partial(grpo.policy_loss, agg=agg, max_len=8)

    def grad(lp, rows, **kw):
        return jax.value_and_grad(lambda x: loss_fn(x, old[rows], ref[rows], adv[rows], mask[rows], **kw)[0])(lp)

    full_loss, full_grad = grad(logp, slice(None))
    denom = grpo.loss_denominator(mask, agg)
    total, parts = 0.0, []
    for rows in (slice(0, 2), slice(2, 3), slice(3, 6)):
        value, g = grad(logp[rows], rows, loss_denominator=denom)
        total += float(value)
        parts.append(np.asarray(g))
    assert total == pytest.approx(float(full_loss), rel=1e-5)
    np.testing.assert_allclose(np.concatenate(parts), np.asarray(full_grad), rtol=1e-5, atol=1e-8)


def test_policy_loss_jits_and_matches_eager():
    logp, old, adv, mask = case_batch(CASES)
    fn = jax.jit(functools.partial(grpo.policy_loss, kl_coef=0.0, dual_clip=3.0))
    eager_loss, eager_metrics = grpo.policy_loss(logp, old, None, adv, mask, kl_coef=0.0, dual_clip=3.0)
    jit_loss, jit_metrics = fn(logp, old, None, adv, mask)
    assert float(jit_loss) == pytest.approx(float(eager_loss), rel=1e-6)
    assert set(jit_metrics) == set(eager_metrics)


def test_bfloat16_inputs_are_computed_in_float32():
    logp, old, adv, mask = case_batch(CASES)
    loss, metrics = grpo.policy_loss(jnp.asarray(logp, jnp.bfloat16), jnp.asarray(old, jnp.bfloat16), None, adv,
                                     mask, kl_coef=0.0)
    assert loss.dtype == jnp.float32 and metrics["ratio_mean"].dtype == jnp.float32


@pytest.mark.parametrize("kwargs, match", [
    (dict(dual_clip=1.0), "dual_clip must be > 1"),
    (dict(entropy_coef=0.1), "needs the per-token entropy"),
    (dict(agg="sum"), "unknown agg 'sum'"),
    (dict(kl_type="full"), "unknown kl_type 'full'"),
    (dict(clip_eps=0.0), "clip_eps"),
])
def test_policy_loss_rejects_bad_settings(kwargs, match):
    logp, old, adv, mask = case_batch(CASES)
    with pytest.raises(ValueError, match=match):
        grpo.policy_loss(logp, old, old, adv, mask, **kwargs)


def test_policy_loss_rejects_bad_shapes():
    logp, old, adv, mask = case_batch(CASES)
    with pytest.raises(ValueError, match="old_logp"):
        grpo.policy_loss(logp, old[:, :2], None, adv, mask)
    with pytest.raises(ValueError, match=r"advantages must be \[batch\]"):
        grpo.policy_loss(logp, old, None, adv[:, None] * np.ones((1, 3)), mask)
