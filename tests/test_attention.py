"""Every attention implementation against the dense reference (values and gradients), on packed-row masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import packing_cases as cases
from tooln1_jax.models import attention, decode_attention, qwen2
from tooln1_jax.train import packing


def _inputs(seed=0, heads=4, kv_heads=2, dim=8):
    prompts, replies = cases.groups(seed, n=5, g=3, prompt_max=20, reply_max=9)
    packed = packing.pack_groups(prompts, replies, budget=128)
    b, t = packed.tokens.shape
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(b, t, h, dim)), jnp.float32) for h in (heads, kv_heads, kv_heads))
    return q, k, v, jnp.asarray(packed.segment_ids), jnp.asarray(packed.prefix_ids)


def test_mask_rule_by_hand():
    # prompt (2 tokens), reply 1 (2 tokens), reply 2 (1 token), then one padding token
    seg = jnp.array([[1, 1, 1, 1, 1, 0]])
    pre = jnp.array([[0, 0, 1, 1, 2, -1]])
    expected = np.array([[1, 0, 0, 0, 0, 0],
                         [1, 1, 0, 0, 0, 0],
                         [1, 1, 1, 0, 0, 0],
                         [1, 1, 1, 1, 0, 0],
                         [1, 1, 0, 0, 1, 0],  # reply 2 sees the prompt and itself, not reply 1
                         [0, 0, 0, 0, 0, 1]], bool)
    assert np.array_equal(np.asarray(attention.mask(seg, pre))[0], expected)


@pytest.mark.parametrize("impl,kwargs", [("blockwise", {"block": 16}), ("blockwise", {"block": 48}),
                                         ("xla", {})])
def test_implementation_matches_reference(impl, kwargs):
    q, k, v, seg, pre = _inputs()
    w = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
    fn = {"blockwise": lambda q, k, v: attention.blockwise(q, k, v, seg, pre, **kwargs),
          "xla": lambda q, k, v: attention.dot_product(q, k, v, seg, pre)}[impl]
    ref = lambda q, k, v: attention.reference(q, k, v, seg, pre)  # noqa: E731
    np.testing.assert_allclose(fn(q, k, v), ref(q, k, v), rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda *a: jnp.sum(fn(*a) * w), argnums=(0, 1, 2))(q, k, v)
    ref_grads = jax.grad(lambda *a: jnp.sum(ref(*a) * w), argnums=(0, 1, 2))(q, k, v)
    assert cases.max_rel_diff(grads, ref_grads) < 1e-5


@pytest.mark.parametrize("impl", ["blockwise", "xla"])
def test_model_forward_and_gradient_with_each_implementation(impl):
    prompts, replies = cases.groups(2, n=3, g=2)
    packed = cases.packed_batch(packing.pack_groups(prompts, replies, budget=256))
    p = cases.params()
    from tooln1_jax.train import sequences

    def loss(params, config):
        logp, _ = sequences.packed_logprobs(config, params, packed)
        return jnp.sum(logp * packed["response_mask"])

    run = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    ref_loss, ref_grads = run(p, cases.CONFIG)
    ours, grads = run(p, cases.CONFIG.replace(attention=impl))
    assert abs(float(ours) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss))
    assert cases.max_rel_diff(grads, ref_grads) < 1e-5


def test_remat_policies_give_the_same_gradient():
    prompts, replies = cases.groups(3, n=2, g=2)
    packed = cases.packed_batch(packing.pack_groups(prompts, replies))
    p = cases.params()
    from tooln1_jax.train import sequences

    def grad(remat):
        fn = lambda params: jnp.sum(  # noqa: E731
            sequences.packed_logprobs(cases.CONFIG.replace(remat=remat), params, packed)[0] * packed["response_mask"])
        return jax.jit(jax.grad(fn))(p)

    ref = grad("none")
    for remat in ("dots", "full", True):
        assert cases.max_rel_diff(grad(remat), ref) < 1e-5, remat
    with pytest.raises(ValueError, match="remat must be one of"):
        cases.CONFIG.replace(remat="some")
    with pytest.raises(ValueError, match="attention implementation"):
        qwen2.Qwen2Config(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, attention="flash")


def test_forward_of_a_plain_causal_row_given_as_ids_equals_the_attention_mask_path():
    tokens = jnp.asarray(np.random.default_rng(4).integers(1, 64, (2, 19)), jnp.int32)
    p = cases.params()
    ref = qwen2.forward(cases.CONFIG, p, tokens)
    ones = jnp.ones(tokens.shape, jnp.int32)
    ours = qwen2.forward(cases.CONFIG, p, tokens, positions=jnp.cumsum(ones, axis=1) - 1, segment_ids=ones,
                         prefix_ids=0 * ones)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_xla_matches_reference_in_bfloat16_on_rows_with_padding():
    q, k, v, seg, pre = _inputs(seed=3, heads=6, kv_heads=3, dim=16)
    assert (np.asarray(seg) == 0).any()  # rows end in padding
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    ours = attention.attend(q, k, v, seg, pre, "xla")
    assert ours.dtype == jnp.bfloat16
    ref = attention.reference(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), seg, pre)
    np.testing.assert_allclose(np.asarray(ours, np.float32), ref, atol=3e-2)


def test_cudnn_is_refused_when_the_model_is_built():
    with pytest.raises(ValueError, match="model.attention 'cudnn'.*blockwise"):
        attention.resolve("cudnn")
    with pytest.raises(ValueError, match="model.attention 'cudnn'.*blockwise"):
        cases.CONFIG.replace(attention="cudnn")


def test_kv_cache_attention_equals_the_reference_on_a_causal_row():
    """The rollout's attention (keys/values written at their positions in a [B, KV, C, D] cache, entries [0, width)
    read) against the packed reference on plain causal rows."""
    rng = np.random.default_rng(5)
    b, t, capacity = 2, 9, 16
    q, k, v = (jnp.asarray(rng.normal(size=(b, t, h, 8)), jnp.float32) for h in (6, 3, 3))
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    empty = jnp.zeros((b, 3, capacity, 8), jnp.float32)
    ck, cv = decode_attention.write(empty, k, positions), decode_attention.write(empty, v, positions)
    ours = decode_attention.attend(q, ck, cv, positions, width=12)
    ones = jnp.ones((b, t), jnp.int32)
    np.testing.assert_allclose(ours, attention.reference(q, k, v, ones, 0 * ones), rtol=1e-6, atol=1e-6)
