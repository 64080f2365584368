"""The memory report compiles the packed update and log-prob programs on fake devices without allocating them."""

import json
import subprocess
import sys

from conftest import REPO

from tooln1_jax import config


def _report(*args):
    out = subprocess.run([sys.executable, "-m", "tooln1_jax.bench.memory", *args], capture_output=True, text=True,
                         cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_memory_report_of_the_demo_config_on_four_devices():
    report = _report("--config", "configs/demo.yaml", "--devices", "4", "--set", "mesh.fsdp=2",
                     "--set", "train.mini_batch_size=8")
    assert report["devices"] == 4 and report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
    worst = report["worst_case"]
    demo = config.load(REPO / "configs" / "demo.yaml")
    cap, g = demo.rollout.max_new_tokens, demo.rollout.num_generations
    assert worst["group_tokens"] == demo.data.max_prompt_tokens + g * cap  # max prompt + G x reply cap
    assert worst["rows"] % 4 == 0 and worst["row_tokens"] >= worst["group_tokens"]
    dev = report["per_device"]
    # the demo's 9.8M float32 parameters, sharded over fsdp=2 (the embedding's vocab axis) on each device
    assert 0 < dev["params_bytes"] < 4 * 9.8e6
    for program in ("update", "logprobs"):
        assert dev[program]["temp_bytes"] > 0
        assert dev[program]["argument_bytes"] >= dev["params_bytes"]
    # the update's arguments hold params + AdamW moments (about 3x the parameter bytes)
    assert dev["update"]["argument_bytes"] >= 2.9 * dev["params_bytes"]


def test_lora_keeps_optimizer_state_and_reference_to_the_adapters():
    report = _report("--config", "configs/demo.yaml", "--devices", "1", "--set", "model.lora_rank=8")
    model, dev = report["model"], report["per_device"]
    # demo shape: 2 layers, hidden 64, MLP 128, 4 heads of 16, 2 KV heads; rank 8 on all seven projections
    per_layer = sum(i + o for i, o in [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)])
    assert model["lora_rank"] == 8 and model["trainable_params"] == 2 * 8 * per_layer
    adapter_bytes = 4 * model["trainable_params"]
    assert dev["ref_params_bytes"] == adapter_bytes  # the reference shares the frozen base
    assert 2 * adapter_bytes <= dev["opt_state_bytes"] <= 2 * adapter_bytes + 64  # AdamW moments (+ step counts)
    assert dev["params_bytes"] > 100 * dev["opt_state_bytes"]
