"""Every run directory gets `run.log`: the start-up banner (backend, devices, processes, mesh, parameter count) and
everything the run logs at INFO and above."""

from __future__ import annotations

import logging

from train_helpers import synthetic_records, tiny_config, trainer


def test_run_log_holds_the_banner_and_the_run_messages(tmp_path):
    cfg = tiny_config("train.steps=1")
    t = trainer(cfg, tmp_path / "run", records=synthetic_records())
    t.run(progress=False)
    logging.getLogger("tooln1_jax.test").warning("after the run, before close")
    t.close()
    logging.getLogger("tooln1_jax.test").warning("after close")
    text = (tmp_path / "run" / "run.log").read_text()
    banner = next(line for line in text.splitlines() if "tooln1-jax" in line)
    expected = t.model_config.num_params  # the closed-form count (checked against transformers in test_qwen2)
    assert expected == 2 * 64 * 32 + 2 * (32 * 32 * 2 + 32 + 2 * (32 * 16 + 16) + 3 * 32 * 64 + 2 * 32) + 32
    assert f"({expected:,} parameters, float32 weights, float32 compute)" in banner
    assert "backend cpu" in banner and "1 process(es)" in banner and "mesh data=1 fsdp=1 tensor=1" in banner
    assert "grpo" in banner and "32 training records" in banner
    assert "after the run, before close" in text and "after close" not in text  # the handler is removed at close


def test_data_epochs_set_the_number_of_steps_and_the_log_says_so(tmp_path, caplog):
    import pytest

    from tooln1_jax.config import ConfigError

    with caplog.at_level(logging.INFO, logger="tooln1_jax.train.run"):
        t = trainer(tiny_config("data.num_epochs=3", "train.steps=null"), tmp_path / "run",
                    records=synthetic_records(n=30))
    # 3 epochs of 30 records, 8 prompts a step: 90 // 8 = 11 steps, 2 optimizer updates each
    assert t.cfg.train.steps == 11 and t.total_updates() == 22 and t.loader.num_batches == 11
    assert "data.num_epochs 3 over 30 training records, 8 a step: 11 steps" in caplog.text
    t.close()
    # an explicit train.steps wins: the epochs are not used, the records repeat as the steps need
    t = trainer(tiny_config("data.num_epochs=1", "train.steps=5"), tmp_path / "steps", records=synthetic_records(n=8))
    assert t.cfg.train.steps == 5 and t.loader.num_batches is None
    assert [len(next(t.loader)) for _ in range(5)] == [8] * 5  # 5 batches from 8 records: more than one epoch
    t.close()
    with pytest.raises(ConfigError, match="data.num_epochs 1 over 5 training records does not fill one batch"):
        trainer(tiny_config("data.num_epochs=1", "train.steps=null"), tmp_path / "small", records=synthetic_records(n=5))
