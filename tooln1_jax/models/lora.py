"""LoRA on the functional Qwen2 model: which parameters train, adding fresh adapters to loaded weights, and merging
adapters into the base weights (for export and inference).

With `Qwen2Config.lora_rank > 0` each target projection `<name>` gets a sibling `<name>_lora` holding `a`
[in, rank] and `b` [rank, out] (stacked over layers like every layer parameter); the model adds
`(x a) b * alpha / rank` to the projection's output (`qwen2.decoder_layer`). A tree with adapters trains only them
(`partition`): the base weights get no gradients and no optimizer state, and the GRPO reference policy is the
same base with a copy of the starting adapters (no second copy of the weights). A tree without adapters is all
trainable, unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import traverse_util

from tooln1_jax import parallel
from tooln1_jax.models import qwen2
from tooln1_jax.models.qwen2 import Qwen2Config

SUFFIX = qwen2.LORA_SUFFIX


def _is_adapter(path: tuple[str, ...]) -> bool:
    return any(part.endswith(SUFFIX) for part in path)


def has_adapters(params) -> bool:
    return any(_is_adapter(path) for path in traverse_util.flatten_dict(params))


def partition(params) -> tuple[dict, dict]:
    """(trainable, frozen): (adapters, base) for a tree with adapters, else (params, {})."""
    if not has_adapters(params):
        return params, {}
    flat = traverse_util.flatten_dict(params)
    adapters = {p: v for p, v in flat.items() if _is_adapter(p)}
    base = {p: v for p, v in flat.items() if not _is_adapter(p)}
    return traverse_util.unflatten_dict(adapters), traverse_util.unflatten_dict(base)


def combine(trainable, frozen):
    """The inverse of `partition`."""
    if not frozen:
        return trainable
    return traverse_util.unflatten_dict({**traverse_util.flatten_dict(frozen),
                                         **traverse_util.flatten_dict(trainable)})


def count(params) -> int:
    """Parameters in a tree of arrays (`Qwen2Config.num_params` computes the same from the shape alone)."""
    return sum(int(x.size) for x in jax.tree.leaves(params))


def add_adapters(config: Qwen2Config, base, key: jax.Array, mesh) -> dict:
    """`base` (weights of `config` without adapters) plus freshly initialised adapters for `config`'s LoRA
    settings, placed on `mesh` (only the adapters are computed: the rest of the initialisation is dead code)."""
    shapes, logical = qwen2.abstract_params(config)
    adapter_shardings = partition(parallel.shardings(shapes, logical, mesh))[0]
    init = jax.jit(lambda k: partition(qwen2.init_params(config, k))[0], out_shardings=adapter_shardings)
    return combine(init(key), base)


def merge(config: Qwen2Config, params) -> tuple[Qwen2Config, dict]:
    """(config without LoRA, params with every adapter folded into its projection: W + a b * alpha / rank)."""
    base_config = config.replace(lora_rank=0)
    adapters, base = partition(params)
    if not base:
        return base_config, params
    flat = traverse_util.flatten_dict(base)
    flat_adapters = traverse_util.flatten_dict(adapters)
    scale = config.lora_alpha / config.lora_rank
    for module in sorted({path[:-1] for path in flat_adapters}):
        a, b = flat_adapters[module + ("a",)], flat_adapters[module + ("b",)]
        kernel_path = module[:-1] + (module[-1][:-len(SUFFIX)], "kernel")
        kernel = flat[kernel_path]
        delta = jnp.einsum("...ir,...ro->...io", a.astype(jnp.float32), b.astype(jnp.float32)) * scale
        flat[kernel_path] = (kernel.astype(jnp.float32) + delta.reshape(kernel.shape)).astype(kernel.dtype)
    return base_config, traverse_util.unflatten_dict(flat)
