"""XLA flags and memory settings for accelerators: what is added per platform, user settings kept, and that the
installed jaxlib's own flag parser accepts the GPU flags."""

import importlib.metadata
import os
import subprocess
import sys

import pytest

from tooln1_jax import accelerator

LHS = "--xla_gpu_enable_latency_hiding_scheduler=true"
COMMAND_BUFFER = "--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL"


def test_gpu_gets_the_scheduler_command_buffers_and_a_memory_fraction():
    assert accelerator.settings("gpu", {}) == {"XLA_FLAGS": f"{LHS} {COMMAND_BUFFER}",
                                               "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.95"}


def test_user_settings_are_kept_and_never_overridden():
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/hlo --xla_gpu_enable_command_buffer=",
           "XLA_PYTHON_CLIENT_MEM_FRACTION": ".8"}
    out = accelerator.settings("gpu", env)
    assert out == {"XLA_FLAGS": f"--xla_dump_to=/tmp/hlo --xla_gpu_enable_command_buffer= {LHS}"}
    everything = f"--xla_gpu_enable_latency_hiding_scheduler=false {COMMAND_BUFFER}"
    assert accelerator.settings("gpu", {"XLA_FLAGS": everything, "XLA_PYTHON_CLIENT_MEM_FRACTION": ".5"}) == {}
    bare = "--xla_gpu_enable_latency_hiding_scheduler"  # a boolean flag without a value counts as set
    assert accelerator.settings("gpu", {"XLA_FLAGS": bare})["XLA_FLAGS"] == f"{bare} {COMMAND_BUFFER}"


def test_tpu_and_cpu_get_nothing_and_a_bad_platform_is_named():
    for name in ("tpu", "cpu"):
        assert accelerator.settings(name, {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}) == {}
    with pytest.raises(ValueError, match="'cuda'"):
        accelerator.settings("cuda", {})


def test_platform_from_the_environment_and_the_installed_plugins(monkeypatch):
    assert accelerator.platform({"JAX_PLATFORMS": "cuda,cpu"}) == "gpu"
    assert accelerator.platform({"JAX_PLATFORMS": "tpu"}) == "tpu"
    assert accelerator.platform({"JAX_PLATFORMS": "cpu"}) == "cpu"
    assert accelerator.platform({"JAX_PLATFORM_NAME": "gpu"}) == "gpu"

    def installed(*names):
        def version(name):
            if name in names:
                return "0.10.2"
            raise importlib.metadata.PackageNotFoundError(name)
        return version

    monkeypatch.setattr(importlib.metadata, "version", installed())
    assert accelerator.platform({}) == "cpu"
    monkeypatch.setattr(importlib.metadata, "version", installed("jax-cuda12-plugin"))
    assert accelerator.platform({}) == "gpu"
    assert accelerator.platform({"JAX_PLATFORMS": "cpu"}) == "cpu"  # an explicit choice wins


def test_configure_writes_the_environment(monkeypatch):
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    assert accelerator.configure("cpu") == {}
    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"
    changes = accelerator.configure("gpu")
    assert os.environ["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {LHS} {COMMAND_BUFFER}" == changes["XLA_FLAGS"]
    assert os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.95"


def test_the_installed_jaxlib_accepts_the_gpu_flags():
    """XLA parses every flag (GPU ones included) at backend start and aborts on an unknown name or value."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **accelerator.settings("gpu", {})}
    run = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; print(float(jnp.ones(3).sum()))"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "3.0", run.stderr[-2000:]
