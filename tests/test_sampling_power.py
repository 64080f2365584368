"""The rollout engine's draws, over many reply steps, slots and samples, against the filtered softmax of a full
forward pass, with thresholds taken from the sample size; and, for each check, a mutation of the sampler it must
catch (so the checks are known to have power, not just to pass).

Each draw x at a reply position has an exact reference distribution q (numpy: temperature, then top-k, then the
top-p nucleus of the full forward's logits). The checks, each with a false-alarm rate far below 1e-4:
- support: no draw outside what the filters keep (a logit margin absorbs float32 rounding at the boundary);
- score: the summed centred log q(x) over all draws, in units of its standard deviation (a temperature error moves
  the sampled tokens' likelihood by many deviations);
- uniformity: randomised PIT values u = Q(x-) + V q(x) (tokens ordered by q) are Uniform(0, 1), Kolmogorov-Smirnov;
- independence: how often a draw repeats the token of the step before (of the same sample), or of the neighbouring
  sample (same prompt, same step), against the chance the reference gives that token, in standard deviations.
"""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from conftest import tiny_hf_model
from tooln1_jax.models import qwen2, weights
from tooln1_jax.rollout import engine, sampler, sampling

PROMPTS = [[5, 6, 7, 8], [3, 4], [100, 101, 102], [250, 7, 19, 42, 9], [17, 3, 99], [60, 61], [8], [300, 2, 1]]
SAMPLES, STEPS = 24, 12  # 8 prompts x 24 samples x 12 steps = 2304 draws per setting
Z_LIMIT = 4.5  # two-sided normal tail 7e-6
KS_ALPHA = 1e-5
LOGIT_MARGIN = 1e-3  # boundary tokens within this of a filter's threshold count as either side (float32 rounding)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    path = tmp_path_factory.mktemp("sampling_power") / "hf"
    tiny_hf_model(4, 2, False, vocab=320, init_std=0.25).save_pretrained(path)
    return weights.load(path)


def reference(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """(q, surely_excluded) for one position: the filtered softmax, and the tokens the filters exclude by more than
    LOGIT_MARGIN (top-k by logit, top-p by the mass above the token), independently of the package's code."""
    z = logits.astype(np.float64) / temperature
    order = np.argsort(-z, kind="stable")
    kept = order[: top_k or len(z)]
    p = np.exp(z[kept] - z[kept].max())
    p /= p.sum()
    above = np.cumsum(p) - p  # mass strictly above each kept token
    nucleus = above < top_p
    q = np.zeros_like(z)
    q[kept[nucleus]] = p[nucleus] / p[nucleus].sum()
    excluded = np.zeros(len(z), bool)
    if top_k:
        excluded |= z < z[order[top_k - 1]] - LOGIT_MARGIN / temperature
    if top_p < 1:
        last_kept = z[kept[nucleus]].min()
        excluded |= z < last_kept - LOGIT_MARGIN / temperature
        excluded[kept[nucleus]] = False
    return q, excluded


def draws_with_reference(config, params, temperature, top_k, top_p, seed=11):
    """The engine's rollout and, per draw [prompt, sample, step], its q row and surely-excluded row."""
    rollout = sampler.generate(config, params, PROMPTS, num_samples=SAMPLES, max_new_tokens=STEPS,
                               temperature=temperature, top_k=top_k, top_p=top_p, rng=jax.random.key(seed),
                               stop_ids=())
    tokens = rollout.tokens.reshape(len(PROMPTS), SAMPLES, STEPS)
    q = np.zeros((len(PROMPTS), SAMPLES, STEPS, config.vocab_size))
    excluded = np.zeros(q.shape, bool)
    for p, prompt in enumerate(PROMPTS):
        seqs = np.concatenate([np.tile(prompt, (SAMPLES, 1)), tokens[p]], axis=1)
        logits = np.asarray(qwen2.forward(config, params, jnp.asarray(seqs)))
        for s in range(SAMPLES):
            for t in range(STEPS):
                q[p, s, t], excluded[p, s, t] = reference(logits[s, len(prompt) - 1 + t], temperature, top_k, top_p)
    return tokens, q, excluded


def verdicts(tokens, q, excluded, seed=0) -> dict[str, tuple[bool, float]]:
    """{check: (passed, statistic)} for draws tokens [P, S, T] with reference rows q / excluded [P, S, T, V]."""
    picked = np.take_along_axis(q, tokens[..., None], -1)[..., 0]
    out_of_support = int(np.take_along_axis(excluded, tokens[..., None], -1).sum())
    result = {"support": (out_of_support == 0, float(out_of_support))}

    ok = picked > 0  # a boundary token inside the margin may have q = 0 here; it carries no score
    logq = np.log(np.where(q > 0, q, 1.0))
    mean = (q * logq).sum(-1)
    var = (q * logq ** 2).sum(-1) - mean ** 2
    z = (np.log(picked[ok]) - mean[ok]).sum() / math.sqrt(var[ok].sum())
    result["score"] = (abs(z) < Z_LIMIT, float(z))

    # randomised PIT with tokens ordered by q (descending): Uniform(0, 1) under the reference
    order = np.argsort(-q, axis=-1, kind="stable")
    sorted_q = np.take_along_axis(q, order, -1)
    rank = np.argmax(order == tokens[..., None], axis=-1)
    below = np.take_along_axis(np.cumsum(sorted_q, -1) - sorted_q, rank[..., None], -1)[..., 0]
    u = below + np.random.default_rng(seed).uniform(size=below.shape) * picked
    u = np.clip(u, 1e-12, 1 - 1e-12)
    ks = stats.kstest(u.reshape(-1), "uniform")
    result["uniformity"] = (ks.pvalue > KS_ALPHA, float(ks.statistic))

    # a draw reused across steps or samples repeats tokens: count x == x' against the reference's chance of it
    # (the probability, under the second draw's own q, of the first draw's token)
    for name, first, second_q in (("independent_steps", tokens[:, :, :-1], q[:, :, 1:]),
                                  ("independent_samples", tokens[:, :-1, :], q[:, 1:, :])):
        second = tokens[:, :, 1:] if name == "independent_steps" else tokens[:, 1:, :]
        chance = np.take_along_axis(second_q, first[..., None], -1)[..., 0]
        stat = ((second == first).sum() - chance.sum()) / math.sqrt((chance * (1 - chance)).sum())
        result[name] = (abs(stat) < Z_LIMIT, float(stat))
    return result


@contextlib.contextmanager
def mutated(monkeypatch, *, step_fn=None, keys_fn=None):
    """The engine's decode programs rebuilt with a mutated sampler (compiled programs are cached per setting)."""
    with monkeypatch.context() as patch:
        if step_fn is not None:
            patch.setattr(engine, "sample_step", step_fn)
        if keys_fn is not None:
            patch.setattr(engine, "sample_keys", keys_fn)
        engine._decode_program.cache_clear()
        try:
            yield
        finally:
            engine._decode_program.cache_clear()


def temperature_off_by_10_percent(logits, keys, settings):
    return sampling.sample_step(logits, keys, settings.__class__(settings.temperature * 1.1, settings.top_p,
                                                                 settings.top_k))


def top_k_off_by_one(logits, keys, settings):
    return sampling.sample_step(logits, keys, settings.__class__(settings.temperature, settings.top_p,
                                                                 settings.top_k + 1))


def top_p_ignoring_temperature(logits, keys, settings):
    """The nucleus taken from the unscaled logits, the draw at the right temperature."""
    scaled = logits.astype(jnp.float32) / settings.temperature
    nucleus = sampling.filter_logits(logits.astype(jnp.float32), 0, settings.top_p) > -jnp.inf
    masked = jnp.where(nucleus, scaled, -jnp.inf) * settings.temperature  # sample_step divides by T again
    tokens, _ = sampling.sample_step(masked, keys, settings.__class__(settings.temperature, 1.0, 0))
    logp = jax.nn.log_softmax(scaled, axis=-1)
    return tokens, jnp.take_along_axis(logp, tokens[:, None], -1)[:, 0]


def draw_reused_across_steps(rng, steps, sample_ids):
    return sampling.sample_keys(rng, jnp.zeros_like(steps), sample_ids)


# (setting, mutation, the check that must fail): each setting's real draws pass every check
SETTINGS = {"t0.7_p0.8": (0.7, 0, 0.8), "t1.0_k12": (1.0, 12, 1.0), "t1.3": (1.3, 0, 1.0)}
MUTATIONS = [
    ("t1.3", "temperature x1.1", {"step_fn": temperature_off_by_10_percent}, "score"),
    ("t0.7_p0.8", "top-p ignores temperature", {"step_fn": top_p_ignoring_temperature}, "support"),
    ("t1.0_k12", "top-k off by one", {"step_fn": top_k_off_by_one}, "support"),
    ("t1.0_k12", "draw reused across steps", {"keys_fn": draw_reused_across_steps}, "independent_steps"),
]


@pytest.mark.parametrize("name", list(SETTINGS))
def test_draws_over_steps_slots_and_samples_follow_the_filtered_softmax(loaded, name):
    config, params = loaded
    tokens, q, excluded = draws_with_reference(config, params, *SETTINGS[name])
    result = verdicts(tokens, q, excluded)
    assert all(passed for passed, _ in result.values()), result
    assert len(np.unique(tokens)) > 20  # the draws spread over the vocabulary: the checks see many tokens


@pytest.mark.parametrize("setting,label,mutation,check", MUTATIONS, ids=[m[1] + "@" + m[0] for m in MUTATIONS])
def test_each_check_catches_its_mutation(loaded, monkeypatch, setting, label, mutation, check):
    config, params = loaded
    with mutated(monkeypatch, **mutation):
        tokens, q, excluded = draws_with_reference(config, params, *SETTINGS[setting])
    result = verdicts(tokens, q, excluded)
    assert not result[check][0], (label, result)
