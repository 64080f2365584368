"""Dense Qwen3 (q/k RMSNorm per head before RoPE, head_dim independent of hidden/heads) against transformers'
Qwen3ForCausalLM: logits, greedy decoding through the rollout engine, HF export, GGUF import, LoRA merge, sharding;
its config (qwen3_moe refused), presets and tokenizer choice."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch

from conftest import assert_logits_close, hf_logits, run_on_fake_devices
from tooln1_jax import assets, parallel
from tooln1_jax.models import lora, presets, qwen2, weights
from tooln1_jax.models.qwen2 import Qwen2Config
from tooln1_jax.rollout import sampler

TOKENS = np.array([[1, 5, 9, 14, 2, 7, 3, 0], [4, 4, 8, 1, 6, 2, 9, 11]])
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [100, 101, 102, 103, 104], [250, 7, 19, 42]]
HEAD_DIM = 32  # not hidden / heads (64 / 4 = 16)


def tiny_qwen3(tied: bool, *, attention_bias: bool = False, init_std: float = 0.1, seed: int = 0):
    """A random transformers Qwen3ForCausalLM (float32, eval mode) whose norms (q/k norms included) and biases are
    perturbed, so a skipped or misplaced one shows."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=HEAD_DIM, tie_word_embeddings=tied,
                         attention_bias=attention_bias, rope_theta=10000.0, max_position_embeddings=512)
    model = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(0.0 if name.endswith("bias") else 1.0, 0.3)
            else:
                p.normal_(0.0, init_std)
    return model


def _saved(model, path):
    model.save_pretrained(path)
    return path


def _logits(config, params, tokens=TOKENS):
    return np.asarray(qwen2.forward(config, params, tokens))


def _hf_greedy(model, prompt, new_tokens):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("tied,attention_bias", [(False, False), (True, False), (False, True)])
def test_logits_equal_transformers(tmp_path, tied, attention_bias):
    model = tiny_qwen3(tied, attention_bias=attention_bias)
    config, params = weights.load(_saved(model, tmp_path / "hf"))
    assert (config.model_type, config.head_dim, config.attention_bias) == ("qwen3", HEAD_DIM, attention_bias)
    assert config.tie_word_embeddings == tied and ("lm_head" in params) == (not tied)
    attn = params["model"]["layers"]["self_attn"]
    assert attn["q_norm"]["scale"].shape == attn["k_norm"]["scale"].shape == (2, HEAD_DIM)
    assert ("bias" in attn["q_proj"]) == ("bias" in attn["o_proj"]) == attention_bias
    assert config.num_params == lora.count(params) == sum(p.numel() for p in model.parameters())
    mask = np.array([[1] * 8, [1] * 5 + [0] * 3])
    ref = hf_logits(model, TOKENS, mask)
    assert_logits_close(np.asarray(qwen2.forward(config, params, TOKENS, attention_mask=mask))[mask == 1],
                        ref[mask == 1])


@pytest.mark.parametrize("tied", [False, True])
def test_greedy_rollout_equals_transformers_for_32_steps(tmp_path, tied):
    model = tiny_qwen3(tied, init_std=0.3, seed=2)  # top-2 logit gaps >= 5e-3 on the path
    config, params = weights.load(_saved(model, tmp_path / "hf"))
    rollout = sampler.generate(config, params, PROMPTS, num_samples=2, max_new_tokens=32, temperature=0.0,
                               stop_ids=(), num_slots=3, chunk_steps=5)
    for row in range(len(PROMPTS) * 2):
        expected = _hf_greedy(model, PROMPTS[rollout.prompt_index[row]], 32)
        assert len(set(expected)) > 3  # not a degenerate repetition
        assert rollout.tokens[row].tolist() == expected, row


@pytest.mark.parametrize("tied", [False, True])
def test_hf_export_round_trip(tmp_path, tied):
    from transformers import AutoModelForCausalLM, Qwen3ForCausalLM

    model = tiny_qwen3(tied)
    config, params = weights.load(_saved(model, tmp_path / "hf"))
    out = weights.save_hf(config, params, tmp_path / "ours")
    written = json.loads((out / "config.json").read_text())
    assert written["architectures"] == ["Qwen3ForCausalLM"] and written["model_type"] == "qwen3"
    assert written["head_dim"] == HEAD_DIM and written["attention_bias"] is False
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert isinstance(reloaded, Qwen3ForCausalLM)
    np.testing.assert_array_equal(hf_logits(reloaded, TOKENS), hf_logits(model, TOKENS))
    again_config, again = weights.load(out)
    assert again_config == config
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _write_qwen3_gguf(path, model):
    """A qwen3 GGUF named by gguf's own HF -> llama.cpp tensor map (no q/k row permutation: that is llama's)."""
    import gguf

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "qwen3")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), tensor.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("tied", [False, True])
def test_gguf_loads_to_the_same_logits(tmp_path, tied):
    model = tiny_qwen3(tied)
    _write_qwen3_gguf(tmp_path / "m.gguf", model)
    config, params = weights.load(tmp_path / "m.gguf")
    assert (config.model_type, config.head_dim, config.tie_word_embeddings) == ("qwen3", HEAD_DIM, tied)
    assert_logits_close(_logits(config, params), hf_logits(model, TOKENS))


def test_lora_merge_parity(tmp_path):
    model = tiny_qwen3(False)
    base_config, base = weights.load(_saved(model, tmp_path / "hf"))
    config = base_config.replace(lora_rank=4, lora_alpha=8.0)
    fresh = lora.add_adapters(config, base, jax.random.key(0), parallel.single_device_mesh())
    assert not any("norm_lora" in str(path) for path, _ in jax.tree_util.tree_leaves_with_path(fresh))
    np.testing.assert_array_equal(_logits(config, fresh), _logits(base_config, base))
    rng = np.random.default_rng(1)
    adapters, frozen = lora.partition(fresh)
    adapters = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.2 * rng.standard_normal(x.shape).astype(np.float32) if path[-1].key == "b" else x,
        adapters)
    params = lora.combine(adapters, frozen)
    ours = _logits(config, params)
    assert np.abs(ours - _logits(base_config, base)).max() > 1e-2
    scale = config.lora_alpha / config.lora_rank
    layers = params["model"]["layers"]
    with torch.no_grad():  # transformers' model with W += alpha / rank * (A B)^T in each target Linear
        for i, layer in enumerate(model.model.layers):
            for owner, hf_module in (("self_attn", layer.self_attn), ("mlp", layer.mlp)):
                for name, adapter in layers[owner].items():
                    if name.endswith("_lora"):
                        a, b = np.asarray(adapter["a"][i]), np.asarray(adapter["b"][i])
                        getattr(hf_module, name[:-5]).weight += torch.from_numpy(scale * (a @ b).T)
    assert_logits_close(ours, hf_logits(model, TOKENS))
    merged_config, merged = lora.merge(config, params)
    assert_logits_close(_logits(merged_config, merged), ours)
    rollout = sampler.generate(config, params, PROMPTS[:2], max_new_tokens=12, temperature=0.0, stop_ids=())
    assert [row.tolist() for row in rollout.tokens] == [_hf_greedy(model, p, 12) for p in PROMPTS[:2]]


def test_sharded_params_and_forward_on_8_devices(tmp_path):
    path = _saved(tiny_qwen3(False), tmp_path / "hf")
    out = run_on_fake_devices(f"""
        import jax, numpy as np
        from jax.sharding import PartitionSpec as P
        from tooln1_jax import parallel
        from tooln1_jax.models import qwen2, weights
        from tooln1_jax.rollout import sampler

        tokens = np.random.default_rng(0).integers(0, 320, (8, 12))
        config, single = weights.load({str(path)!r})
        ref = np.asarray(qwen2.forward(config, single, tokens))
        prompts = [[5, 6, 7], [9, 10, 11, 12]]
        greedy = sampler.generate(config, single, prompts, max_new_tokens=8, temperature=0.0, stop_ids=()).tokens
        mesh = parallel.make_mesh("fsdp=4,tensor=2")
        config, params = weights.load({str(path)!r}, mesh=mesh)
        attn = params["model"]["layers"]["self_attn"]
        for norm in ("q_norm", "k_norm"):
            assert attn[norm]["scale"].sharding.spec in (P(), P(None), P(None, None)), attn[norm]["scale"].sharding
        spec = tuple(attn["q_proj"]["kernel"].sharding.spec)
        assert spec + (None,) * (4 - len(spec)) == (None, "fsdp", "tensor", None), spec
        with parallel.activation_sharding(mesh):
            logits = np.asarray(jax.jit(lambda p, t: qwen2.forward(config, p, t))(params, tokens))
        np.testing.assert_allclose(logits, ref, atol=1e-5 * np.abs(ref).max())
        sharded = sampler.generate(config, params, prompts, max_new_tokens=8, temperature=0.0, stop_ids=()).tokens
        np.testing.assert_array_equal(sharded, greedy)
        print("ok")
    """)
    assert out.strip().endswith("ok")


# ---- config, presets, tokenizer --------------------------------------------------------------------------------
@pytest.mark.parametrize("hf", [{"model_type": "qwen3_moe"}, {"architectures": ["Qwen3MoeForCausalLM"]}])
def test_qwen3_moe_is_refused_by_name(hf):
    with pytest.raises(ValueError, match=r"my/config\.json: model_type 'qwen3_moe'.*mixture-of-experts"):
        qwen2.Qwen2Config.from_hf(hf, source="my/config.json")


def test_another_architecture_names_both_supported_types():
    with pytest.raises(ValueError, match=r"'llama'.*not a Qwen2 or Qwen3 model.*'qwen2'.*'qwen3'"):
        qwen2.Qwen2Config.from_hf({"model_type": "llama"})
    with pytest.raises(ValueError, match="attention_bias is a qwen3 option"):
        qwen2.Qwen2Config(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=2, attention_bias=True)


def test_qwen3_config_reads_its_keys_and_round_trips():
    hf = {**presets.hf_config("qwen3-8b"), "attention_bias": True}
    config = qwen2.Qwen2Config.from_hf(hf)
    assert (config.model_type, config.attention_bias, config.head_dim, config.rope_theta) == ("qwen3", True, 128, 1e6)
    assert qwen2.Qwen2Config.from_hf(config.to_hf()) == config
    no_head_dim = {k: v for k, v in presets.hf_config("qwen3-0.6b").items() if k != "head_dim"}
    assert qwen2.Qwen2Config.from_hf(no_head_dim).head_dim == 128  # transformers' Qwen3 default, not 1024 / 16


def test_presets_by_family():
    assert presets.preset("qwen3-8b").num_params == 8_190_735_360  # Qwen3-8B's model card: 8.2B
    small = presets.preset("qwen3-0.6b")
    assert small.tie_word_embeddings and small.num_params == 596_049_920
    assert presets.hf_config("7b") == presets.hf_config("qwen2.5-7b") == presets.hf_config("Qwen2.5-7B-Instruct")
    assert presets.preset("qwen2.5-7b").num_params == 7_615_616_512
    assert presets.preset("7b").model_type == "qwen2" and presets.preset("qwen3-4b").model_type == "qwen3"
    assert {"qwen2.5-0.5b", "qwen2.5-72b", "qwen3-0.6b", "qwen3-32b"} <= set(presets.NAMES)
    with pytest.raises(ValueError, match="unknown preset 'qwen3-7b'.*qwen3-8b.*bare size"):
        presets.preset("qwen3-7b")


def test_a_qwen3_model_without_tokenizer_files_does_not_get_the_shipped_one(tmp_path):
    model = tiny_qwen3(True)
    with pytest.raises(ValueError, match=r"a qwen3 model without tokenizer files.*data\.tokenizer"):
        assets.load_tokenizer(_saved(model, tmp_path / "hf"))
    _write_qwen3_gguf(tmp_path / "m.gguf", model)
    with pytest.raises(ValueError, match=r"m\.gguf: a qwen3 model .*inside m\.gguf is not read.*data\.tokenizer"):
        assets.tokenizer_dir_for(tmp_path / "m.gguf")
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "q2.gguf"), "qwen2")  # a Qwen2 GGUF keeps the shipped tokenizer
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    assert assets.tokenizer_dir_for(tmp_path / "q2.gguf")[0] == assets.TOKENIZER_DIR


def test_a_qwen2_checkpoint_is_refused_for_a_qwen3_config_of_the_same_shape():
    from tooln1_jax import checkpoint

    shape = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=8)
    saved = {"hf": Qwen2Config(**shape).to_hf(), "param_dtype": "float32"}
    checkpoint.check_compatible(saved, Qwen2Config(**shape), "run")  # the same model: no error
    with pytest.raises(ValueError, match=r"run: .*another model shape \(model_type: checkpoint 'qwen2', config 'qwen3'"):
        checkpoint.check_compatible(saved, Qwen2Config(**shape, model_type="qwen3"), "run")
