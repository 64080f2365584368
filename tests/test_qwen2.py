"""The Flax Qwen2 decoder against transformers' Qwen2ForCausalLM (PyTorch, float32), and its KV cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_SHAPES, assert_logits_close, hf_logits, tiny_hf_model
from tooln1_jax.models import presets, qwen2, weights


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
    logits, cache = qwen2.forward(config, params, tokens, positions=positions, attention_mask=mask)
    assert cache is None and logits.dtype == jnp.float32
    assert_logits_close(logits, ref)


def test_default_positions_handle_left_padding():
    model = tiny_hf_model(4, 2, False)
    config, params = _ours(model)
    tokens = np.array([[5, 6, 7, 8], [0, 0, 9, 10]])
    mask = np.array([[1, 1, 1, 1], [0, 0, 1, 1]])
    logits, _ = qwen2.forward(config, params, tokens, attention_mask=mask)
    # the left-padded row's real tokens behave exactly like an unpadded prompt of two tokens
    alone = hf_logits(model, np.array([[9, 10]]))
    assert_logits_close(np.asarray(logits)[1:, 2:], alone)
    assert_logits_close(np.asarray(logits)[:1], hf_logits(model, tokens[:1]))


def test_explicit_positions_are_used():
    model = tiny_hf_model(4, 2, True, rope_theta=100.0)
    config, params = _ours(model)
    tokens = np.array([[3, 1, 4, 1, 5]])
    positions = np.array([[0, 2, 3, 7, 8]])  # gaps: RoPE only sees relative offsets, so a uniform shift would not show
    logits, _ = qwen2.forward(config, params, tokens, positions=positions)
    assert_logits_close(logits, hf_logits(model, tokens, positions=positions))
    shifted, _ = qwen2.forward(config, params, tokens)
    assert np.abs(np.asarray(shifted) - np.asarray(logits)).max() > 1e-3


def test_cached_prefill_and_decode_equal_a_full_forward():
    model = tiny_hf_model(4, 2, False)
    config, params = _ours(model)
    tokens, mask, positions = _right_padded_batch(config.vocab_size, [12, 12, 12], 12, seed=3)
    # left-pad the prompt part differently per row: row r has r pads at the front
    full_mask = np.ones_like(mask)
    full_mask[1, :1] = 0
    full_mask[2, :3] = 0
    full, _ = qwen2.forward(config, params, tokens, attention_mask=full_mask)

    cache = qwen2.init_cache(config, batch=3, num_slots=16)
    step = jax.jit(lambda p, t, m, c: qwen2.forward(config, p, t, attention_mask=m, cache=c))
    chunks = [(0, 5), (5, 6), (6, 7), (7, 12)]  # a prefill, two single-token decodes, a 5-token chunk
    for start, end in chunks:
        logits, cache = step(params, tokens[:, start:end], full_mask[:, start:end], cache)
        real = full_mask[:, start:end].astype(bool)
        np.testing.assert_array_less(np.abs(np.asarray(logits) - np.asarray(full)[:, start:end]).max(-1)[real],
                                     max(2e-4, 1e-4 * float(np.abs(full).max())))
    assert int(cache.index) == 12
    np.testing.assert_array_equal(np.asarray(cache.valid)[:, :12], full_mask.astype(bool))


def test_compute_dtype_bfloat16_keeps_float32_logits_and_is_close():
    model = tiny_hf_model(4, 2, False)
    config, params = _ours(model)
    tokens = np.arange(10)[None] % config.vocab_size
    ref = hf_logits(model, tokens)
    logits, _ = qwen2.forward(config.replace(dtype="bfloat16"), params, tokens)
    assert logits.dtype == jnp.float32
    assert np.abs(np.asarray(logits) - ref).max() < 0.05 * np.abs(ref).max()


@pytest.mark.parametrize("name", presets.NAMES)
def test_preset_parameter_counts_equal_transformers(name):
    import torch
    from transformers import Qwen2Config as HFConfig
    from transformers import Qwen2ForCausalLM

    hf = presets.hf_config(name)
    with torch.device("meta"):
        reference = sum(p.numel() for p in Qwen2ForCausalLM(HFConfig(**hf)).parameters())
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
