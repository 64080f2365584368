"""Qwen2 / Qwen2.5 decoder in Flax Linen, with a functional entry point.

Architecture (as transformers' `Qwen2ForCausalLM`): token embedding, N x [RMSNorm -> grouped-query attention with
rotary embeddings and q/k/v biases (no o bias) -> residual, RMSNorm -> SwiGLU MLP -> residual], final RMSNorm, LM head
(tied to the embedding or separate). Layers are stacked along a leading "layers" axis and run with `nn.scan`, so the
program compiles once per shape whatever the depth.

Every parameter carries logical axis names (`vocab`, `embed`, `heads`, `kv_heads`, `head_dim`, `mlp`, `norm`,
`layers`); `tooln1_jax.parallel` maps them onto a device mesh.

Attention works on "slots": without a cache the slots are the input positions; with a `KVCache` the new tokens are
written at slots `[cache.index, cache.index + T)` and attend to every earlier valid slot. Rotary positions are
explicit per token, so left-padded, right-padded and cached batches all get the right positions. Packed training
rows (no cache) give `segment_ids`/`prefix_ids` instead, and attention goes through `models/attention.py`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tooln1_jax.models import attention
from tooln1_jax.models.head import resolve as resolve_head
from tooln1_jax.parallel import constrain

Params = Any
HIDDEN = ("batch", "length", "act_embed")  # logical axes of [B, T, E] activations
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)  # finite: fully masked rows give a uniform softmax, not NaN
REMAT_POLICIES = (False, True, "none", "dots", "full")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    """Architecture plus the run-time numerics (compute/param dtypes, rematerialisation)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None = None
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat: bool | str = False  # backward-pass recomputation: none/False, dots (keep matmul outputs), full/True
    attention: str = "auto"  # no-cache attention with segment/prefix ids: see models/attention.py
    head: str = "auto"  # training log-probs: auto | chunked | tiled (train/sequences.py, models/head.py)
    # LoRA adapters (models/lora.py) on the `lora_targets` projections: rank 0 = none
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self):
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                                 f"num_attention_heads {self.num_attention_heads}")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be one of {', '.join(map(str, REMAT_POLICIES))}, got {self.remat!r}")
        attention.resolve(self.attention)
        resolve_head(self.head)
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank}")
        unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
        if unknown or (self.lora_rank and not self.lora_targets):
            raise ValueError(f"lora_targets must be a non-empty subset of {', '.join(LORA_TARGETS)}; got "
                             f"{list(self.lora_targets)}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"{name} must be float32, bfloat16 or float16, got {getattr(self, name)!r}")

    @property
    def remat_policy(self) -> str:
        """"none", "dots" or "full" (True/False are the older spelling of full/none)."""
        return {True: "full", False: "none"}.get(self.remat, self.remat)

    def replace(self, **changes) -> "Qwen2Config":
        return dataclasses.replace(self, **changes)

    @property
    def num_params(self) -> int:
        e, f, v, l = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_hidden_layers
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        attn = e * q + q + 2 * (e * kv + kv) + q * e
        layer = attn + 3 * e * f + 2 * e
        return v * e + l * layer + e + (0 if self.tie_word_embeddings else e * v)

    # ---- Hugging Face config.json ------------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, hf: dict, *, source: str = "config.json", **runtime) -> "Qwen2Config":
        """Build from an HF `config.json` dict; a clear error for another architecture or an unsupported option."""
        model_type = hf.get("model_type")
        archs = hf.get("architectures") or []
        if model_type != "qwen2" and "Qwen2ForCausalLM" not in archs:
            raise ValueError(f"{source}: model_type {model_type!r} (architectures {archs}) is not a Qwen2 model; "
                             "only Qwen2/Qwen2.5 decoders (model_type 'qwen2') are supported")
        if hf.get("use_sliding_window"):
            raise ValueError(f"{source}: use_sliding_window=true is not supported")
        rope = hf.get("rope_parameters") or {}
        scaling = hf.get("rope_scaling")
        rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type")) or rope.get("rope_type", "default")
        if rope_type not in ("default", None):
            raise ValueError(f"{source}: rope scaling {rope_type!r} is not supported (only default RoPE)")
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if k not in hf]
        if missing:
            raise ValueError(f"{source}: missing key(s) {missing}")
        return cls(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_hidden_layers=int(hf["num_hidden_layers"]),
            num_attention_heads=int(hf["num_attention_heads"]),
            num_key_value_heads=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
            head_dim=hf.get("head_dim"),
            max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
            rope_theta=float(hf.get("rope_theta", rope.get("rope_theta", 10000.0))),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            **runtime,
        )

    def to_hf(self) -> dict:
        """An HF `config.json` dict that transformers 4.x and 5.x read as the same Qwen2 model."""
        return {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "use_sliding_window": False,
            "sliding_window": None,
            "attention_dropout": 0.0,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "torch_dtype": self.param_dtype,
            "use_cache": True,
        }


@flax.struct.dataclass
class KVCache:
    """Keys/values of every layer at every slot, which slots hold real tokens, and the next slot to write.

    k, v: [layers, batch, slots, kv_heads, head_dim] (compute dtype); valid: [batch, slots] bool; index: int32 [].
    """

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    index: jax.Array

    @property
    def num_slots(self) -> int:
        return self.k.shape[2]


def init_cache(config: Qwen2Config, batch: int, num_slots: int) -> KVCache:
    shape = (config.num_hidden_layers, batch, num_slots, config.num_key_value_heads, config.head_dim)
    return KVCache(k=jnp.zeros(shape, config.dtype), v=jnp.zeros(shape, config.dtype),
                   valid=jnp.zeros((batch, num_slots), bool), index=jnp.zeros((), jnp.int32))


CACHE_LOGICAL_AXES = KVCache(k=("layers", "batch", "length", "kv_heads", "head_dim"),
                             v=("layers", "batch", "length", "kv_heads", "head_dim"),
                             valid=("batch", "length"), index=())


# ---- layers ------------------------------------------------------------------------------------------------------
def _init(config: Qwen2Config, names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), names)


def _zeros(names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


class LoRA(nn.Module):
    """The low-rank update of one projection, x -> (x A) B * alpha / rank over its flattened input and output
    (PEFT's conventions: A uniform with bound 1/sqrt(fan_in), B zero, so a fresh adapter changes nothing)."""

    config: Qwen2Config
    in_dims: int  # trailing input dims of x the projection contracts
    out_shape: tuple[int, ...]

    @nn.compact
    def __call__(self, x):
        c = self.config
        lead = x.shape[:x.ndim - self.in_dims]
        x = x.reshape(*lead, -1)
        a = self.param("a", nn.with_logical_partitioning(nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                                                         (None, None)), (x.shape[-1], c.lora_rank), c.param_dtype)
        b = self.param("b", nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, None)),
                       (c.lora_rank, math.prod(self.out_shape)), c.param_dtype)
        y = (x @ a.astype(c.dtype)) @ b.astype(c.dtype)
        return (y * (c.lora_alpha / c.lora_rank)).reshape(*lead, *self.out_shape)


def _with_lora(config: Qwen2Config, name: str, y, x, in_dims: int, out_shape: tuple[int, ...]):
    """y (the projection `name` of x) plus its adapter's update when `name` is a LoRA target. Call inside the
    module that owns the projection: the adapter is its sibling `<name>_lora`."""
    if not config.lora_rank or name not in config.lora_targets:
        return y
    return y + LoRA(config, in_dims, out_shape, name=f"{name}_lora")(x)


class RMSNorm(nn.Module):
    config: Qwen2Config

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                           (x.shape[-1],), self.config.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.config.rms_norm_eps)
        return y.astype(self.config.dtype) * scale.astype(self.config.dtype)


def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin [batch, time, head_dim] in float32 for integer positions [batch, time] (HF 'default' RoPE)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [batch, time, heads, head_dim]; rotate-half convention of HF Qwen2."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


class Attention(nn.Module):
    config: Qwen2Config

    @nn.compact
    def __call__(self, x, cos, sin, mask, layer, cache_kv, write_index):
        c = self.config
        h, kv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim

        def proj(name, heads, axis_name):
            y = nn.DenseGeneral((heads, d), use_bias=True, dtype=c.dtype, param_dtype=c.param_dtype,
                                kernel_init=_init(c, ("embed", axis_name, "head_dim")),
                                bias_init=_zeros((axis_name, "head_dim")), name=name)(x)
            return _with_lora(c, name, y, x, 1, (heads, d))

        heads_axes = ("batch", "length", "act_heads", "head_dim")
        kv_axes = ("batch", "length", "act_kv_heads", "head_dim")
        q = constrain(apply_rope(proj("q_proj", h, "heads"), cos, sin), heads_axes)  # [B, T, H, D]
        k = constrain(apply_rope(proj("k_proj", kv, "kv_heads"), cos, sin), kv_axes)  # [B, T, KV, D]
        v = constrain(proj("v_proj", kv, "kv_heads"), kv_axes)
        if cache_kv is not None:  # write the new keys/values at their slots, then attend over all slots
            cache_k, cache_v = cache_kv
            at = (layer, 0, write_index, 0, 0)
            cache_k = jax.lax.dynamic_update_slice(cache_k, k[None].astype(cache_k.dtype), at)
            cache_v = jax.lax.dynamic_update_slice(cache_v, v[None].astype(cache_v.dtype), at)
            k = jax.lax.dynamic_index_in_dim(cache_k, layer, 0, keepdims=False)
            v = jax.lax.dynamic_index_in_dim(cache_v, layer, 0, keepdims=False)
            cache_kv = (cache_k, cache_v)

        b, t = q.shape[:2]
        if isinstance(mask, tuple):  # (segment_ids, prefix_ids) of packed rows, no cache
            out = attention.attend(q, k, v, *mask, implementation=c.attention)
            return self._out(constrain(out, heads_axes)), cache_kv
        q = q.reshape(b, t, kv, h // kv, d)  # query heads grouped by the KV head they share
        scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * (d ** -0.5)
        scores = jnp.where(mask[:, None, None, :, :], scores, _MASK_VALUE)
        probs = jax.nn.softmax(scores, axis=-1).astype(c.dtype)
        out = constrain(jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, h, d), heads_axes)
        return self._out(out), cache_kv

    @nn.nowrap
    def _out(self, out):
        c = self.config
        y = nn.DenseGeneral(c.hidden_size, axis=(-2, -1), use_bias=False, dtype=c.dtype,
                            param_dtype=c.param_dtype, kernel_init=_init(c, ("heads", "head_dim", "embed")),
                            name="o_proj")(out)
        return _with_lora(c, "o_proj", y, out, 2, (c.hidden_size,))


class MLP(nn.Module):
    config: Qwen2Config

    @nn.compact
    def __call__(self, x):
        c = self.config

        def dense(name, features, axes, inp):
            y = nn.Dense(features, use_bias=False, dtype=c.dtype, param_dtype=c.param_dtype,
                         kernel_init=_init(c, axes), name=name)(inp)
            return _with_lora(c, name, y, inp, 1, (features,))

        mlp_axes = ("batch", "length", "act_mlp")
        gate = constrain(dense("gate_proj", c.intermediate_size, ("embed", "mlp"), x), mlp_axes)
        up = constrain(dense("up_proj", c.intermediate_size, ("embed", "mlp"), x), mlp_axes)
        return dense("down_proj", c.hidden_size, ("mlp", "embed"), nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    """One block; called by `nn.scan` with carry (hidden, cache_kv) and the layer index as the scanned input."""

    config: Qwen2Config

    @nn.compact
    def __call__(self, carry, layer, cos, sin, mask, write_index):
        x, cache_kv = carry
        attn_out, cache_kv = Attention(self.config, name="self_attn")(
            RMSNorm(self.config, name="input_layernorm")(x), cos, sin, mask, layer, cache_kv, write_index)
        x = constrain(x + attn_out, HIDDEN)
        mlp_out = MLP(self.config, name="mlp")(RMSNorm(self.config, name="post_attention_layernorm")(x))
        x = constrain(x + mlp_out, HIDDEN)
        return (x, cache_kv), None


class Qwen2Model(nn.Module):
    """Returns the final normalised hidden states [B, T, E] and the updated cache (or None)."""

    config: Qwen2Config

    @nn.compact
    def __call__(self, tokens, positions, attention_mask, cache: KVCache | None, segment_ids=None, prefix_ids=None):
        c = self.config
        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=c.dtype, param_dtype=c.param_dtype,
                         embedding_init=_init(c, ("vocab", "embed")), name="embed_tokens")
        x = constrain(embed(tokens), HIDDEN)
        b, t = tokens.shape
        if cache is None:
            write_index, valid, cache_kv = 0, attention_mask, None
            query_slots = jnp.arange(t)
        else:
            write_index = cache.index
            valid = jax.lax.dynamic_update_slice(cache.valid, attention_mask, (0, write_index))
            cache_kv = (cache.k, cache.v)
            query_slots = write_index + jnp.arange(t)
        key_slots = jnp.arange(valid.shape[1])
        mask = (key_slots[None, :] <= query_slots[:, None])[None] & valid[:, None, :]  # [B, T, S]
        if segment_ids is not None:  # packed rows: the attention kernel builds the mask from the ids
            if cache is not None:
                raise ValueError("segment_ids/prefix_ids are for the no-cache (training) path only")
            mask = (segment_ids, prefix_ids)
        cos, sin = rope_cos_sin(positions, c.head_dim, c.rope_theta)

        layer_cls = DecoderLayer
        if c.remat_policy != "none":
            policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable if c.remat_policy == "dots" else None
            layer_cls = nn.remat(DecoderLayer, prevent_cse=False, policy=policy)
        layers = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                         in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                         length=c.num_hidden_layers, metadata_params={nn.PARTITION_NAME: "layers"})
        (x, cache_kv), _ = layers(c, name="layers")((x, cache_kv), jnp.arange(c.num_hidden_layers),
                                                    cos, sin, mask, write_index)
        x = RMSNorm(c, name="norm")(x)
        if cache is not None:
            cache = KVCache(k=cache_kv[0], v=cache_kv[1], valid=valid, index=cache.index + t)
        return x, cache


class LMHead(nn.Module):
    """Declares the untied output projection [embed, vocab]; the product itself is `apply_head`."""

    config: Qwen2Config

    @nn.compact
    def __call__(self):
        c = self.config
        return self.param("kernel", _init(c, ("embed", "vocab")), (c.hidden_size, c.vocab_size), c.param_dtype)


class Qwen2ForCausalLM(nn.Module):
    """The parameter tree mirrors HF names: params["model"][...] and, when untied, params["lm_head"]["kernel"]."""

    config: Qwen2Config

    @nn.compact
    def __call__(self, tokens, positions, attention_mask, cache=None, segment_ids=None, prefix_ids=None):
        hidden, cache = Qwen2Model(self.config, name="model")(tokens, positions, attention_mask, cache, segment_ids,
                                                              prefix_ids)
        if not self.config.tie_word_embeddings:
            LMHead(self.config, name="lm_head")()  # created at init; applied by `apply_head`
        return hidden, cache


# ---- functional API ----------------------------------------------------------------------------------------------
def _default_positions(attention_mask: jax.Array, cache: KVCache | None) -> jax.Array:
    """Position of each token = number of real tokens before it in its row (cached ones included)."""
    before = 0 if cache is None else jnp.sum(cache.valid, axis=1, keepdims=True, dtype=jnp.int32)
    return jnp.maximum(before + jnp.cumsum(attention_mask.astype(jnp.int32), axis=1) - 1, 0)


def hidden_states(config: Qwen2Config, params: Params, tokens: jax.Array, *, positions: jax.Array | None = None,
                  attention_mask: jax.Array | None = None, cache: KVCache | None = None,
                  segment_ids: jax.Array | None = None, prefix_ids: jax.Array | None = None):
    """Final normalised hidden states [B, T, E] (compute dtype) and the updated cache.

    Packed rows (no cache): `segment_ids` and `prefix_ids` [B, T] give the mask (models/attention.py) instead of
    `attention_mask`, and `positions` must be given."""
    tokens = jnp.asarray(tokens, jnp.int32)
    if segment_ids is not None:
        if positions is None or prefix_ids is None:
            raise ValueError("packed rows need positions, segment_ids and prefix_ids together")
        ids = (jnp.asarray(segment_ids, jnp.int32), jnp.asarray(prefix_ids, jnp.int32))
        return Qwen2ForCausalLM(config).apply({"params": params}, tokens, jnp.asarray(positions, jnp.int32),
                                              jnp.ones(tokens.shape, bool), cache, *ids)
    mask = jnp.ones(tokens.shape, bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
    if positions is None:
        positions = _default_positions(mask, cache)
    return Qwen2ForCausalLM(config).apply({"params": params}, tokens, jnp.asarray(positions, jnp.int32), mask, cache)


def apply_head(config: Qwen2Config, params: Params, hidden: jax.Array) -> jax.Array:
    """Logits [..., V] in float32 from hidden states [..., E]."""
    if config.tie_word_embeddings:
        w = params["model"]["embed_tokens"]["embedding"].T  # [E, V]
    else:
        w = params["lm_head"]["kernel"]
    logits = jnp.einsum("...e,ev->...v", hidden.astype(config.dtype), w.astype(config.dtype),
                        preferred_element_type=jnp.float32)
    return constrain(logits, ("batch",) + (None,) * (logits.ndim - 2) + ("act_vocab",))


def forward(config: Qwen2Config, params: Params, tokens: jax.Array, *, positions: jax.Array | None = None,
            attention_mask: jax.Array | None = None, cache: KVCache | None = None,
            segment_ids: jax.Array | None = None, prefix_ids: jax.Array | None = None):
    """Logits float32 [B, T, V] and the updated cache (None when no cache was given).

    tokens int32 [B, T]; attention_mask 1 for real tokens (default: all real); positions int32 [B, T] (default: the
    count of real tokens before each one, so left and right padding both work).
    """
    hidden, cache = hidden_states(config, params, tokens, positions=positions, attention_mask=attention_mask,
                                  cache=cache, segment_ids=segment_ids, prefix_ids=prefix_ids)
    return apply_head(config, params, hidden), cache


def init_params(config: Qwen2Config, rng: jax.Array) -> Params:
    """Randomly initialised parameters (unboxed plain arrays), as HF initialises: normal(0.02), zero biases."""
    return nn.meta.unbox(_init_boxed(config, rng))


def _init_boxed(config: Qwen2Config, rng: jax.Array):
    tokens = jnp.zeros((1, 1), jnp.int32)
    return Qwen2ForCausalLM(config).init(rng, tokens, tokens, tokens.astype(bool))["params"]


def abstract_params(config: Qwen2Config):
    """(shapes, logical axes) without allocating: a tree of ShapeDtypeStruct and one of PartitionSpecs whose
    entries are logical axis names (`parallel.shardings` maps them onto a mesh)."""
    boxed = jax.eval_shape(lambda: _init_boxed(config, jax.random.key(0)))
    return nn.meta.unbox(boxed), nn.get_partition_spec(boxed)
