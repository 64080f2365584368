"""The rollout's copy of the weights and the decoder forward that reads it.

`prepare` turns the training parameters (layers stacked on a leading axis, FSDP-sharded, param dtype) into
`InferenceWeights`: one tree of arrays per layer (a stacked weight sliced inside a step is copied there; each
projection's (heads, head_dim) axes joined into one), in the rollout dtype, without the FSDP axis (tensor parallel
stays), LoRA adapters merged into the weights, so a decode step reads each weight once and gathers nothing. It is
made once per training step; it costs one model's worth of memory in that dtype (the whole model on every device of
an FSDP group) unless `fsdp=True` keeps the FSDP axis.

`forward` runs `models.qwen2`'s decoder block (the training forward's code) over the per-layer KV caches of
`kv_cache.py`: token t of row b is written at cache entry positions[b, t]; attention reads entries [0, width).
"""

from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding

from tooln1_jax import parallel
from tooln1_jax.models import decode_attention, lora, qwen2
from tooln1_jax.models.qwen2 import Qwen2Config


@flax.struct.dataclass
class InferenceWeights:
    embed: jax.Array  # [V, E]
    layers: tuple  # one tree per layer: params["model"]["layers"] at that layer, (heads, head_dim) axes joined
    norm: jax.Array  # [E]
    head: jax.Array | None  # [E, V]; None when tied to the embedding

    @property
    def dtype(self):
        return self.embed.dtype


def _arrange(tree, logical, layer_of, join, num_layers: int, tied: bool) -> InferenceWeights:
    """The InferenceWeights structure from a params-shaped tree: layer_of(leaf, i) takes layer i of a stacked leaf,
    join(leaf, axis) joins its axes (axis, axis + 1) -- (heads, head_dim), found by the logical names `logical` --
    into one, so projections are plain matmuls (no per-step transposes)."""
    stacked = traverse_util.flatten_dict(tree["model"]["layers"])
    names = traverse_util.flatten_dict(logical["model"]["layers"])

    def leaf(path, i):
        axes = tuple(names[path])[1:]  # without "layers"
        x = layer_of(stacked[path], i)
        return join(x, axes.index("head_dim") - 1) if "head_dim" in axes else x

    layers = tuple(traverse_util.unflatten_dict({path: leaf(path, i) for path in stacked}) for i in range(num_layers))
    return InferenceWeights(embed=tree["model"]["embed_tokens"]["embedding"], layers=layers,
                            norm=tree["model"]["norm"]["scale"], head=None if tied else tree["lm_head"]["kernel"])


@functools.lru_cache(maxsize=16)
def _prepare_program(config: Qwen2Config, dtype: str, fsdp: bool, mesh: Mesh, treedef, in_shardings):
    logical = qwen2.abstract_params(config.replace(lora_rank=0))[1]  # the tree once adapters are merged
    rules = parallel.RULES if fsdp else tuple((n, None if n == "embed" else a) for n, a in parallel.RULES)
    n, tied = config.num_hidden_layers, config.tie_word_embeddings

    def convert(params):
        params = lora.merge(config, params)[1]  # LoRA adapters folded into this copy (a no-op without them)
        cast = jax.tree.map(lambda x: x.astype(dtype), params)
        return _arrange(cast, logical, lambda x, i: x[i],
                        lambda x, a: x.reshape(x.shape[:a] + (x.shape[a] * x.shape[a + 1],) + x.shape[a + 2:]), n, tied)

    out_shapes = jax.eval_shape(convert, qwen2.abstract_params(config)[0])
    out_names = _arrange(logical, logical, lambda names, i: tuple(names)[1:], lambda s, a: s[:a + 1] + s[a + 2:], n,
                         tied)
    out_shardings = jax.tree.map(
        lambda shape, names: NamedSharding(mesh, parallel.logical_to_spec(tuple(names), shape.shape, mesh, rules)),
        out_shapes, out_names)
    return jax.jit(convert, in_shardings=(jax.tree.unflatten(treedef, in_shardings),), out_shardings=out_shardings)


def mesh_of(params) -> Mesh:
    sharding = jax.tree.leaves(params)[0].sharding
    return sharding.mesh if isinstance(sharding, NamedSharding) else parallel.single_device_mesh()


def prepare(config: Qwen2Config, params, *, dtype: str | None = None, fsdp: bool = False,
            mesh: Mesh | None = None) -> InferenceWeights:
    """The decode layout of `params` in `dtype` (default: the compute dtype); see the module docstring."""
    if isinstance(params, InferenceWeights):
        return params
    dtype = dtype or config.dtype
    if dtype not in qwen2.DTYPES:
        raise ValueError(f"inference dtype must be float32, bfloat16 or float16, got {dtype!r}")
    mesh = mesh or mesh_of(params)
    leaves, treedef = jax.tree.flatten(params)
    shardings = tuple(x.sharding if isinstance(x.sharding, NamedSharding) else parallel.replicated(mesh)
                      for x in leaves)
    return _prepare_program(config, dtype, fsdp, mesh, treedef, shardings)(params)


# ---- the decoder over per-layer caches ---------------------------------------------------------------------------
def forward(config: Qwen2Config, w: InferenceWeights, tokens, positions, caches, width: int):
    """Final normalised hidden states [B, T, E] and the updated caches (a tuple of (k, v) per layer): qwen2's
    `decoder_layer` per layer, its attention over that layer's cache (`decode_attention.over_cache`)."""
    config = config.replace(dtype=jnp.dtype(w.dtype).name)  # computes in the weights' dtype
    cos, sin = qwen2.rope_cos_sin(positions, config.head_dim, config.rope_theta)
    x = qwen2.embed(config, w.embed, tokens)
    out = []
    for layer, cache in zip(w.layers, caches):
        x, cache = qwen2.decoder_layer(config, layer, x, cos, sin,
                                       decode_attention.over_cache(cache, positions, width))
        out.append(cache)
    return qwen2.rms_norm(config, x, w.norm), tuple(out)


def logits(w: InferenceWeights, hidden) -> jax.Array:
    """Float32 logits [..., V] from hidden states [..., E]."""
    if w.head is None:
        return jnp.einsum("...e,ve->...v", hidden, w.embed, preferred_element_type=jnp.float32)
    return jnp.einsum("...e,ev->...v", hidden, w.head, preferred_element_type=jnp.float32)
