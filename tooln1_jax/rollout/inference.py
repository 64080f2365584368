"""The rollout's copy of the weights and the decoder forward that reads it.

`prepare` turns the training parameters (layers stacked on a leading axis, FSDP-sharded, param dtype) into
`InferenceWeights`: one dict of arrays per layer (a stacked weight sliced inside a step is copied there), in the
rollout dtype, without the FSDP axis (tensor parallel stays), LoRA adapters merged into the weights, so a decode
step reads each weight once and gathers nothing. It is made once per training step; it costs one model's worth of memory in that dtype (the whole model on
every device of an FSDP group) unless `fsdp=True` keeps the FSDP axis.

`forward` is the Qwen2 decoder (same math as `models.qwen2`, tested against it and transformers) over per-layer KV
caches [rows, kv_heads, capacity, head_dim]: token t of row b sits at position positions[b, t] and its keys/values
are written at that cache entry; attention reads entries [0, width).
"""

from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from tooln1_jax import parallel
from tooln1_jax.models import decode_attention, lora, qwen2
from tooln1_jax.models.qwen2 import Qwen2Config

_LAYER_LEAVES = {  # name in InferenceWeights.layers[i] -> path under params["model"]["layers"]
    "input_norm": ("input_layernorm", "scale"), "post_norm": ("post_attention_layernorm", "scale"),
    "q": ("self_attn", "q_proj", "kernel"), "q_bias": ("self_attn", "q_proj", "bias"),
    "k": ("self_attn", "k_proj", "kernel"), "k_bias": ("self_attn", "k_proj", "bias"),
    "v": ("self_attn", "v_proj", "kernel"), "v_bias": ("self_attn", "v_proj", "bias"),
    "o": ("self_attn", "o_proj", "kernel"), "gate": ("mlp", "gate_proj", "kernel"),
    "up": ("mlp", "up_proj", "kernel"), "down": ("mlp", "down_proj", "kernel")}


@flax.struct.dataclass
class InferenceWeights:
    embed: jax.Array  # [V, E]
    layers: tuple  # one dict per layer (keys of _LAYER_LEAVES)
    norm: jax.Array  # [E]
    head: jax.Array | None  # [E, V]; None when tied to the embedding

    @property
    def dtype(self):
        return self.embed.dtype

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes for x in jax.tree.leaves(self))


_MERGED = {"q": 1, "k": 1, "v": 1, "o": 0, "q_bias": 0, "k_bias": 0, "v_bias": 0}  # (heads, head_dim) at this axis


def _arrange(tree, layer_of, num_layers: int, tied: bool, merge) -> InferenceWeights:
    """The InferenceWeights structure from a params-shaped tree; layer_of(leaf, i) takes layer i of a stacked leaf,
    merge(leaf, axis) joins its (heads, head_dim) axes at `axis` into one (plain matmuls, no per-step transposes)."""
    def get(name, path, i):
        node = tree["model"]["layers"]
        for key in path:
            node = node[key]
        leaf = layer_of(node, i)
        return merge(leaf, _MERGED[name]) if name in _MERGED else leaf

    layers = tuple({name: get(name, path, i) for name, path in _LAYER_LEAVES.items()} for i in range(num_layers))
    return InferenceWeights(embed=tree["model"]["embed_tokens"]["embedding"], layers=layers,
                            norm=tree["model"]["norm"]["scale"], head=None if tied else tree["lm_head"]["kernel"])


@functools.lru_cache(maxsize=16)
def _prepare_program(config: Qwen2Config, dtype: str, fsdp: bool, mesh: Mesh, treedef, in_shardings):
    shapes, logical = qwen2.abstract_params(config)
    rules = parallel.RULES if fsdp else tuple((n, None if n == "embed" else a) for n, a in parallel.RULES)
    n, tied = config.num_hidden_layers, config.tie_word_embeddings
    out_shapes = _arrange(shapes, lambda s, i: s.shape[1:], n, tied,
                          lambda s, a: s[:a] + (s[a] * s[a + 1],) + s[a + 2:])
    out_names = _arrange(logical, lambda names, i: tuple(names)[1:], n, tied, lambda s, a: s[:a + 1] + s[a + 2:])
    out_shardings = jax.tree.map(
        lambda shape, names: NamedSharding(mesh, parallel.logical_to_spec(
            tuple(names), getattr(shape, "shape", shape), mesh, rules)),
        out_shapes, out_names, is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(a, int) for a in x))

    def convert(params):
        params = lora.merge(config, params)[1]  # LoRA adapters folded into this copy (a no-op without them)
        cast = jax.tree.map(lambda x: x.astype(dtype), params)
        return _arrange(cast, lambda x, i: x[i], n, tied,
                        lambda x, a: x.reshape(x.shape[:a] + (x.shape[a] * x.shape[a + 1],) + x.shape[a + 2:]))

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
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"inference dtype must be float32, bfloat16 or float16, got {dtype!r}")
    mesh = mesh or mesh_of(params)
    leaves, treedef = jax.tree.flatten(params)
    shardings = tuple(x.sharding if isinstance(x.sharding, NamedSharding) else parallel.replicated(mesh)
                      for x in leaves)
    return _prepare_program(config, dtype, fsdp, mesh, treedef, shardings)(params)


# ---- the decoder over per-layer caches ---------------------------------------------------------------------------
def _rms(config: Qwen2Config, x, scale):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + config.rms_norm_eps)
    return y.astype(scale.dtype) * scale


def forward(config: Qwen2Config, w: InferenceWeights, tokens, positions, caches, width: int):
    """Final normalised hidden states [B, T, E] and the updated caches (a tuple of (k, v) per layer)."""
    x = w.embed[tokens]
    b, t, d = *tokens.shape, config.head_dim
    cos, sin = qwen2.rope_cos_sin(positions, config.head_dim, config.rope_theta)
    out = []
    for lw, (ck, cv) in zip(w.layers, caches):
        h = _rms(config, x, lw["input_norm"])
        proj = lambda name, heads: (h @ lw[name] + lw[name + "_bias"]).reshape(b, t, heads, d)  # noqa: E731
        q = qwen2.apply_rope(proj("q", config.num_attention_heads), cos, sin)
        k = qwen2.apply_rope(proj("k", config.num_key_value_heads), cos, sin)
        v = proj("v", config.num_key_value_heads)
        ck, cv = decode_attention.write(ck, k, positions), decode_attention.write(cv, v, positions)
        attn = decode_attention.attend(q, ck, cv, positions, width)
        x = x + attn.reshape(b, t, -1) @ lw["o"]
        h = _rms(config, x, lw["post_norm"])
        x = x + jnp.einsum("btf,fe->bte", jax.nn.silu(h @ lw["gate"]) * (h @ lw["up"]), lw["down"])
        out.append((ck, cv))
    return _rms(config, x, w.norm), tuple(out)


def logits(w: InferenceWeights, hidden) -> jax.Array:
    """Float32 logits [..., V] from hidden states [..., E]."""
    if w.head is None:
        return jnp.einsum("...e,ve->...v", hidden, w.embed, preferred_element_type=jnp.float32)
    return jnp.einsum("...e,ev->...v", hidden, w.head, preferred_element_type=jnp.float32)
