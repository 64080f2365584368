"""Loading and saving weights: HF safetensors (single, sharded, bf16), GGUF, and clear errors on bad input."""

import json
import shutil

import jax
import numpy as np
import pytest
import torch

from conftest import assert_logits_close, hf_logits, tiny_hf_model
from tooln1_jax.models import qwen2, weights

TOKENS = np.array([[1, 5, 9, 14, 2, 7, 3, 0], [4, 4, 8, 1, 6, 2, 9, 11]])


def _logits(config, params):
    return np.asarray(qwen2.forward(config, params, TOKENS))


def test_round_trip_through_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_hf_model(4, 2, False)
    model.save_pretrained(tmp_path / "hf")
    config, params = weights.load(tmp_path / "hf")
    assert_logits_close(_logits(config, params), hf_logits(model, TOKENS))

    out = weights.save_hf(config, params, tmp_path / "ours")
    assert (out / "config.json").exists() and not (out / "tokenizer.json").exists()  # its caller adds one
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    np.testing.assert_array_equal(hf_logits(reloaded, TOKENS), hf_logits(model, TOKENS))
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, rtol=0, atol=0)


def test_tied_model_round_trip(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_hf_model(4, 4, True)
    model.save_pretrained(tmp_path / "hf")
    config, params = weights.load(tmp_path / "hf")
    assert config.tie_word_embeddings and "lm_head" not in params
    weights.save_hf(config, params, tmp_path / "ours")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    assert reloaded.config.tie_word_embeddings
    np.testing.assert_array_equal(hf_logits(reloaded, TOKENS), hf_logits(model, TOKENS))


def test_sharded_checkpoint_loads_like_a_single_file(tmp_path):
    model = tiny_hf_model(4, 2, False)
    model.save_pretrained(tmp_path / "single")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / weights.INDEX_FILE).exists()
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 2
    _, single = weights.load(tmp_path / "single")
    config, sharded = weights.load(tmp_path / "sharded")
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # and our own writer shards with an index that transformers reads
    from transformers import AutoModelForCausalLM

    weights.save_hf(config, sharded, tmp_path / "ours", max_shard_bytes=30_000)
    assert (tmp_path / "ours" / weights.INDEX_FILE).exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    np.testing.assert_array_equal(hf_logits(reloaded, TOKENS), hf_logits(model, TOKENS))


def test_bfloat16_checkpoint_and_dtypes(tmp_path):
    model = tiny_hf_model(4, 2, False).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    config, params = weights.load(tmp_path / "bf16", dtype="float32", param_dtype="float32")
    emb = np.asarray(params["model"]["embed_tokens"]["embedding"])
    assert emb.dtype == np.float32
    np.testing.assert_array_equal(emb, model.model.embed_tokens.weight.detach().float().numpy())
    config16, params16 = weights.load(tmp_path / "bf16", dtype="bfloat16", param_dtype="bfloat16")
    assert config16.dtype == "bfloat16" and str(params16["lm_head"]["kernel"].dtype) == "bfloat16"
    weights.save_hf(config16, params16, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def _write_gguf(path, model, *, arch="qwen2", quantize=()):
    """A GGUF written the way llama.cpp's converter names qwen2 tensors; returns the weights it holds (HF names)."""
    import gguf
    from gguf.quants import dequantize, quantize as q

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    layer_names = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
                   "self_attn.o_proj.weight": "attn_output.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
                   "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}
    for p in "qkv":
        layer_names[f"self_attn.{p}_proj.weight"] = f"attn_{p}.weight"
        layer_names[f"self_attn.{p}_proj.bias"] = f"attn_{p}.bias"
    held = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            gguf_name = f"blk.{i}.{layer_names[rest]}"
        else:
            gguf_name = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                         "lm_head.weight": "output.weight"}[name]
        array = tensor.numpy().astype(np.float32)
        if any(key in name for key in quantize):
            qtype = gguf.GGMLQuantizationType.Q8_0
            data = q(array, qtype)
            writer.add_tensor(gguf_name, data, raw_dtype=qtype)
            array = dequantize(data, qtype).reshape(array.shape)
        else:
            writer.add_tensor(gguf_name, array)
        held[name] = array
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return held


@pytest.mark.parametrize("tied", [True, False])
def test_gguf_loads_to_the_same_logits(tmp_path, tied):
    model = tiny_hf_model(4, 2, tied)
    held = _write_gguf(tmp_path / "m.gguf", model, quantize=("mlp.up_proj", "embed_tokens"))
    with torch.no_grad():  # the reference holds exactly what the file holds (dequantized Q8_0 where quantized)
        for name, p in model.named_parameters():
            if name in held:
                p.copy_(torch.from_numpy(held[name]))
    config, params = weights.load(tmp_path / "m.gguf")
    assert config.tie_word_embeddings == tied and config.num_key_value_heads == 2
    assert_logits_close(_logits(config, params), hf_logits(model, TOKENS))


# ---- bad input ---------------------------------------------------------------------------------------------------
def test_missing_path_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        weights.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        weights.load(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps(tiny_hf_model().config.to_dict()))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        weights.load(tmp_path / "empty")


def test_config_of_another_architecture(tiny_model_dir):
    path, _ = tiny_model_dir
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config\.json.*'llama'.*not a Qwen2"):
        weights.load(path)


def test_shape_and_vocab_mismatch_name_file_and_tensor(tiny_model_dir):
    path, _ = tiny_model_dir
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "vocab_size": 999}))
    with pytest.raises(ValueError, match=r"model\.safetensors.*'model\.embed_tokens\.weight'.*\(320, 64\).*"
                                         r"\(999, 64\).*vocabulary size"):
        weights.load(path)
    (path / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 100}))
    with pytest.raises(ValueError, match=r"model\.safetensors.*'model\.layers\.0\.mlp\.\w+_proj\.weight'.*shape"):
        weights.load(path)
    (path / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match=r"'model\.layers\.2\.[\w.]+' is missing"):
        weights.load(path)


def test_truncated_safetensors_is_an_error(tiny_model_dir):
    path, _ = tiny_model_dir
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match=r"model\.safetensors: truncated safetensors file: tensor '[\w.]+'"):
        weights.load(path)
    (path / "model.safetensors").write_bytes(data[:5])
    with pytest.raises(ValueError, match="truncated"):
        weights.load(path)


def test_sharded_index_pointing_at_a_missing_file(tmp_path):
    tiny_hf_model().save_pretrained(tmp_path, max_shard_size="40KB")
    victim = sorted(tmp_path.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        weights.load(tmp_path)


def test_gguf_of_another_architecture(tmp_path):
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "llama.gguf"), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"llama\.gguf: general\.architecture is 'llama'"):
        weights.load(tmp_path / "llama.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match=r"junk\.gguf: not a readable GGUF"):
        weights.load(tmp_path / "junk.gguf")


def test_hub_id_without_network_is_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="Qwen/Qwen2.5-0.5B-Instruct.*not a local path"):
        weights.load("Qwen/Qwen2.5-0.5B-Instruct")


def test_hub_id_found_in_the_local_cache(monkeypatch, tmp_path):
    """An HF hub id resolves from the local HF cache without the network."""
    cache = tmp_path / "hub" / "models--acme--tiny-qwen2"
    snapshot = cache / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    model = tiny_hf_model()
    model.save_pretrained(snapshot)
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    config, params = weights.load("acme/tiny-qwen2")
    assert_logits_close(_logits(config, params), hf_logits(model, TOKENS))
