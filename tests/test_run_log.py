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
