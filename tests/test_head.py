"""The vocabulary-tiled head (models/head.py) against whole-logit log-softmax, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tooln1_jax.models import head, qwen2
from tooln1_jax.train import packing, sequences
from tooln1_jax.train.step import PACKED_KEYS


def _dense(h, w, targets):
    logits = h @ w.T
    logp = jax.nn.log_softmax(logits, axis=-1)
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return jnp.take_along_axis(logp, targets[:, None], axis=-1)[:, 0], entropy


def _case(vocab, n=24, e=16, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(k1, (n, e)), jax.random.normal(k2, (vocab, e)),
            jax.random.randint(k3, (n,), 0, vocab))


@pytest.mark.parametrize("vocab,tile", [(1000, 128), (1024, 256), (300, 2048), (151936 // 16, 2048)])
def test_values_and_gradients_equal_the_whole_logits(vocab, tile):
    """A vocabulary that is not a multiple of the tile (an overlapping last tile), one that is, one smaller than
    the tile; gradients of a loss that weights log-probs and entropies differently per position."""
    h, w, targets = _case(vocab)
    weights = jnp.linspace(-1.0, 2.0, h.shape[0])

    def loss(fn, h, w):
        logp, entropy = fn(h, w, targets)
        return jnp.sum(weights * logp) + 0.3 * jnp.sum(weights[::-1] * entropy)

    tiled = lambda h, w, t: head.token_logprobs(h, w, t, tile=tile)  # noqa: E731
    got, want = tiled(h, w, targets), _dense(h, w, targets)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5)
    g_got = jax.grad(lambda h, w: loss(tiled, h, w), argnums=(0, 1))(h, w)
    g_want = jax.grad(lambda h, w: loss(_dense, h, w), argnums=(0, 1))(h, w)
    for a, b in zip(g_got, g_want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("with_entropy", [True, False])
def test_repeated_targets_accumulate_their_gradient_rows(with_entropy):
    h, w, _ = _case(500)
    targets = jnp.zeros(h.shape[0], jnp.int32).at[::3].set(7)
    logp = lambda w: head.token_logprobs(h, w, targets, tile=64, with_entropy=with_entropy)  # noqa: E731
    g_got = jax.grad(lambda w: jnp.sum(logp(w)[0]))(w)
    g_want = jax.grad(lambda w: jnp.sum(_dense(h, w, targets)[0]))(w)
    np.testing.assert_allclose(g_got, g_want, rtol=1e-4, atol=1e-5)
    if not with_entropy:
        np.testing.assert_array_equal(logp(w)[1], 0.0)


@pytest.mark.parametrize("tied", [True, False])
def test_training_logprobs_tiled_equal_chunked(tied):
    """`sequences.packed_logprobs` with either head, through a random Qwen2 (tied or untied head), at a
    temperature, with entropies: values and the gradient of every parameter."""
    base = qwen2.Qwen2Config(vocab_size=777, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    params = qwen2.init_params(base, jax.random.key(1))
    rng = np.random.default_rng(2)
    tokens = lambda n: rng.integers(0, 777, n).tolist()  # noqa: E731
    packed = packing.pack_groups([tokens(12), tokens(8)], [[tokens(8), tokens(3)], [tokens(5)]])
    batch = {k: jnp.asarray(getattr(packed, k)) for k in PACKED_KEYS}
    mask = jnp.asarray(packed.response_mask)

    def run(name):
        config = base.replace(head=name)

        def loss(p):
            logp, entropy = sequences.packed_logprobs(config, p, batch, temperature=0.7, with_entropy=True)
            logp, entropy = logp * mask, entropy * mask  # padding slots hold finite garbage
            return jnp.sum(logp) - 0.1 * jnp.sum(entropy), (logp, entropy)

        return jax.grad(loss, has_aux=True)(params)

    (g_tiled, out_tiled), (g_chunked, out_chunked) = run("tiled"), run("chunked")
    for a, b in zip(out_tiled, out_chunked):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_tiled), jax.tree.leaves(g_chunked)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_auto_is_tiled_on_cpu_and_names_are_checked():
    assert head.resolve("auto") == ("tiled" if jax.default_backend() == "cpu" else "chunked")
    with pytest.raises(ValueError, match="head must be one of auto, chunked, tiled"):
        qwen2.Qwen2Config(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                          num_attention_heads=1, num_key_value_heads=1, head="fused")


def test_benchmark_runs_both_heads_and_they_agree():
    from tooln1_jax.bench import head as head_bench

    out = head_bench.main(["--rows", "2", "--reply", "8", "--hidden", "16", "--vocab", "5000", "--repeats", "1"])
    assert out["max_abs_logp_diff"] < 1e-4
    assert set(out["median_ms"]) == {"chunked_forward", "chunked_grad", "tiled_forward", "tiled_grad"}
