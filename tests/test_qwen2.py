"""The Qwen2 decoder against transformers' Qwen2ForCausalLM (PyTorch, float32), and the rollout's KV-cache
forward (the same decoder block) against the training forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_SHAPES, assert_logits_close, hf_logits, tiny_hf_model
from tooln1_jax.models import presets, qwen2, weights
from tooln1_jax.rollout import inference, kv_cache


def _ours(model):
    """Our config/params from the HF model's state dict, through the same name/layout maps as file loading."""
    hf = model.config.to_dict()
    arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    source = weights.ArraySource(hf, arrays)
    config = qwen2.Qwen2Config.from_hf(hf)
    if config.tie_word_embeddings:
        source.arrays.pop("lm_head.weight", None)
    return config, weights.load_params(config, source)


def _right_padded_batch(vocab, lengths, width, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (len(lengths), width))
    mask = (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    positions = np.where(mask == 1, np.cumsum(mask, 1) - 1, 0)
    return tokens, mask, positions


@pytest.mark.parametrize("heads,kv_heads,tied", TINY_SHAPES)
def test_logits_match_transformers_on_right_padded_batch(heads, kv_heads, tied):
    model = tiny_hf_model(heads, kv_heads, tied)
    config, params = _ours(model)
    assert config.tie_word_embeddings == tied
    assert ("lm_head" in params) == (not tied)
    tokens, mask, positions = _right_padded_batch(config.vocab_size, [11, 6, 9], 11)
    ref = hf_logits(model, tokens, mask, positions)
    logits = qwen2.forward(config, params, tokens, positions=positions, attention_mask=mask)
    assert logits.dtype == jnp.float32
    real = mask == 1  # a padding token's logits mean nothing (ours: it attends to padding only)
    assert_logits_close(np.asarray(logits)[real], ref[real])


def test_default_positions_handle_left_padding():
    model = tiny_hf_model(4, 2, False)
    config, params = _ours(model)
    tokens = np.array([[5, 6, 7, 8], [0, 0, 9, 10]])
    mask = np.array([[1, 1, 1, 1], [0, 0, 1, 1]])
    logits = qwen2.forward(config, params, tokens, attention_mask=mask)
    # the left-padded row's real tokens behave exactly like an unpadded prompt of two tokens
    alone = hf_logits(model, np.array([[9, 10]]))
    assert_logits_close(np.asarray(logits)[1:, 2:], alone)
    assert_logits_close(np.asarray(logits)[:1], hf_logits(model, tokens[:1]))


def test_explicit_positions_are_used():
    model = tiny_hf_model(4, 2, True, rope_theta=100.0)
    config, params = _ours(model)
    tokens = np.array([[3, 1, 4, 1, 5]])
    positions = np.array([[0, 2, 3, 7, 8]])  # gaps: RoPE only sees relative offsets, so a uniform shift would not show
    logits = qwen2.forward(config, params, tokens, positions=positions)
    assert_logits_close(logits, hf_logits(model, tokens, positions=positions))
    shifted = qwen2.forward(config, params, tokens)
    assert np.abs(np.asarray(shifted) - np.asarray(logits)).max() > 1e-3


@pytest.mark.parametrize("tied", [False, True])
def test_cached_prefill_and_decode_equal_a_full_forward(tied):
    """The rollout's forward over per-layer KV caches (the same decoder block) against the training forward."""
    model = tiny_hf_model(4, 2, tied)
    config, params = _ours(model)
    lengths = [12, 11, 9]
    tokens, mask, _ = _right_padded_batch(config.vocab_size, lengths, 12, seed=3)
    full = np.asarray(qwen2.forward(config, params, tokens, attention_mask=mask))

    w = inference.prepare(config, params)
    caches = kv_cache.allocate(config, rows=3, capacity=16, dtype=w.dtype)
    positions = np.broadcast_to(np.arange(12), tokens.shape)  # a pad writes past its row's end, unseen by real tokens
    step = jax.jit(lambda w, t, p, c: inference.forward(config, w, t, p, c, 12))  # reads entries [0, 12) of 16
    for start, end in [(0, 5), (5, 6), (6, 7), (7, 12)]:  # a prefill, two single-token decodes, a 5-token chunk
        hidden, caches = step(w, tokens[:, start:end], positions[:, start:end], caches)
        logits = np.asarray(inference.logits(w, hidden))
        real = mask[:, start:end].astype(bool)
        np.testing.assert_array_less(np.abs(logits - full[:, start:end]).max(-1)[real],
                                     max(2e-4, 1e-4 * float(np.abs(full).max())))
    assert len(caches) == config.num_hidden_layers
    k, v = caches[0]
    assert k.shape == v.shape == (3, config.num_key_value_heads, 16, config.head_dim)
    assert not np.asarray(k)[:, :, 12:].any()  # entries past the last position were never written


def test_plain_rows_take_the_packed_attention_path():
    """A padded batch runs as packed rows (real tokens segment 1, padding 0): its real tokens' logits equal those of
    the same rows given as ids, bit for bit."""
    config, params = _ours(tiny_hf_model(4, 2, False))
    tokens, mask, positions = _right_padded_batch(config.vocab_size, [7, 4], 7, seed=5)
    plain = np.asarray(qwen2.forward(config, params, tokens, attention_mask=mask))
    ids = np.asarray(qwen2.forward(config, params, tokens, positions=positions, segment_ids=mask,
                                   prefix_ids=np.zeros_like(mask)))
    np.testing.assert_array_equal(plain[mask == 1], ids[mask == 1])
    with pytest.raises(ValueError, match="packed rows need positions, segment_ids and prefix_ids"):
        qwen2.forward(config, params, tokens, segment_ids=mask, prefix_ids=np.zeros_like(mask))
    with pytest.raises(ValueError, match="prefix_ids without segment_ids"):
        qwen2.forward(config, params, tokens, prefix_ids=np.zeros_like(mask))


def test_compute_dtype_bfloat16_keeps_float32_logits_and_is_close():
    model = tiny_hf_model(4, 2, False)
    config, params = _ours(model)
    tokens = np.arange(10)[None] % config.vocab_size
    ref = hf_logits(model, tokens)
    logits = qwen2.forward(config.replace(dtype="bfloat16"), params, tokens)
    assert logits.dtype == jnp.float32
    assert np.abs(np.asarray(logits) - ref).max() < 0.05 * np.abs(ref).max()


@pytest.mark.parametrize("name", presets.NAMES)
def test_preset_parameter_counts_equal_transformers(name):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = presets.hf_config(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**hf))
        reference = sum(p.numel() for p in model.parameters())
    config = presets.preset(name)
    shapes, _ = qwen2.abstract_params(config)
    assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)) == reference
    assert config.num_params == reference


def test_known_published_sizes():
    # Qwen2.5 model cards: 0.49B and 7.61B parameters; exact counts of the released checkpoints
    assert presets.preset("0.5b").num_params == 494_032_768
    assert presets.preset("7b").num_params == 7_615_616_512


def test_config_errors_name_the_source():
    with pytest.raises(ValueError, match="my/config.json.*llama.*not a Qwen2"):
        qwen2.Qwen2Config.from_hf({"model_type": "llama", "architectures": ["LlamaForCausalLM"]},
                                  source="my/config.json")
    with pytest.raises(ValueError, match="unknown preset"):
        presets.preset("9b")
    with pytest.raises(ValueError, match="not a multiple"):
        qwen2.Qwen2Config(vocab_size=8, hidden_size=48, intermediate_size=8, num_hidden_layers=1,
                          num_attention_heads=3, num_key_value_heads=2)
