"""A CPU-only JAX is named as such: a mesh larger than the visible devices and a large model on CPU point to the
`tpu` / `cuda` extras, which setup.py declares."""

from __future__ import annotations

import ast

import jax
import pytest

from conftest import REPO
from tooln1_jax import parallel
from tooln1_jax.models import presets


def test_a_mesh_larger_than_the_cpu_devices_names_the_extras():
    assert jax.default_backend() == "cpu"
    with pytest.raises(ValueError, match=r"needs 64 devices, but 1 are available .*'tooln1-jax\[tpu\]'.*"
                                         r"'tooln1-jax\[cuda\]'"):
        parallel.make_mesh({"fsdp": 16, "tensor": 4}, jax.devices()[:1])


def test_large_models_on_cpu_are_warned_about():
    seven = presets.preset("7b").num_params
    assert seven == 7_615_616_512  # the published count
    assert "a 7.6B-parameter model on CPU" in parallel.cpu_warning(seven)
    assert parallel.cpu_warning(presets.preset("0.5b").num_params) is None  # the CPU checks of this project


def test_setup_declares_the_accelerator_extras():
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    extras = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "extras_require"))
    assert extras["tpu"] == ["jax[tpu]>=0.10"] and extras["cuda"] == ["jax[cuda12]>=0.10"]
