"""Attention of the training (no-cache) path with the mask given as ids: one reference, faster kernels.

The mask of a packed row (see `train/packing.py`): query i sees key j when
    segment_ids[j] == segment_ids[i]  and  j <= i  and  (prefix_ids[j] == 0 or prefix_ids[j] == prefix_ids[i])
i.e. the same group, causal order, and keys of the shared prompt (prefix 0) or of the query's own reply. A plain
causal row is segment 1, prefix 0 everywhere. Every row must let each token see itself (true for this rule).

Implementations (all take q [B, T, H, D], k/v [B, T, KV, D] with H a multiple of KV, and return [B, T, H, D]):
- "dense": `reference` (`grouped`, the dense core the KV-cache path shares), float32 scores [B, H, T, T];
  what every other one is tested against; the CPU default.
- "blockwise": keys in blocks of `BLOCK`, online softmax, and a hand-written backward that recomputes each block
  (flash-attention style), so no [H, T, T] array exists in either pass; the default on accelerators.
- "xla": `jax.nn.dot_product_attention(implementation="xla")`, a dense kernel: it materialises float32 logits
  [B, H, T, S] like "dense"; the boolean mask is computed from the ids by broadcast compares that XLA fuses into
  the masking select (no [T, S] mask buffer in the compiled CPU program), so the logits are its cost.
- "cudnn": refused (`REFUSED` says why). jax's `dot_product_attention` takes no segment ids, and its flags
  (`is_causal`, one query/key length per row, a sliding window) describe one sequence per row, not a packed row's
  groups whose replies share a prompt but not each other.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)  # finite: fully masked rows give a uniform softmax, not NaN
BLOCK = 512
IMPLEMENTATIONS = ("auto", "dense", "blockwise", "xla", "cudnn")
REFUSED = {"cudnn": "jax.nn.dot_product_attention takes no segment ids, so the packed rows' mask (several groups "
                    "a row, replies that share a prompt) would reach cuDNN as a [rows, 1, T, T] bias plus a bias "
                    "gradient of the same size; use model.attention: blockwise (flash-style, no [T, T] array)"}


def allowed(q_segment, q_prefix, q_index, k_segment, k_prefix, k_index) -> jax.Array:
    """The mask rule above for queries [B, T] against keys [B, S] (index = column in the row): bool [B, T, S]."""
    return ((q_segment[:, :, None] == k_segment[:, None, :])
            & (k_index[None, None, :] <= q_index[None, :, None])
            & ((k_prefix[:, None, :] == 0) | (k_prefix[:, None, :] == q_prefix[:, :, None])))


def mask(segment_ids: jax.Array, prefix_ids: jax.Array) -> jax.Array:
    """bool [B, T, T] of a row against itself."""
    index = jnp.arange(segment_ids.shape[1])
    return allowed(segment_ids, prefix_ids, index, segment_ids, prefix_ids, index)


def grouped(q, k, v, visible, kv_layout: str = "bskd"):
    """The grouped-query softmax attention every dense path runs (training's reference, the rollout's KV cache).

    q [B, T, H, D], H a multiple of KV, each query head grouped with the KV head it shares; k, v [B, S, KV, D]
    ("bskd") or [B, KV, S, D] ("bksd", a KV cache's layout); visible bool [B, T, S]. Float32 scores and softmax,
    hidden keys scored MASK_VALUE. Returns [B, T, H, D] in q's dtype."""
    b, t, h, d = q.shape
    kv = k.shape[kv_layout.index("k")]
    qg = q.reshape(b, t, kv, h // kv, d)
    scores = jnp.einsum(f"btkgd,{kv_layout}->bkgts", qg, k, preferred_element_type=jnp.float32) * (d ** -0.5)
    scores = jnp.where(visible[:, None, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum(f"bkgts,{kv_layout}->btkgd", probs, v).reshape(b, t, h, d)


def reference(q, k, v, segment_ids, prefix_ids):
    """Dense attention of a packed row: `grouped` under the ids' mask."""
    return grouped(q, k, v, mask(segment_ids, prefix_ids))


def dot_product(q, k, v, segment_ids, prefix_ids):
    """`jax.nn.dot_product_attention`'s XLA implementation, the mask computed from the ids inside the program."""
    m = mask(segment_ids, prefix_ids)[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=m, implementation="xla").astype(q.dtype)


# ---- blockwise (flash-style) ---------------------------------------------------------------------------------
def _blocks(k, v, segment_ids, prefix_ids, block):
    """Keys/values/ids cut into [n, B, ...] blocks; padding keys get segment -1 (never equal to a query's)."""
    s = k.shape[1]
    pad = -s % block
    if pad:
        k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
        segment_ids = jnp.pad(segment_ids, ((0, 0), (0, pad)), constant_values=-1)
        prefix_ids = jnp.pad(prefix_ids, ((0, 0), (0, pad)))
    n = k.shape[1] // block
    cut = lambda x: jnp.moveaxis(x.reshape(x.shape[0], n, block, *x.shape[2:]), 1, 0)  # noqa: E731
    index = jnp.arange(n * block).reshape(n, block)
    return cut(k), cut(v), cut(segment_ids), cut(prefix_ids), index


def _block_scorer(q, kv, segment_ids, prefix_ids):
    """(queries grouped [B, T, KV, G, D], scores(kj, seg_j, pre_j, idx_j)): the masked float32 scores
    [B, KV, G, T, blk] of all queries against one key block."""
    b, t, h, d = q.shape
    qg, q_index = q.reshape(b, t, kv, h // kv, d), jnp.arange(t)

    def scores(kj, seg_j, pre_j, idx_j):
        s = jnp.einsum("btkgd,bskd->bkgts", qg, kj, preferred_element_type=jnp.float32) * (d ** -0.5)
        ok = allowed(segment_ids, prefix_ids, q_index, seg_j, pre_j, idx_j)
        return jnp.where(ok[:, None, None], s, MASK_VALUE)

    return qg, scores


def _flash_forward(q, k, v, segment_ids, prefix_ids, block):
    b, t, h, d = q.shape
    kv = k.shape[2]
    _, block_scores = _block_scorer(q, kv, segment_ids, prefix_ids)

    def body(carry, xs):
        m, l, acc = carry
        kj, vj, seg_j, pre_j, idx_j = xs
        s = block_scores(kj, seg_j, pre_j, idx_j)
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.exp(s - m_new[..., None])
        corr = jnp.exp(m - m_new)
        l = l * corr + p.sum(-1)
        acc = acc * corr[..., None] + jnp.einsum("bkgts,bskd->bkgtd", p.astype(vj.dtype), vj,
                                                 preferred_element_type=jnp.float32)
        return (m_new, l, acc), None

    g = h // kv
    init = (jnp.full((b, kv, g, t), MASK_VALUE, jnp.float32), jnp.zeros((b, kv, g, t), jnp.float32),
            jnp.zeros((b, kv, g, t, d), jnp.float32))
    (m, l, acc), _ = jax.lax.scan(body, init, _blocks(k, v, segment_ids, prefix_ids, block))
    out = acc / l[..., None]  # [B, KV, G, T, D]
    lse = m + jnp.log(l)
    return jnp.moveaxis(out, 3, 1).reshape(b, t, h, d).astype(q.dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, segment_ids, prefix_ids, block):
    return _flash_forward(q, k, v, segment_ids, prefix_ids, block)[0]


def _flash_fwd(q, k, v, segment_ids, prefix_ids, block):
    out, lse = _flash_forward(q, k, v, segment_ids, prefix_ids, block)
    return out, (q, k, v, segment_ids, prefix_ids, out, lse)


def _flash_bwd(block, residuals, d_out):
    q, k, v, segment_ids, prefix_ids, out, lse = residuals
    b, t, h, d = q.shape
    kv, s_len = k.shape[2], k.shape[1]
    g = h // kv
    qg, block_scores = _block_scorer(q, kv, segment_ids, prefix_ids)
    dog = d_out.reshape(b, t, kv, g, d)
    delta = jnp.einsum("btkgd,btkgd->bkgt", dog.astype(jnp.float32), out.reshape(b, t, kv, g, d).astype(jnp.float32))

    def body(dq, xs):
        kj, vj, seg_j, pre_j, idx_j = xs
        s = block_scores(kj, seg_j, pre_j, idx_j)
        p = jnp.exp(s - lse[..., None])  # the forward's probabilities of this block
        dv = jnp.einsum("bkgts,btkgd->bskd", p.astype(dog.dtype), dog, preferred_element_type=jnp.float32)
        dp = jnp.einsum("btkgd,bskd->bkgts", dog, vj, preferred_element_type=jnp.float32)
        ds = p * (dp - delta[..., None]) * d ** -0.5
        dq = dq + jnp.einsum("bkgts,bskd->btkgd", ds.astype(kj.dtype), kj, preferred_element_type=jnp.float32)
        dk = jnp.einsum("bkgts,btkgd->bskd", ds.astype(qg.dtype), qg, preferred_element_type=jnp.float32)
        return dq, (dk, dv)

    dq, (dk, dv) = jax.lax.scan(body, jnp.zeros((b, t, kv, g, d), jnp.float32),
                                _blocks(k, v, segment_ids, prefix_ids, block))
    unblock = lambda x: jnp.moveaxis(x, 0, 1).reshape(b, -1, kv, d)[:, :s_len]  # noqa: E731
    return (dq.reshape(b, t, h, d).astype(q.dtype), unblock(dk).astype(k.dtype), unblock(dv).astype(v.dtype),
            None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)


def blockwise(q, k, v, segment_ids, prefix_ids, block: int = BLOCK):
    """Online-softmax attention over key blocks of `block` with a recomputing backward (memory O(T * block))."""
    return _flash(q, k, v, segment_ids, prefix_ids, min(block, k.shape[1]))


def resolve(implementation: str) -> str:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation must be one of {', '.join(IMPLEMENTATIONS)}, "
                         f"got {implementation!r}")
    if implementation in REFUSED:
        raise ValueError(f"model.attention {implementation!r} is not supported: {REFUSED[implementation]}")
    if implementation == "auto":
        return "dense" if jax.default_backend() == "cpu" else "blockwise"
    return implementation


def attend(q, k, v, segment_ids, prefix_ids, implementation: str = "auto"):
    """Masked attention of a packed row (rule in the module docstring) by the named implementation."""
    run = {"dense": reference, "blockwise": blockwise, "xla": dot_product}[resolve(implementation)]
    return run(q, k, v, jnp.asarray(segment_ids, jnp.int32), jnp.asarray(prefix_ids, jnp.int32))
