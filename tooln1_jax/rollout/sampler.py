"""Grouped rollouts: prefill each prompt once, copy its KV cache to its G samples, decode in one `lax.while_loop`.

Prompts are left-padded into a bucketed [P, T] block, so every row writes its next token at the same cache slot
while its rotary position stays its own. Batch size, prompt length and the new-token budget are rounded up to a
few bucket sizes, so a training run compiles a handful of programs; `STATS["compiles"]` counts them.

Log-probs are those of the sampling distribution before top-k/top-p filtering: log_softmax(logits / T) (T = 1
for greedy decoding), which is what the GRPO ratio needs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from tooln1_jax import parallel
from tooln1_jax.models import qwen2
from tooln1_jax.models.qwen2 import KVCache, Qwen2Config

DEFAULT_STOP_IDS = (151645, 151643)  # <|im_end|>, <|endoftext|>
STATS = {"compiles": 0}  # programs traced (each trace is one compilation)


@dataclasses.dataclass
class Rollout:
    """One row per (prompt, sample); a prompt's samples are contiguous. Entries at and after `lengths` are 0."""

    tokens: np.ndarray  # int32 [P*G, max_new_tokens]
    lengths: np.ndarray  # int32 [P*G], generated tokens including the stop token
    logprobs: np.ndarray  # float32 [P*G, max_new_tokens]
    prompt_index: np.ndarray  # int32 [P*G]
    finish_reason: np.ndarray  # str [P*G]: "stop" (emitted a stop id) or "length" (hit max_new_tokens)


def reply_ids(rollout: Rollout, stop_ids: Sequence[int]) -> list[list[int]]:
    """Each row's generated token ids without its final stop token."""
    out = []
    for row, n in zip(rollout.tokens, rollout.lengths):
        ids = row[:int(n)].tolist()
        out.append(ids[:-1] if ids and ids[-1] in stop_ids else ids)
    return out


def concatenate(parts: Sequence[Rollout]) -> Rollout:
    """Rollouts of consecutive prompt chunks as one (prompt_index counts across the chunks)."""
    offsets = np.cumsum([0] + [int(p.prompt_index.max()) + 1 for p in parts[:-1]])
    return Rollout(tokens=np.concatenate([p.tokens for p in parts]),
                   lengths=np.concatenate([p.lengths for p in parts]),
                   logprobs=np.concatenate([p.logprobs for p in parts]),
                   prompt_index=np.concatenate([p.prompt_index + o for p, o in zip(parts, offsets)]),
                   finish_reason=np.concatenate([p.finish_reason for p in parts]))


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Static sampling settings (hashable: part of the compiled program's identity)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def validate(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")


def bucket(n: int, minimum: int = 1) -> int:
    """Round up to a power of two (at least `minimum`), then to multiples of 1024 beyond 1024."""
    n = max(int(n), minimum)
    if n > 1024:
        return -(-n // 1024) * 1024
    return 1 << (n - 1).bit_length()


# ---- sampling ----------------------------------------------------------------------------------------------------
def filter_logits(scaled: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Mask (to -inf) everything outside the top-k tokens and outside the smallest top-p nucleus. [N, V] f32."""
    if top_k and top_k < scaled.shape[-1]:
        kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
        scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    if top_p < 1.0:
        sorted_desc = jnp.sort(scaled, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
        keep = before < top_p  # the first token always stays
        threshold = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
        scaled = jnp.where(scaled < threshold, -jnp.inf, scaled)
    return scaled


def sample_step(logits: jax.Array, keys: jax.Array, sampling: Sampling) -> tuple[jax.Array, jax.Array]:
    """Next tokens [N] and their log-probs [N] under log_softmax(logits / T); keys: one PRNG key per row."""
    logits = logits.astype(jnp.float32)
    if sampling.temperature == 0:
        tokens = jnp.argmax(logits, axis=-1)
        logp = jax.nn.log_softmax(logits, axis=-1)
    else:
        scaled = logits / sampling.temperature
        logp = jax.nn.log_softmax(scaled, axis=-1)
        filtered = filter_logits(scaled, sampling.top_k, sampling.top_p)
        tokens = jax.vmap(jax.random.categorical)(keys, filtered)
    return tokens.astype(jnp.int32), jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


# ---- the compiled programs ---------------------------------------------------------------------------------------
def _cache_shardings(config: Qwen2Config, mesh: Mesh, batch: int, slots: int) -> KVCache:
    kv_shape = (config.num_hidden_layers, batch, slots, config.num_key_value_heads, config.head_dim)
    spec = lambda axes, shape: NamedSharding(mesh, parallel.logical_to_spec(axes, shape, mesh))  # noqa: E731
    return KVCache(k=spec(qwen2.CACHE_LOGICAL_AXES.k, kv_shape), v=spec(qwen2.CACHE_LOGICAL_AXES.v, kv_shape),
                   valid=spec(qwen2.CACHE_LOGICAL_AXES.valid, (batch, slots)), index=parallel.replicated(mesh))


PREFILL_CHUNK = 512  # prompt tokens per prefill pass: attention scores stay [P, heads, 512, T]


def _prefill(config: Qwen2Config, num_samples: int, slots: int, mesh: Mesh, params, tokens, mask):
    """Run the [P, T] left-padded prompts once; return last-position logits and the cache, each repeated G times.
    Long prompts go through the cache in chunks of PREFILL_CHUNK tokens, attending over their T slots only; the
    cache is then widened to `slots` for decoding."""
    STATS["compiles"] += 1
    batch, width = tokens.shape
    chunk = min(width, PREFILL_CHUNK)

    def step(cache, chunk_inputs):
        chunk_tokens, chunk_mask = chunk_inputs
        hidden, cache = qwen2.hidden_states(config, params, chunk_tokens, attention_mask=chunk_mask, cache=cache)
        return cache, hidden[:, -1]

    with parallel.activation_sharding(mesh):
        split = lambda x: x.reshape(batch, width // chunk, chunk).swapaxes(0, 1)  # noqa: E731  [chunks, P, C]
        cache, last = jax.lax.scan(step, qwen2.init_cache(config, batch, width), (split(tokens), split(mask)))
        logits = qwen2.apply_head(config, params, last[-1])  # [P, V]: left padding ends every row there
    extra = slots - width
    widen = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, extra), (0, 0), (0, 0)))  # noqa: E731
    repeat = lambda x, axis=0: jnp.repeat(x, num_samples, axis=axis)  # noqa: E731
    cache = KVCache(k=repeat(widen(cache.k), 1), v=repeat(widen(cache.v), 1),
                    valid=repeat(jnp.pad(cache.valid, ((0, 0), (0, extra)))), index=cache.index)
    return repeat(logits), cache


def _decode(config: Qwen2Config, sampling: Sampling, stop_ids: tuple[int, ...], budget: int, mesh: Mesh,
            params, cache: KVCache, logits, positions, row_ids, max_new, rng):
    """Sample until every row has stopped or `max_new` (<= budget) tokens; one while_loop, no host round trips.
    Row r draws from fold_in(fold_in(rng, step), row_ids[r])."""
    STATS["compiles"] += 1
    rows = logits.shape[0]
    stops = jnp.asarray(stop_ids if stop_ids else (-1,), jnp.int32)

    def cond(state):
        step, done = state[0], state[4]
        return (step < max_new) & ~jnp.all(done)

    def body(state):
        step, cache, logits, positions, done, tokens, logprobs, lengths = state
        keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(rng, step), row_ids)
        token, logp = sample_step(logits, keys, sampling)
        live = ~done
        tokens = tokens.at[:, step].set(jnp.where(live, token, 0))
        logprobs = logprobs.at[:, step].set(jnp.where(live, logp, 0.0))
        lengths = lengths + live.astype(jnp.int32)
        done = done | (live & jnp.isin(token, stops)) | (step + 1 >= max_new)
        with parallel.activation_sharding(mesh):
            hidden, cache = qwen2.hidden_states(config, params, token[:, None], positions=positions[:, None],
                                                attention_mask=jnp.ones((rows, 1), bool), cache=cache)
            logits = qwen2.apply_head(config, params, hidden[:, 0])
        return step + 1, cache, logits, positions + 1, done, tokens, logprobs, lengths

    state = (jnp.int32(0), cache, logits, positions, jnp.zeros(rows, bool), jnp.zeros((rows, budget), jnp.int32),
             jnp.zeros((rows, budget), jnp.float32), jnp.zeros(rows, jnp.int32))
    state = jax.lax.while_loop(cond, body, state)
    cache, logits, tokens, logprobs, lengths = state[1], state[2], state[5], state[6], state[7]
    last = jnp.take_along_axis(tokens, jnp.maximum(lengths - 1, 0)[:, None], axis=1)[:, 0]
    stopped = (lengths > 0) & jnp.isin(last, stops)
    # the donated cache and logits come back out so XLA can update them in place; callers drop them
    return tokens, logprobs, lengths, stopped, cache, logits


@functools.lru_cache(maxsize=64)
def _programs(config: Qwen2Config, sampling: Sampling, stop_ids: tuple[int, ...], num_samples: int,
              prompts: int, prompt_len: int, budget: int, mesh: Mesh, param_treedef, param_sharding_leaves):
    """The jitted prefill and decode programs for one bucket, with every input/output sharding declared."""
    param_shardings = jax.tree.unflatten(param_treedef, param_sharding_leaves)
    rows, slots = prompts * num_samples * jax.process_count(), prompt_len + budget  # global rows
    batch2 = parallel.batch_sharding(mesh, 2)
    batch1 = parallel.batch_sharding(mesh, 1)
    cache_sh = _cache_shardings(config, mesh, rows, slots)
    replicated = parallel.replicated(mesh)
    prefill = jax.jit(functools.partial(_prefill, config, num_samples, slots, mesh),
                      in_shardings=(param_shardings, batch2, batch2), out_shardings=(batch2, cache_sh))
    decode = jax.jit(functools.partial(_decode, config, sampling, stop_ids, budget, mesh),
                     in_shardings=(param_shardings, cache_sh, batch2, batch1, batch1, replicated, replicated),
                     out_shardings=(batch2, batch2, batch1, batch1, cache_sh, batch2), donate_argnums=(1, 2))
    return prefill, decode


# ---- the public entry point --------------------------------------------------------------------------------------
def _mesh_of(params) -> Mesh:
    sharding = jax.tree.leaves(params)[0].sharding
    return sharding.mesh if isinstance(sharding, NamedSharding) else parallel.single_device_mesh()


def _global(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
    return jax.make_array_from_process_local_data(sharding, local)


def _local(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded array (all rows in a single-process run)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    shards = {s.index[0].start or 0: np.asarray(s.data) for s in x.addressable_shards}
    return np.concatenate([shards[k] for k in sorted(shards)])


def generate(config: Qwen2Config, params, prompts: Sequence[Sequence[int]], *, num_samples: int = 1,
             max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             stop_ids: Sequence[int] = DEFAULT_STOP_IDS, rng: jax.Array | None = None, mesh: Mesh | None = None,
             max_cache_len: int | None = None, prompt_seeds: Sequence[int] | None = None) -> Rollout:
    """Sample `num_samples` replies to each prompt (lists of token ids). temperature 0 = greedy.

    prompt_seeds: one integer per prompt that, with `rng`, fixes that prompt's samples whatever the batch
    layout, bucket or host it lands on (default: the prompt's index in `prompts`). In a multi-host run each
    process passes its own prompts (the same number on every process) and gets back their rollouts.
    """
    sampling = Sampling(float(temperature), float(top_p), int(top_k))
    sampling.validate()
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be > 0, got {max_new_tokens}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    prompts = [list(map(int, p)) for p in prompts]
    if not prompts:
        raise ValueError("no prompts given")
    if prompt_seeds is not None and len(prompt_seeds) != len(prompts):
        raise ValueError(f"prompt_seeds has {len(prompt_seeds)} entries for {len(prompts)} prompts")
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty")
        if min(p) < 0 or max(p) >= config.vocab_size:
            raise ValueError(f"prompt {i} has token ids outside [0, {config.vocab_size})")
    longest = parallel.global_max(max(map(len, prompts)))  # every host must build the same shapes
    capacity = max_cache_len or config.max_position_embeddings
    if longest + max_new_tokens > capacity:
        raise ValueError(f"prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds the cache "
                         f"capacity of {capacity} positions")
    mesh = mesh or _mesh_of(params)
    parallel.check_batch_layout(mesh)
    multiple = parallel.batch_size_multiple(mesh) // jax.process_count() or 1
    n_prompts = -(-bucket(parallel.global_max(len(prompts))) // multiple) * multiple
    prompt_len, budget = bucket(longest, 16), bucket(max_new_tokens, 16)

    tokens = np.zeros((n_prompts, prompt_len), np.int32)
    mask = np.zeros((n_prompts, prompt_len), bool)
    lengths = np.ones(n_prompts, np.int32)  # filler rows: one real token, outputs discarded
    mask[:, -1] = True
    for i, p in enumerate(prompts):
        tokens[i, prompt_len - len(p):] = p
        mask[i, prompt_len - len(p):] = True
        lengths[i] = len(p)

    leaves, treedef = jax.tree.flatten(params)
    prefill, decode = _programs(config, sampling, tuple(int(s) for s in stop_ids), num_samples, n_prompts,
                                prompt_len, budget, mesh, treedef, tuple(x.sharding for x in leaves))
    batch2, batch1 = parallel.batch_sharding(mesh, 2), parallel.batch_sharding(mesh, 1)
    logits, cache = prefill(params, _global(tokens, batch2), _global(mask, batch2))
    positions = _global(np.repeat(lengths, num_samples), batch1)
    seeds = np.zeros(n_prompts, np.int64)  # filler rows: any seed, their samples are dropped
    seeds[:len(prompts)] = np.arange(len(prompts)) if prompt_seeds is None else np.asarray(prompt_seeds)
    row_ids = _global((seeds[:, None] * num_samples + np.arange(num_samples)).reshape(-1).astype(np.uint32), batch1)
    rng = jax.random.key(0) if rng is None else rng
    out_tokens, out_logp, out_len, stopped, _, _ = decode(params, cache, logits, positions, row_ids,
                                                          jnp.int32(max_new_tokens), rng)

    keep = len(prompts) * num_samples
    out_tokens, out_logp = _local(out_tokens)[:keep, :max_new_tokens], _local(out_logp)[:keep, :max_new_tokens]
    out_len, stopped = _local(out_len)[:keep], _local(stopped)[:keep]
    return Rollout(tokens=out_tokens, lengths=out_len, logprobs=out_logp,
                   prompt_index=np.repeat(np.arange(len(prompts), dtype=np.int32), num_samples),
                   finish_reason=np.where(stopped, "stop", "length"))
