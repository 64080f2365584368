"""LoRA: the adapted forward against transformers with the update folded into its weights, fresh adapters change
nothing, only adapters train (GRPO and SFT), the frozen base is the KL reference, and export merges the adapters."""

import jax
import numpy as np
import pytest
import torch

import train_helpers
from conftest import assert_logits_close, hf_logits, tiny_hf_model
from tooln1_jax import assets, checkpoint, config as config_lib, parallel
from tooln1_jax.models import lora, qwen2, weights
from tooln1_jax.rollout import sampler

TOKENS = np.array([[1, 5, 9, 14, 2, 7, 3, 0], [4, 4, 8, 1, 6, 2, 9, 11]])
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def _logits(config, params, tokens=TOKENS):
    return np.asarray(qwen2.forward(config, params, tokens))


def _random_b(params, seed=1):
    """Every adapter's B (zero when fresh) set to random values, so the adapters change the model."""
    rng = np.random.default_rng(seed)
    adapters, base = lora.partition(params)
    adapters = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.2 * rng.standard_normal(x.shape).astype(np.float32) if path[-1].key == "b" else x,
        adapters)
    return lora.combine(adapters, base)


def test_adapted_forward_equals_transformers_with_the_update_in_its_weights(tmp_path):
    model = tiny_hf_model(4, 2, False)
    model.save_pretrained(tmp_path / "hf")
    base_config, base = weights.load(tmp_path / "hf", dtype="float32")
    config = base_config.replace(lora_rank=4, lora_alpha=8.0)
    fresh = lora.add_adapters(config, base, jax.random.key(0), parallel.single_device_mesh())
    np.testing.assert_array_equal(_logits(config, fresh), _logits(base_config, base))  # step 0 = the base, exactly

    params = _random_b(fresh)
    ours = _logits(config, params)
    assert np.abs(ours - _logits(base_config, base)).max() > 1e-2  # the adapters do change the model
    # the reference: transformers' model with W += alpha/rank * (A B)^T in each target Linear, done in torch
    scale = config.lora_alpha / config.lora_rank
    layers = params["model"]["layers"]
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            for owner, hf_module in (("self_attn", layer.self_attn), ("mlp", layer.mlp)):
                for name, adapter in layers[owner].items():
                    if not name.endswith("_lora"):
                        continue
                    a, b = np.asarray(adapter["a"][i]), np.asarray(adapter["b"][i])
                    getattr(hf_module, name[:-5]).weight += torch.from_numpy(scale * (a @ b).T)
    assert_logits_close(ours, hf_logits(model, TOKENS))
    # the rollout engine samples the adapted model (its decode copy of the weights has the adapters merged in)
    prompts = [[1, 5, 9, 14], [4, 4, 8, 1, 6, 2]]
    rollout = sampler.generate(config, params, prompts, max_new_tokens=12, temperature=0.0, stop_ids=())
    np.testing.assert_array_equal(rollout.tokens, _hf_greedy(model, prompts, 12))
    base_rollout = sampler.generate(base_config, base, prompts, max_new_tokens=12, temperature=0.0, stop_ids=())
    assert not np.array_equal(rollout.tokens, base_rollout.tokens)
    merged_config, merged = lora.merge(config, params)
    assert merged_config.lora_rank == 0 and not lora.has_adapters(merged)
    assert_logits_close(_logits(merged_config, merged), ours)


def _hf_greedy(model, prompts, new_tokens):
    """transformers' greedy continuation of each (unpadded) prompt."""
    rows = []
    for prompt in prompts:
        out = model.generate(input_ids=torch.tensor([prompt]), do_sample=False, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, pad_token_id=0)
        rows.append(out[0, len(prompt):].numpy())
    return np.stack(rows)


def test_targets_choose_the_adapted_projections():
    config = qwen2.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, lora_rank=2, lora_targets=ATTENTION)
    shapes, _ = qwen2.abstract_params(config)
    layers = shapes["model"]["layers"]
    assert sorted(k for k in layers["self_attn"] if k.endswith("_lora")) == sorted(f"{t}_lora" for t in ATTENTION)
    assert not [k for k in layers["mlp"] if k.endswith("_lora")]
    assert layers["self_attn"]["o_proj_lora"]["a"].shape == (2, 4 * 8, 2)  # [layers, heads * head_dim, rank]
    assert layers["self_attn"]["k_proj_lora"]["b"].shape == (2, 2, 2 * 8)  # [layers, rank, kv_heads * head_dim]
    with pytest.raises(ValueError, match="lora_targets"):
        config.replace(lora_targets=("qkv",))


@pytest.mark.parametrize("override", ["model.lora_targets=[wq]", "optim.token_rows=[<tool_call>]"])
def test_bad_lora_settings_are_config_errors(override):
    with pytest.raises(config_lib.ConfigError, match="lora_targets|token_rows"):
        config_lib.load(assets.DEMO_CONFIG, ["model.lora_rank=4", override])


def test_the_run_config_offers_the_projections_the_model_has():
    assert config_lib.ModelConfig().lora_targets == qwen2.LORA_TARGETS


def _leaves(tree):
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.slow
def test_grpo_trains_only_adapters_against_the_frozen_base_and_exports_merged(tmp_path, monkeypatch):
    from tooln1_jax.train.trainer import GRPOTrainer

    monkeypatch.setattr(sampler, "DEFAULT_STOP_IDS", (7,))  # inside the 64-token vocabulary

    def grpo(run_dir, *overrides):
        cfg = train_helpers.tiny_config("model.lora_rank=4", "model.lora_alpha=8", "train.steps=3", "optim.lr=0.05",
                                        "train.mini_batch_size=8", *overrides)  # one update a step
        return GRPOTrainer(cfg, run_dir=run_dir, train_records=train_helpers.synthetic_records(), eval_records=[],
                           tokenizer=ByteTokenizer(), reward_fn=train_helpers.digit_reward)

    initial = _leaves(grpo(tmp_path / "no_warm_start").params)
    trainer = grpo(tmp_path / "run", "sft.warm_start_steps=2", "sft.warm_start_lr=0.05")
    warm = _leaves(trainer.params)
    adapters, base = lora.partition(trainer.params)
    n_adapter = lora.count(adapters)
    assert n_adapter == 2 * 4 * sum(  # per layer and target: in * rank + rank * out
        i + o for i, o in [(32, 32), (32, 16), (32, 16), (32, 32), (32, 64), (32, 64), (64, 32)])
    opt_arrays = [x for x in jax.tree.leaves(trainer.opt_state) if x.size > 1]
    assert sum(x.size for x in opt_arrays) == 2 * n_adapter  # AdamW moments of the adapters only
    # the reference is the warm-started policy, sharing the base: no copy of the weights, a copy of the adapters
    assert trainer.ref_params is None and lora.count(trainer.ref_adapters) == n_adapter

    history = trainer.run(progress=False)
    trainer.close()
    end = _leaves(trainer.params)
    for before, after in ((initial, warm), (warm, end)):  # the warm start, then GRPO
        changed = {k for k in before if not np.array_equal(before[k], after[k])}
        assert changed and all("_lora" in k for k in changed), sorted(changed)
        assert any(k.endswith("['b']") for k in changed)
    # step 1 samples from the reference itself: KL 0; afterwards the policy moved away from it
    assert history[0]["kl"] == 0.0 and history[-1]["kl"] > 0.0

    out = checkpoint.export_hf(tmp_path / "run", tmp_path / "exported")
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokens = TOKENS % 64
    assert_logits_close(hf_logits(reloaded, tokens), _logits(trainer.model_config, trainer.params, tokens))
    assert np.abs(_logits(trainer.model_config, trainer.params, tokens)
                  - _logits(trainer.model_config.replace(lora_rank=0), base, tokens)).max() > 1e-3


class ByteTokenizer(train_helpers.FakeTokenizer):
    """Target texts -> small-vocabulary ids (the SFT run encodes its targets)."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[20 + b % 44 for b in text.encode()][:12] for text in texts]}


def test_sft_trains_only_adapters(tmp_path, monkeypatch):
    from tooln1_jax.rollout import sampler
    from tooln1_jax.train.sft import SFTTrainer

    monkeypatch.setattr(sampler, "DEFAULT_STOP_IDS", (7,))  # inside the 64-token vocabulary
    cfg = train_helpers.tiny_config("model.lora_rank=2", "model.lora_targets=[q_proj, v_proj]", "train.steps=3",
                                    "train.batch_size=8", "train.mini_batch_size=8",
                                    "optim.lr=0.05")  # every step the same 8 records: the losses compare
    run = SFTTrainer(cfg, run_dir=tmp_path / "sft", train_records=train_helpers.synthetic_records(8),
                     eval_records=[], tokenizer=ByteTokenizer())
    start = _leaves(run.params)
    history = run.run(progress=False)
    run.close()
    end = _leaves(run.params)
    changed = {k for k in start if not np.array_equal(start[k], end[k])}
    assert changed and all("q_proj_lora" in k or "v_proj_lora" in k for k in changed), sorted(changed)
    assert history[-1]["loss"] < history[0]["loss"]
