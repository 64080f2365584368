"""The packed SFT update's loss and gradient against a per-sequence reference (unpadded forward + torch
cross-entropy), `make_optimizer`'s learning-rate schedules, clipping and weight decay against the formulas worked
out by hand, and a checkpoint save interrupted mid-way."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import REPO
from tooln1_jax import parallel
from tooln1_jax.config import OptimConfig
from tooln1_jax.models import qwen2
from tooln1_jax import checkpoint
from tooln1_jax.train import packing
from tooln1_jax.train.step import PACKED_KEYS, StepFunctions, make_optimizer

CONFIG = qwen2.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2)


def test_sft_loss_and_gradient_match_a_per_sequence_cross_entropy():
    import torch

    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 64, n).tolist() for n in (3, 7, 5, 2)]
    targets = [rng.integers(0, 64, n).tolist() for n in (4, 1, 6, 3)]
    mesh = parallel.single_device_mesh()
    params = qwen2.init_params(CONFIG, jax.random.key(1))
    steps = StepFunctions(CONFIG, make_optimizer(OptimConfig(), 10), mesh, params)
    packed = packing.pack_groups(prompts, [[t] for t in targets], rows_multiple=2)
    batch = {k: jnp.asarray(getattr(packed, k)) for k in PACKED_KEYS + ("response_mask",)}
    _, _, metrics = steps.sft_update_packed(jax.tree.map(jnp.copy, params), steps.init_opt_state(params), batch,
                                            1)  # two passes of a packed row: the examples', then a padding row

    # the reference: each sequence alone, unpadded; the loss is the token mean over all targets of the batch
    total = sum(map(len, targets))

    @jax.jit
    def reference_loss(p_):
        out, predicting = 0.0, []
        for p, t in zip(prompts, targets):
            logits = qwen2.forward(CONFIG, p_, jnp.asarray([p + t]))
            predicting.append(logits[0, len(p) - 1:len(p) - 1 + len(t)])
            out += optax.softmax_cross_entropy_with_integer_labels(predicting[-1], jnp.asarray(t)).sum()
        return out / total, predicting

    (_, predicting), grads = jax.value_and_grad(reference_loss, has_aux=True)(params)
    nll = sum(torch.nn.functional.cross_entropy(torch.tensor(np.asarray(x)), torch.tensor(t), reduction="sum").item()
              for x, t in zip(predicting, targets))
    assert float(metrics["loss"]) == pytest.approx(nll / total, rel=1e-5)
    assert float(metrics["num_tokens"]) == total
    assert float(metrics["grad_norm"]) == pytest.approx(float(optax.global_norm(grads)), rel=1e-4)


def _lr_per_step(cfg: OptimConfig, total: int, steps: int) -> list[float]:
    """The learning rate of each update, read off Adam: with a constant gradient of 1 the first moments equal the
    gradient, so each update is -lr_t * 1 / (1 + eps) (weight decay off)."""
    optimizer = make_optimizer(cfg, total)
    params = {"w": jnp.zeros(())}
    state = optimizer.init(params)
    out = []
    for _ in range(steps):
        updates, state = optimizer.update({"w": jnp.ones(())}, state, params)
        out.append(-float(updates["w"]) * (1 + cfg.eps))
    return out


def test_constant_schedule_with_and_without_warmup():
    assert _lr_per_step(OptimConfig(lr=0.1, weight_decay=0.0), 10, 4) == pytest.approx([0.1] * 4, rel=1e-4)
    lrs = _lr_per_step(OptimConfig(lr=0.1, warmup_steps=4, weight_decay=0.0), 10, 7)
    assert lrs == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1, 0.1, 0.1], rel=1e-4, abs=1e-9)  # float32


def test_cosine_schedule_warms_up_then_decays_to_zero():
    lr, warmup, total = 0.1, 3, 11
    expected = [lr * t / warmup if t < warmup else
                lr * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup))) for t in range(total + 1)]
    lrs = _lr_per_step(OptimConfig(lr=lr, schedule="cosine", warmup_steps=warmup, weight_decay=0.0), total, total + 1)
    assert lrs == pytest.approx(expected, rel=1e-4, abs=1e-9)  # float32 arithmetic
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("norm, max_norm", [(10.0, 1.0), (0.5, 1.0)])
def test_gradients_are_clipped_by_their_global_norm(norm, max_norm):
    grads = {"a": jnp.array([3.0, 4.0]) * norm / 5, "b": jnp.zeros((2, 2))}  # global norm `norm`
    cfg = OptimConfig(lr=0.1, b1=0.9, max_grad_norm=max_norm, weight_decay=0.0)
    optimizer = make_optimizer(cfg, 10)
    params = jax.tree.map(jnp.zeros_like, grads)
    _, state = optimizer.update(grads, optimizer.init(params), params)
    mu = optax.tree_utils.tree_get(state, "mu")  # Adam's first moment: (1 - b1) * the clipped gradient
    scale = min(1.0, max_norm / norm)
    np.testing.assert_allclose(mu["a"], (1 - cfg.b1) * np.array([3.0, 4.0]) * norm / 5 * scale, rtol=1e-6)


def test_weight_decay_is_decoupled():
    cfg = OptimConfig(lr=0.1, weight_decay=0.5)
    optimizer = make_optimizer(cfg, 10)
    params = {"w": jnp.array([2.0, -4.0])}
    updates, _ = optimizer.update({"w": jnp.zeros(2)}, optimizer.init(params), params)  # no gradient: decay only
    np.testing.assert_allclose(updates["w"], -cfg.lr * cfg.weight_decay * np.array([2.0, -4.0]), rtol=1e-6)


@pytest.mark.parametrize("untied_head", [False, True])
def test_token_rows_train_at_their_own_learning_rate(untied_head):
    """Rows of `optim.token_rows` move as a plain AdamW at `token_rows_lr` would move them, every other entry as
    one at `lr` (the same warmup schedule scaling both, weight decay included)."""
    cfg = OptimConfig(lr=1e-3, token_rows_lr=5e-2, warmup_steps=2, weight_decay=0.1, max_grad_norm=1e9)
    rows = (3, 7)
    rng = np.random.default_rng(0)
    params = {"model": {"embed_tokens": {"embedding": jnp.asarray(rng.normal(size=(10, 4)), jnp.float32)},
                        "norm": {"scale": jnp.ones(4)}}}
    if untied_head:
        params["lm_head"] = {"kernel": jnp.asarray(rng.normal(size=(4, 10)), jnp.float32)}
    ours = make_optimizer(cfg, 10, rows)

    def plain(lr):
        schedule = optax.join_schedules([optax.linear_schedule(0.0, lr, 2), optax.constant_schedule(lr)], [2])
        return optax.adamw(schedule, weight_decay=cfg.weight_decay)

    runs = {name: (opt, opt.init(params), params) for name, opt in
            [("ours", ours), ("slow", plain(cfg.lr)), ("fast", plain(cfg.token_rows_lr))]}
    for step in range(4):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
        for name, (opt, state, p) in runs.items():
            updates, state = opt.update(grads, state, p)
            runs[name] = (opt, state, optax.apply_updates(p, updates))
    ours_p, slow_p, fast_p = (runs[n][2] for n in ("ours", "slow", "fast"))
    is_row = np.isin(np.arange(10), rows)
    for path, token_axis in [(("model", "embed_tokens", "embedding"), 0)] + (
            [(("lm_head", "kernel"), 1)] if untied_head else []):
        got, slow, fast = (np.asarray(_at(p, path))
                           for p in (ours_p, slow_p, fast_p))
        expected = np.where(np.expand_dims(is_row, 1 - token_axis), fast, slow)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
        assert not np.allclose(fast, slow)  # the two rates did differ
    np.testing.assert_allclose(ours_p["model"]["norm"]["scale"], slow_p["model"]["norm"]["scale"], rtol=1e-6)


def _at(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def test_token_rows_are_read_from_the_tokenizer_and_unknown_ones_are_named():
    from tooln1_jax import assets
    from tooln1_jax.config import ConfigError
    from tooln1_jax.train.run import token_row_ids

    tokenizer = assets.load_tokenizer(None)
    assert token_row_ids(tokenizer, ["<tool_call>", "</tool_call>"], 151936) == (
        tokenizer.convert_tokens_to_ids("<tool_call>"), tokenizer.convert_tokens_to_ids("</tool_call>"))
    assert token_row_ids(tokenizer, [], 151936) == ()
    with pytest.raises(ConfigError, match="optim.token_rows: '<toolcall>' is not a token"):
        token_row_ids(tokenizer, ["<tool_call>", "<toolcall>"], 151936)
    with pytest.raises(ConfigError, match="beyond the model's vocabulary of 64"):
        token_row_ids(tokenizer, ["<tool_call>"], 64)


SAVE_THEN_DIE = textwrap.dedent("""
    import os, sys
    import jax.numpy as jnp
    from tooln1_jax import checkpoint
    ckpt = checkpoint.Checkpoints(sys.argv[1], keep=5, async_save=True)
    params = {"w": jnp.full((256, 256), 1.0)}
    ckpt.save(1, params, params, {"step": 1})
    ckpt.wait()
    big = {"w": jnp.full((2048, 2048), 2.0)}
    ckpt.save(2, big, big, {"step": 2})   # asynchronous: returns while the files are being written
    os._exit(0)                            # the process dies mid-save
""")


def test_an_interrupted_async_save_leaves_the_last_finished_checkpoint(tmp_path):
    result = subprocess.run([sys.executable, "-c", SAVE_THEN_DIE, str(tmp_path)], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    directory = tmp_path / "checkpoints"
    assert not (directory / "2").exists()  # never finalised
    assert [p.name for p in directory.glob(checkpoint.TMP_PATTERN)] == ["2.orbax-checkpoint-tmp"]
    reader = checkpoint.Checkpoints(tmp_path, keep=5)  # removes the unfinished save's temporary directory
    assert reader.latest_step() == 1
    like = {"w": jnp.zeros((256, 256))}
    params, _, meta = reader.restore(1, like, like)
    reader.close()
    assert meta == {"step": 1}
    np.testing.assert_array_equal(np.asarray(params["w"]), 1.0)
    assert not list(directory.glob(checkpoint.TMP_PATTERN))
