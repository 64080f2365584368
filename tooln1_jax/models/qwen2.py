"""Qwen2 / Qwen2.5 and dense Qwen3 decoders: parameters declared with Flax, the model as plain functions.

Architecture (as transformers' `Qwen2ForCausalLM`): token embedding, N x [RMSNorm -> grouped-query attention with
rotary embeddings and q/k/v biases (no o bias) -> residual, RMSNorm -> SwiGLU MLP -> residual], final RMSNorm, LM head
(tied to the embedding or separate). Qwen3 (`Qwen3ForCausalLM`, `model_type` "qwen3") differs in its attention only:
an RMSNorm of each query and key head (over head_dim) between the projection and RoPE, and biases on q, k, v and o
together or not at all (`attention_bias`, off in the released models).

`decoder_layer` is the one block: its attention is a function passed in, so the training forward (`hidden_states`:
the layers stacked on a leading "layers" axis and run with `lax.scan`, one compile per shape whatever the depth;
attention by ids in `models/attention.py`) and the rollout's prefill and decode (`rollout/inference.py`: per-layer KV
caches, `models/decode_attention.py`) run the same code. Rotary positions are explicit per token.

Every parameter carries logical axis names (`vocab`, `embed`, `heads`, `kv_heads`, `head_dim`, `mlp`, `norm`,
`layers`); `tooln1_jax.parallel` maps them onto a device mesh.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from tooln1_jax.models import attention
from tooln1_jax.models.head import resolve as resolve_head
from tooln1_jax.parallel import constrain

Params = Any
HIDDEN = ("batch", "length", "act_embed")  # logical axes of activations: [B, T, E], [B, T, H, D], ...
HEADS = ("batch", "length", "act_heads", "head_dim")
KV_HEADS = ("batch", "length", "act_kv_heads", "head_dim")
MLP = ("batch", "length", "act_mlp")
REMAT_POLICIES = (False, True, "none", "dots", "full")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_SUFFIX = "_lora"  # the adapter of projection <name> is its sibling <name>_lora (models/lora.py)
DTYPES = ("float32", "bfloat16", "float16")  # compute and parameter dtypes
HF_SHAPE_KEYS = (  # the config.json keys `from_hf` requires
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
HF_ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}  # model_type -> transformers class
MODEL_TYPES = tuple(HF_ARCHITECTURES)
UNSUPPORTED_MOE = {"qwen2_moe": "Qwen2MoeForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}  # refused by name
QWEN3_HEAD_DIM = 128  # transformers' Qwen3Config default when config.json has no head_dim


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
    model_type: str = "qwen2"  # "qwen3": q/k RMSNorm per head before RoPE (`qk_norm`)
    attention_bias: bool = False  # Qwen3's biases on q, k, v and o (Qwen2 always has q/k/v biases, never an o bias)
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
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {self.model_type!r}")
        if self.attention_bias and self.model_type == "qwen2":
            raise ValueError("attention_bias is a qwen3 option: a qwen2 model has q/k/v biases and no o bias")
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
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name} must be one of {', '.join(DTYPES)}, got {getattr(self, name)!r}")

    @property
    def remat_policy(self) -> str:
        """"none", "dots" or "full" (True/False are the older spelling of full/none)."""
        return {True: "full", False: "none"}.get(self.remat, self.remat)

    @property
    def qk_norm(self) -> bool:
        """Qwen3's RMSNorm of each query and key head over head_dim, before RoPE."""
        return self.model_type == "qwen3"

    @property
    def qkv_bias(self) -> bool:
        """Biases on the q, k and v projections."""
        return self.model_type == "qwen2" or self.attention_bias

    def replace(self, **changes) -> "Qwen2Config":
        return dataclasses.replace(self, **changes)

    @property
    def num_params(self) -> int:
        e, f, v, l = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_hidden_layers
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        attn = 2 * e * q + 2 * e * kv + self.qkv_bias * (q + 2 * kv) + self.attention_bias * e
        layer = attn + self.qk_norm * 2 * self.head_dim + 3 * e * f + 2 * e
        return v * e + l * layer + e + (0 if self.tie_word_embeddings else e * v)

    # ---- Hugging Face config.json ------------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, hf: dict, *, source: str = "config.json", **runtime) -> "Qwen2Config":
        """Build from an HF `config.json` dict; a clear error for another architecture or an unsupported option."""
        model_type = _hf_model_type(hf, source)
        if hf.get("use_sliding_window"):
            raise ValueError(f"{source}: use_sliding_window=true is not supported")
        rope, scaling = hf.get("rope_parameters") or {}, hf.get("rope_scaling") or {}
        rope_type = scaling.get("rope_type", scaling.get("type")) or rope.get("rope_type", "default")
        if rope_type not in ("default", None):
            raise ValueError(f"{source}: rope scaling {rope_type!r} is not supported (only default RoPE)")
        missing = [k for k in HF_SHAPE_KEYS if k not in hf]
        if missing:
            raise ValueError(f"{source}: missing key(s) {missing}")
        qwen3 = model_type == "qwen3"
        return cls(
            **{k: int(hf[k]) for k in HF_SHAPE_KEYS},
            num_key_value_heads=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
            head_dim=hf.get("head_dim", QWEN3_HEAD_DIM if qwen3 else None),
            max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
            rope_theta=float(hf.get("rope_theta", rope.get("rope_theta", 10000.0))),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            model_type=model_type,
            attention_bias=qwen3 and bool(hf.get("attention_bias", False)),
            **runtime,
        )

    def to_hf(self) -> dict:
        """An HF `config.json` dict that transformers 4.x and 5.x read as the same Qwen2 or Qwen3 model."""
        return {
            "architectures": [HF_ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
            **{k: getattr(self, k) for k in HF_SHAPE_KEYS + ("num_key_value_heads", "head_dim")},
            **({"attention_bias": self.attention_bias} if self.model_type == "qwen3" else {}),
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


def _hf_model_type(hf: dict, source: str = "config.json") -> str:
    """The supported model_type ("qwen2" or "qwen3") of an HF config dict, by its model_type or else its
    architectures; a mixture-of-experts Qwen is refused by name, anything else with both supported types named."""
    model_type, archs = hf.get("model_type"), hf.get("architectures") or []
    moe = [name for name, arch in UNSUPPORTED_MOE.items() if model_type == name or arch in archs]
    if moe:
        raise ValueError(f"{source}: model_type {moe[0]!r} (architectures {archs}) is a mixture-of-experts model, "
                         "which is not supported; only dense decoders are")
    if model_type in HF_ARCHITECTURES:
        return model_type
    for name, arch in HF_ARCHITECTURES.items():
        if arch in archs:
            return name
    raise ValueError(f"{source}: model_type {model_type!r} (architectures {archs}) is not a Qwen2 or Qwen3 model; "
                     "only Qwen2/Qwen2.5 (model_type 'qwen2') and dense Qwen3 (model_type 'qwen3') decoders are "
                     "supported")


# ---- parameters ---------------------------------------------------------------------------------------------------
# Declared by one Linen module that holds no math, with the module names and creation order flax has always seen
# here, so a seed gives the same values; the model itself is the functions further down.
class _Param(NamedTuple):
    init: Any  # a flax initializer with logical axis names
    shape: tuple[int, ...]


class _Stacked(NamedTuple):
    """A submodule declared once per layer, stacked on a leading "layers" axis (one rng per layer)."""
    tree: tuple


def _normal(config: Qwen2Config, names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), names)


def _projection(config: Qwen2Config, name: str, in_shape: tuple[int, ...], in_axes: tuple[str, ...],
                out_shape: tuple[int, ...], out_axes: tuple[str, ...], bias: bool) -> tuple:
    """Projection `name` (kernel [*in, *out], bias [*out]) and, when it is a LoRA target, its adapter `<name>_lora`:
    a [in, rank] and b [rank, out] over the flattened dims (PEFT's init: a uniform with bound 1/sqrt(in), b zero, so
    a fresh adapter changes nothing)."""
    leaves = (("kernel", _Param(_normal(config, in_axes + out_axes), in_shape + out_shape)),)
    if bias:
        leaves += (("bias", _Param(nn.with_logical_partitioning(nn.initializers.zeros_init(), out_axes), out_shape)),)
    declared = ((name, leaves),)
    if config.lora_rank and name in config.lora_targets:
        a = nn.with_logical_partitioning(nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"), (None, None))
        b = nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, None))
        declared += ((f"{name}{LORA_SUFFIX}", (("a", _Param(a, (math.prod(in_shape), config.lora_rank))),
                                       ("b", _Param(b, (config.lora_rank, math.prod(out_shape)))))),)
    return declared


def _declarations(config: Qwen2Config) -> tuple:
    """The parameter tree as ((name, _Param | _Stacked | subtree), ...), HF's names: params["model"][...] and, when
    the head is untied, params["lm_head"]["kernel"]."""
    c = config
    e, f, h, kv, d = c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    ones = nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",))  # "norm": replicated
    norm, head_norm = (("scale", _Param(ones, (e,))),), (("scale", _Param(ones, (d,))),)
    attn = (_projection(c, "q_proj", (e,), ("embed",), (h, d), ("heads", "head_dim"), c.qkv_bias)
            + _projection(c, "k_proj", (e,), ("embed",), (kv, d), ("kv_heads", "head_dim"), c.qkv_bias)
            + _projection(c, "v_proj", (e,), ("embed",), (kv, d), ("kv_heads", "head_dim"), c.qkv_bias)
            + _projection(c, "o_proj", (h, d), ("heads", "head_dim"), (e,), ("embed",), c.attention_bias))
    # Qwen3's q/k norms: one scale over head_dim shared by all heads, on the "norm" axis (not "head_dim", which the
    # rollout's decode layout joins with the heads axis)
    if c.qk_norm:
        attn += (("q_norm", head_norm), ("k_norm", head_norm))
    mlp = (_projection(c, "gate_proj", (e,), ("embed",), (f,), ("mlp",), False)
           + _projection(c, "up_proj", (e,), ("embed",), (f,), ("mlp",), False)
           + _projection(c, "down_proj", (f,), ("mlp",), (e,), ("embed",), False))
    layer = (("input_layernorm", norm), ("self_attn", attn), ("post_attention_layernorm", norm), ("mlp", mlp))
    model = (("embed_tokens", (("embedding", _Param(_normal(c, ("vocab", "embed")), (c.vocab_size, e))),)),
             ("layers", _Stacked(layer)), ("norm", norm))
    lm_head = (("lm_head", (("kernel", _Param(_normal(c, ("embed", "vocab")), (e, c.vocab_size))),)),)
    return (("model", model),) + (() if c.tie_word_embeddings else lm_head)


class _Declare(nn.Module):
    """Creates the parameters of `tree` (see `_declarations`) in order; computes nothing."""

    config: Qwen2Config
    tree: tuple

    @nn.compact
    def __call__(self, carry=None):
        for name, node in self.tree:
            if isinstance(node, _Param):
                self.param(name, node.init, node.shape, self.config.param_dtype)
            elif isinstance(node, _Stacked):
                stacked = nn.scan(_Declare, variable_axes={"params": 0}, split_rngs={"params": True},
                                  length=self.config.num_hidden_layers,
                                  metadata_params={nn.PARTITION_NAME: "layers"})
                stacked(self.config, node.tree, name=name)(None)
            else:
                _Declare(self.config, node, name=name)()
        return carry, None


def _init_boxed(config: Qwen2Config, rng: jax.Array):
    return _Declare(config, _declarations(config)).init(rng)["params"]


def init_params(config: Qwen2Config, rng: jax.Array) -> Params:
    """Randomly initialised parameters (unboxed plain arrays), as HF initialises: normal(0.02), zero biases."""
    return nn.meta.unbox(_init_boxed(config, rng))


def abstract_params(config: Qwen2Config):
    """(shapes, logical axes) without allocating: a tree of ShapeDtypeStruct and one of PartitionSpecs whose
    entries are logical axis names (`parallel.shardings` maps them onto a mesh)."""
    boxed = jax.eval_shape(lambda: _init_boxed(config, jax.random.key(0)))
    return nn.meta.unbox(boxed), nn.get_partition_spec(boxed)


# ---- the decoder ---------------------------------------------------------------------------------------------------
def embed(config: Qwen2Config, table: jax.Array, tokens: jax.Array) -> jax.Array:
    """Token embeddings [..., E] (compute dtype) from the table [V, E] (token ids are trusted to be in range)."""
    return table.astype(config.dtype)[tokens]


def rms_norm(config: Qwen2Config, x: jax.Array, scale: jax.Array) -> jax.Array:
    """RMSNorm in float32, scaled in the compute dtype."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + config.rms_norm_eps)
    return y.astype(config.dtype) * scale.astype(config.dtype)


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


def _linear(config: Qwen2Config, p: Params, name: str, x: jax.Array, in_dims: int = 1) -> jax.Array:
    """Projection `name` of the module params `p`: x's trailing `in_dims` dims contracted with the kernel's leading
    ones, plus the bias and, when `p` holds the adapter `<name>_lora`, the LoRA update (x a) b * alpha / rank over
    the flattened dims. Each kernel contracts in its own layout (training's [E, H, D] and [H, D, E], the rollout's
    merged [E, H * D] and [H * D, E]); that keeps the training gradients those of flax's DenseGeneral to the bit."""
    dtype = config.dtype
    w = p[name]
    contract = tuple(range(x.ndim - in_dims, x.ndim)), tuple(range(in_dims))
    y = jax.lax.dot_general(x.astype(dtype), w["kernel"].astype(dtype), (contract, ((), ())))
    if "bias" in w:
        y = y + w["bias"].astype(dtype)
    adapter = p.get(f"{name}{LORA_SUFFIX}")
    if adapter is not None:
        a, b = adapter["a"], adapter["b"]
        flat = x.reshape(*x.shape[:x.ndim - in_dims], -1)
        y = y + (((flat @ a.astype(dtype)) @ b.astype(dtype)) * (config.lora_alpha / a.shape[-1])).reshape(y.shape)
    return y


# attend(q [B, T, H, D], k, v [B, T, KV, D]) -> (out [B, T, H, D], aux): the block's attention over its keys, e.g.
# a packed row's mask (training) or a KV cache it writes and reads (rollout; aux = the updated cache)
Attend = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, Any]]


def decoder_layer(config: Qwen2Config, p: Params, x: jax.Array, cos: jax.Array, sin: jax.Array, attend: Attend):
    """One block on x [B, T, E] with rotary cos/sin [B, T, D]: x + attention(norm(x)), then + mlp(norm(x)).
    `p` is one layer of params["model"]["layers"]; returns (x, aux of `attend`)."""
    b, t = x.shape[:2]
    h, kv, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    attn, mlp = p["self_attn"], p["mlp"]
    normed = rms_norm(config, x, p["input_layernorm"]["scale"])
    heads = lambda name, n: _linear(config, attn, name, normed).reshape(b, t, n, d)  # noqa: E731
    q, k = heads("q_proj", h), heads("k_proj", kv)
    if config.qk_norm:
        q, k = rms_norm(config, q, attn["q_norm"]["scale"]), rms_norm(config, k, attn["k_norm"]["scale"])
    q = constrain(apply_rope(q, cos, sin), HEADS)
    k = constrain(apply_rope(k, cos, sin), KV_HEADS)
    v = constrain(heads("v_proj", kv), KV_HEADS)
    out, aux = attend(q, k, v)
    o_in = attn["o_proj"]["kernel"].shape[:-1]  # (H, D) or the rollout's (H * D,)
    out = constrain(out, HEADS).reshape(b, t, *o_in)
    x = constrain(x + _linear(config, attn, "o_proj", out, in_dims=len(o_in)), HIDDEN)
    normed = rms_norm(config, x, p["post_attention_layernorm"]["scale"])
    gate = constrain(_linear(config, mlp, "gate_proj", normed), MLP)
    up = constrain(_linear(config, mlp, "up_proj", normed), MLP)
    return constrain(x + _linear(config, mlp, "down_proj", jax.nn.silu(gate) * up), HIDDEN), aux


def _default_positions(real: jax.Array) -> jax.Array:
    """Position of each token = number of real tokens before it in its row."""
    return jnp.maximum(jnp.cumsum(real.astype(jnp.int32), axis=1) - 1, 0)


def hidden_states(config: Qwen2Config, params: Params, tokens: jax.Array, *, positions: jax.Array | None = None,
                  attention_mask: jax.Array | None = None, segment_ids: jax.Array | None = None,
                  prefix_ids: jax.Array | None = None) -> jax.Array:
    """Final normalised hidden states [B, T, E] in the compute dtype from tokens int32 [B, T]; the layers run under
    `lax.scan`.

    Packed rows give `segment_ids`, `prefix_ids` and `positions` [B, T] (the mask rule of models/attention.py).
    Plain rows give `attention_mask` (1 = real token; default all real) and optionally `positions` (default: the
    count of real tokens before each, so left and right padding both work); they run as packed rows whose real
    tokens are segment 1 and padding segment 0, all with prefix 0."""
    tokens = jnp.asarray(tokens, jnp.int32)
    if segment_ids is None:
        if prefix_ids is not None:
            raise ValueError("prefix_ids without segment_ids: packed rows need positions, segment_ids and prefix_ids")
        real = jnp.ones(tokens.shape, bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
        segment_ids, prefix_ids = real.astype(jnp.int32), jnp.zeros(tokens.shape, jnp.int32)
        positions = _default_positions(real) if positions is None else positions
    elif positions is None or prefix_ids is None or attention_mask is not None:
        raise ValueError("packed rows need positions, segment_ids and prefix_ids together (and no attention_mask)")
    ids = jnp.asarray(segment_ids, jnp.int32), jnp.asarray(prefix_ids, jnp.int32)
    cos, sin = rope_cos_sin(jnp.asarray(positions, jnp.int32), config.head_dim, config.rope_theta)
    attend = lambda q, k, v: (attention.attend(q, k, v, *ids, implementation=config.attention), None)  # noqa: E731

    def layer(x, p):
        return decoder_layer(config, p, x, cos, sin, attend)[0], None

    if config.remat_policy != "none":
        policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable if config.remat_policy == "dots" else None
        layer = jax.checkpoint(layer, prevent_cse=False, policy=policy)
    model = params["model"]
    x = constrain(embed(config, model["embed_tokens"]["embedding"], tokens), HIDDEN)
    x, _ = jax.lax.scan(layer, x, model["layers"])
    return rms_norm(config, x, model["norm"]["scale"])


def apply_head(config: Qwen2Config, params: Params, hidden: jax.Array) -> jax.Array:
    """Logits [..., V] in float32 from hidden states [..., E]."""
    tied = config.tie_word_embeddings
    w = params["model"]["embed_tokens"]["embedding"].T if tied else params["lm_head"]["kernel"]  # [E, V]
    logits = jnp.einsum("...e,ev->...v", hidden.astype(config.dtype), w.astype(config.dtype),
                        preferred_element_type=jnp.float32)
    return constrain(logits, ("batch",) + (None,) * (logits.ndim - 2) + ("act_vocab",))


def forward(config: Qwen2Config, params: Params, tokens: jax.Array, **inputs) -> jax.Array:
    """Logits float32 [B, T, V]; tokens and the keyword `inputs` (positions, attention_mask, segment_ids,
    prefix_ids) as `hidden_states`."""
    return apply_head(config, params, hidden_states(config, params, tokens, **inputs))
