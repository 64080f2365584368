"""The supervised warm start of a GRPO run (`sft.warm_start_steps`): it is `tooln1 sft` for that many steps (same
parameters), the KL reference is the warm-started policy, its steps are step-0 lines of metrics.jsonl, and a resumed
run equals the uninterrupted one."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from train_helpers import VOCAB, comparable, digit_reward, synthetic_records, tiny_config

STOP = 7


class ByteTokenizer:
    """Text -> small-vocabulary ids (the warm start encodes its target texts), ids -> text for logging."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[20 + b % (VOCAB - 20) for b in text.encode()][:24] for text in texts]}

    def batch_decode(self, ids, skip_special_tokens=False):
        return [" ".join(map(str, row)) for row in ids]


@pytest.fixture(autouse=True)
def small_stop_id(monkeypatch):
    from tooln1_jax.rollout import sampler

    monkeypatch.setattr(sampler, "DEFAULT_STOP_IDS", (STOP,))  # inside the 64-token vocabulary


WARM = ["sft.warm_start_steps=3", "sft.warm_start_lr=0.01", "train.batch_size=4", "train.mini_batch_size=4",
        "checkpoint.every=1"]


def _grpo(run_dir, *overrides, resume=False):
    from tooln1_jax.train.trainer import GRPOTrainer

    return GRPOTrainer(tiny_config(*WARM, *overrides), run_dir=run_dir, train_records=synthetic_records(),
                       eval_records=[], tokenizer=ByteTokenizer(), reward_fn=digit_reward, resume=resume)


@pytest.mark.slow
def test_the_warm_start_is_the_sft_run_and_becomes_the_kl_reference(tmp_path):
    from tooln1_jax.train.sft import SFTTrainer

    sft = SFTTrainer(tiny_config(*WARM, "train.steps=3", "optim.lr=0.01"), run_dir=tmp_path / "sft",
                     train_records=synthetic_records(), eval_records=[], tokenizer=ByteTokenizer())
    sft_history = sft.run(progress=False)
    sft.close()

    grpo = _grpo(tmp_path / "grpo", "train.steps=1")
    for a, b in zip(jax.tree.leaves(sft.params), jax.tree.leaves(grpo.params)):  # before any GRPO step
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)
    (metrics,) = grpo.run(progress=False)
    grpo.close()
    # one update per step: the policy that sampled is the one updated and the reference, so the KL is 0 (it would
    # not be against the random initialisation the warm start moved away from)
    assert metrics["updates"] == 1 and metrics["kl"] == pytest.approx(0.0, abs=1e-7)
    assert metrics["loss"] != 0.0

    lines = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    warm = [m for m in lines if m["step"] == 0]
    assert [m["warm_start/step"] for m in warm] == [1, 2, 3]
    assert [m["warm_start/loss"] for m in warm] == pytest.approx([m["loss"] for m in sft_history], rel=1e-5)
    assert [m["step"] for m in lines if m["step"] > 0] == [1]


@pytest.mark.slow  # three runs, each compiling its own programs
def test_a_resumed_run_equals_the_uninterrupted_one(tmp_path):
    full = _grpo(tmp_path / "full", "train.steps=3")
    full_history = full.run(progress=False)
    full.close()
    part = _grpo(tmp_path / "part", "train.steps=2")
    part.run(progress=False)
    part.close()
    resumed = _grpo(tmp_path / "part", "train.steps=3", resume=True)  # the warm start rebuilds the KL reference
    (last,) = resumed.run(progress=False)
    resumed.close()
    assert comparable(last) == pytest.approx(comparable(full_history[-1]), rel=1e-6, abs=1e-9)
    steps = lambda d: [json.loads(x)["step"] for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert steps(tmp_path / "part") == steps(tmp_path / "full") == [0, 0, 0, 1, 2, 3]


def test_bad_warm_start_settings_are_refused():
    from tooln1_jax.config import ConfigError

    with pytest.raises(ConfigError, match="sft.warm_start_steps must be >= 0"):
        tiny_config("sft.warm_start_steps=-1")
    with pytest.raises(ConfigError, match="sft.warm_start_lr must be > 0"):
        tiny_config("sft.warm_start_steps=2", "sft.warm_start_lr=0")
