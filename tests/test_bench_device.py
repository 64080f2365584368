"""`python -m tooln1_jax.bench.device` on a CPU (tiny shapes): every section present with sane numbers, the FLOP
count of the packed update against a dense count, the decode floor by hand, the time budget."""

import json

import jax
import numpy as np

from tooln1_jax.bench import device
from tooln1_jax.models import attention, qwen2


def _numbers(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _numbers(value)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield tree


def test_tiny_run_reaches_the_end_with_every_section(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    out = tmp_path / "device.json"
    result = device.main(["--tiny", "--json", str(out)])
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == result
    assert printed.rstrip().splitlines()[-1].startswith("logits bf16 vs f32")  # the table comes last
    assert "error" not in json.dumps(result) and "skipped" not in json.dumps(result["rollout"])
    measured = {k: result[k] for k in ("matmul_tflops", "memory_gbps", "rollout")}
    assert all(n > 0 for n in _numbers(measured)), measured

    r = result["rollout"]["tiny"]
    assert r["decode_step_s"] > 0 and r["decode_floor_s"] > 0 and r["prefill_prompt_tokens_per_s"] > 0
    theirs = result["transformers"]["tiny"]
    assert theirs["device"] == "cpu" and theirs["tokens_per_s"] > 0 and theirs["ours_over_theirs"] > 0
    train = result["train"]["tiny"]
    for kernel in ("blockwise", "xla"):
        assert 0 < train[kernel]["mfu"] <= 1 and train[kernel]["seconds"] > 0, train[kernel]
    assert "blockwise" in train["cudnn"]["skipped"]
    logits = result["logits"]
    assert 0 < logits["mean_abs_logp_gap"] <= logits["max_abs_logp_gap"] < 0.1  # bf16 differs, but not by much


def test_update_flops_against_a_dense_count():
    config = device.model_config(None)
    p = device.plan(tiny=True)
    _, packed = device.packed_batch(config, p)
    # matmul weights of the layers, counted from the parameters themselves (kernels only: no norms, no biases)
    layers = jax.tree_util.tree_flatten_with_path(qwen2.abstract_params(config)[0]["model"]["layers"])[0]
    layer_weights = sum(int(np.prod(x.shape)) for path, x in layers if "kernel" in jax.tree_util.keystr(path))
    # visible (query, key) pairs from the dense mask, real queries only
    m = np.asarray(attention.mask(packed.segment_ids, packed.prefix_ids))
    pairs = int(m[packed.segment_ids > 0].sum())
    head = packed.response_mask.size * config.vocab_size * config.hidden_size
    expected = (6 * layer_weights * packed.tokens.size + 6 * head
                + 12 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * pairs)
    assert device.update_flops(config, packed) == expected


def test_decode_floor_by_hand():
    config = device.model_config(None)  # 2 layers, 2 KV heads of 16
    kv = 2 * 2 * 3 * 100 * 2 * 16 * 2  # (k and v) x layers x rows x context x kv heads x head_dim x bytes
    assert device.decode_floor_seconds(config, rows=3, context=100, itemsize=2, gbps=1.0) == \
        (config.num_params * 2 + kv) / 1e9


def test_sections_past_the_budget_are_skipped():
    result = device.run(tiny=True, budget_s=0)
    assert result["memory_gbps"] == {"skipped": "time budget of 0 s spent"}
    assert result["rollout"]["tiny"]["skipped"] and result["train"]["tiny"]["xla"]["skipped"]
    assert "time budget" in device.summary(result)
