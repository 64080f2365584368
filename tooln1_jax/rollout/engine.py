"""The rollout engine: continuous batching of (prompt, sample) pairs over a fixed pool of decode slots.

- A queue of samples in order (prompt 0's G samples, then prompt 1's, ...). Prompts are prefilled once, a few at a
  time (chunked through a per-layer cache), all but their last token; a sample taking a free slot gets a copy of its
  prompt's entries and starts decoding from the prompt's last token.
- Decoding runs in jitted chunks of up to `chunk_steps` steps over all slots (buffers donated, updated in place). A
  chunk ends early when a sample finishes while others wait, so its slot is refilled at once; the host scheduler
  between chunks moves only small integer arrays.
- Every slot carries its own position; a chunk's attention reads the caches up to the longest live context plus the
  chunk, bucketed (`shapes.bucket`), so a run compiles a few programs (`STATS["compiles"]`), not one per length.
- Sample s = (prompt seed, sample j) draws its token at reply step r from fold_in(fold_in(rng, r), seed * G + j):
  nothing depends on the slot it runs in, the number of slots, or the host.
- Once the queue is empty and the live samples fit a pool half the size, they move into one (a gather of their
  caches), so the drain at the end of a call does not decode mostly idle slots.
- The weights are the decode layout of `rollout.inference` (made here, or once per training step by the caller).

`STATS` counts compiles, decode steps, slot-steps (slots x steps) and useful tokens (sampled tokens of live slots);
slot utilisation = useful tokens / slot-steps.
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
from tooln1_jax.models.qwen2 import Qwen2Config
from tooln1_jax.rollout import inference, kv_cache
from tooln1_jax.rollout.inference import InferenceWeights
from tooln1_jax.rollout.sampling import Sampling, sample_keys, sample_step
from tooln1_jax.shapes import bucket

DEFAULT_STOP_IDS = (151645, 151643)  # <|im_end|>, <|endoftext|>
PREFILL_CHUNK = 512  # prompt tokens per prefill pass: attention scores stay [P, heads, 512, T]
DEFAULT_CHUNK_STEPS = 16
COMPACT_RATIO = 2  # once the queue is empty, live samples move to a pool this many times smaller when they fit
MIN_SPAN = 512  # cache entries a decode chunk reads at least: below this, one program beats a compile per bucket
STATS = {"compiles": 0, "decode_steps": 0, "slot_steps": 0, "useful_tokens": 0}


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


def utilisation(stats: dict) -> float:
    return stats["useful_tokens"] / max(stats["slot_steps"], 1)


# ---- the compiled programs ---------------------------------------------------------------------------------------
def _shardings_of(w: InferenceWeights):
    leaves, treedef = jax.tree.flatten(w)
    return treedef, tuple(x.sharding for x in leaves)


def _cache_shardings(config, mesh, rows, capacity):
    s = kv_cache.sharding(config, mesh, rows, capacity)
    return tuple((s, s) for _ in range(config.num_hidden_layers))


@functools.lru_cache(maxsize=64)
def _prefill_program(config: Qwen2Config, mesh: Mesh, w_treedef, w_shardings, rows: int, width: int):
    """tokens, positions [rows, width] -> per-layer caches [rows, KV, width, D], in chunks of PREFILL_CHUNK."""
    chunk = min(width, PREFILL_CHUNK)

    def prefill(w, tokens, positions):
        STATS["compiles"] += 1
        caches = kv_cache.allocate(config, rows, width, w.dtype)
        split = lambda x: x.reshape(rows, width // chunk, chunk).swapaxes(0, 1)  # noqa: E731  [chunks, rows, C]

        def step(caches, xs):
            with parallel.activation_sharding(mesh):
                _, caches = inference.forward(config, w, xs[0], xs[1], caches, width)
            return caches, None

        return jax.lax.scan(step, caches, (split(tokens), split(positions)))[0]

    batch2 = parallel.batch_sharding(mesh, 2)
    return jax.jit(prefill, in_shardings=(jax.tree.unflatten(w_treedef, w_shardings), batch2, batch2),
                   out_shardings=_cache_shardings(config, mesh, rows, width))


@functools.lru_cache(maxsize=64)
def _insert_program(config: Qwen2Config, mesh: Mesh, slots: int, capacity: int, rows: int, width: int):
    def insert(caches, prompt_caches, slot_ids, sources):
        STATS["compiles"] += 1
        return kv_cache.insert(caches, prompt_caches, slot_ids, sources)

    batch1 = parallel.batch_sharding(mesh, 1)
    slot_sh = _cache_shardings(config, mesh, slots, capacity)
    return jax.jit(insert, in_shardings=(slot_sh, _cache_shardings(config, mesh, rows, width), batch1, batch1),
                   out_shardings=slot_sh, donate_argnums=(0,))


STATE_FIELDS = ("token", "pos", "step", "sample_id", "live", "limit")


@functools.lru_cache(maxsize=64)
def _decode_program(config: Qwen2Config, sampling: Sampling, stop_ids: tuple[int, ...], mesh: Mesh, w_treedef,
                    w_shardings, slots: int, capacity: int, width: int, steps: int):
    """Up to `steps` decode steps of every slot; stops early when no slot is live, or when a slot finished and
    `waiting` says samples wait for it. State per slot: the next input token at position `pos`, the reply step of
    the token it samples, the sample id that keys its draws, whether it is live, its token budget."""
    stops = jnp.asarray(stop_ids if stop_ids else (-1,), jnp.int32)

    def decode(w, caches, state, rng, waiting):
        STATS["compiles"] += 1

        def cond(carry):
            i, _, state, _, _, _, ended = carry
            return (i < steps) & jnp.any(state["live"]) & ~(ended & waiting)

        def body(carry):
            i, caches, state, out_tok, out_logp, emitted, _ = carry
            with parallel.activation_sharding(mesh):
                hidden, caches = inference.forward(config, w, state["token"][:, None], state["pos"][:, None],
                                                   caches, width)
                logits = inference.logits(w, hidden[:, 0])
            token, logp = sample_step(logits, sample_keys(rng, state["step"], state["sample_id"]), sampling)
            live = state["live"]
            out_tok = out_tok.at[:, i].set(jnp.where(live, token, 0))
            out_logp = out_logp.at[:, i].set(jnp.where(live, logp, 0.0))
            emitted = emitted.at[:, i].set(live)
            finished = live & (jnp.isin(token, stops) | (state["step"] + 1 >= state["limit"]))
            advance = live.astype(jnp.int32)
            state = dict(state, token=jnp.where(live, token, state["token"]), pos=state["pos"] + advance,
                         step=state["step"] + advance, live=live & ~finished)
            return i + 1, caches, state, out_tok, out_logp, emitted, jnp.any(finished)

        carry = (jnp.int32(0), caches, state, jnp.zeros((slots, steps), jnp.int32),
                 jnp.zeros((slots, steps), jnp.float32), jnp.zeros((slots, steps), bool), jnp.bool_(False))
        i, caches, state, out_tok, out_logp, emitted, _ = jax.lax.while_loop(cond, body, carry)
        return caches, state, out_tok, out_logp, emitted, i

    batch1, batch2 = parallel.batch_sharding(mesh, 1), parallel.batch_sharding(mesh, 2)
    replicated = parallel.replicated(mesh)
    cache_sh = _cache_shardings(config, mesh, slots, capacity)
    state_sh = {name: batch1 for name in STATE_FIELDS}
    return jax.jit(decode, in_shardings=(jax.tree.unflatten(w_treedef, w_shardings), cache_sh, state_sh, replicated,
                                         replicated),
                   out_shardings=(cache_sh, state_sh, batch2, batch2, batch2, replicated), donate_argnums=(1,))


@functools.lru_cache(maxsize=64)
def _compact_program(config: Qwen2Config, mesh: Mesh, slots: int, capacity: int, keep: int):
    """Caches of `keep` rows taken from `slots` (the queue is empty and few slots are live). Each device keeps rows
    of its own block (`compaction_rows`; `rows` are indices inside the device's block), so no cache row crosses a
    device: a global gather would all-gather every layer's cache onto every chip."""
    cache_in = _cache_shardings(config, mesh, slots, capacity)
    cache_out = _cache_shardings(config, mesh, keep, capacity)
    batch1 = parallel.batch_sharding(mesh, 1)
    specs = lambda shardings: tuple((k.spec, v.spec) for k, v in shardings)  # noqa: E731

    def compact(caches, rows):
        STATS["compiles"] += 1
        gather = jax.shard_map(lambda c, r: tuple((k[r], v[r]) for k, v in c), mesh=mesh,
                               in_specs=(specs(cache_in), batch1.spec), out_specs=specs(cache_out), check_vma=False)
        return gather(caches, rows)

    return jax.jit(compact, in_shardings=(cache_in, batch1), out_shardings=cache_out)


def compaction_rows(live: np.ndarray, devices: int, keep_per_device: int) -> np.ndarray:
    """This process's slots to keep, device block by device block: each of the `devices` equal blocks of `live`
    keeps its live slots first, then idle ones, `keep_per_device` in all."""
    per = live.size // devices
    blocks = [np.arange(j * per, (j + 1) * per) for j in range(devices)]
    return np.concatenate([np.concatenate([b[live[b]], b[~live[b]]])[:keep_per_device] for b in blocks])


@functools.lru_cache(maxsize=16)
def _allocate_program(config: Qwen2Config, mesh: Mesh, slots: int, capacity: int, dtype: str):
    return jax.jit(lambda: kv_cache.allocate(config, slots, capacity, dtype),
                   out_shardings=_cache_shardings(config, mesh, slots, capacity))


# ---- host side ---------------------------------------------------------------------------------------------------
def _global(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
    return jax.make_array_from_process_local_data(sharding, local)


def _local(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded array (all rows in a single-process run)."""
    if x.is_fully_addressable:
        return np.array(x)
    shards = {s.index[0].start or 0: np.asarray(s.data) for s in x.addressable_shards}
    return np.concatenate([shards[k] for k in sorted(shards)])


def _any_host(flag: bool) -> bool:
    return bool(parallel.global_max(int(flag)))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def run(config: Qwen2Config, weights: InferenceWeights, prompts: list[list[int]], *, num_samples: int,
        limits: np.ndarray, sampling: Sampling, stop_ids: tuple[int, ...], rng: jax.Array, mesh: Mesh,
        sample_ids: np.ndarray, num_slots: int | None = None, chunk_steps: int = DEFAULT_CHUNK_STEPS) -> Rollout:
    """Decode this process's samples (prompt p's sample j is row p * num_samples + j) with at most
    `limits[row]` tokens each. Inputs are checked by `generate`; an empty queue returns an empty Rollout."""
    g, total = num_samples, len(prompts) * num_samples
    hosts, offset = jax.process_count(), jax.process_index()
    multiple = max(parallel.batch_size_multiple(mesh) // hosts, 1)
    max_new = parallel.global_max(int(limits.max()) if total else 1)
    if not parallel.global_max(total):
        return Rollout(tokens=np.zeros((0, max_new), np.int32), lengths=np.zeros(0, np.int32),
                       logprobs=np.zeros((0, max_new), np.float32), prompt_index=np.zeros(0, np.int32),
                       finish_reason=np.zeros(0, str))
    most = bucket(parallel.global_max(total))
    slots = _round_up(min(num_slots, most) if num_slots else most, multiple)  # per process
    width = bucket(parallel.global_max(max(len(p) for p in prompts) - 1 if prompts else 1), 16)  # prefill width
    if width > PREFILL_CHUNK:
        width = _round_up(width, PREFILL_CHUNK)
    capacity = width + bucket(max_new, 16)  # >= every prompt's entries + its reply
    prefill_rows = _round_up(min(bucket(max(len(prompts), 1)), bucket(-(-slots // g))), multiple)
    prefill_rows = parallel.global_max(prefill_rows)
    global_slots, global_prefill = slots * hosts, prefill_rows * hosts
    batch1, batch2 = parallel.batch_sharding(mesh, 1), parallel.batch_sharding(mesh, 2)
    w_treedef, w_shardings = _shardings_of(weights)

    prefill = _prefill_program(config, mesh, w_treedef, w_shardings, global_prefill, width)
    insert = _insert_program(config, mesh, global_slots, capacity, global_prefill, width)
    caches = _allocate_program(config, mesh, global_slots, capacity, str(weights.dtype))()

    tokens = np.zeros((total, max_new), np.int32)
    logprobs = np.zeros((total, max_new), np.float32)
    lengths = np.zeros(total, np.int32)
    state = {"token": np.zeros(slots, np.int32), "pos": np.zeros(slots, np.int32), "step": np.zeros(slots, np.int32),
             "sample_id": np.zeros(slots, np.uint32), "live": np.zeros(slots, bool),
             "limit": np.ones(slots, np.int32)}
    occupant = np.full(slots, -1)  # row of the sample in each slot
    next_row = 0  # queue head
    batch_first, batch_caches = -1, None  # first prompt of the current prefill batch and its caches

    def prefill_batch(first: int):
        ids = np.zeros((prefill_rows, width), np.int32)
        for r, p in enumerate(prompts[first:first + prefill_rows]):
            ids[r, :len(p) - 1] = p[:-1]
        positions = np.broadcast_to(np.arange(width, dtype=np.int32), ids.shape)
        return prefill(weights, _global(ids, batch2), _global(np.ascontiguousarray(positions), batch2))

    while True:
        # ---- fill free slots from the queue (every host takes part in every prefill/insert call) ----
        while True:
            free = np.flatnonzero(occupant < 0)
            want = next_row < total and free.size > 0
            if not _any_host(want):
                break
            head_prompt = next_row // g if want else 0
            need_prefill = batch_caches is None or (want and not batch_first <= head_prompt < batch_first
                                                    + prefill_rows)
            if _any_host(need_prefill):  # hosts that need none run a throwaway batch
                fresh = prefill_batch(head_prompt)
                if need_prefill:
                    batch_first, batch_caches = head_prompt, fresh
            slot_ids = np.full(slots, global_slots, np.int32)  # out of range: no insert
            sources = np.zeros(slots, np.int32)
            for s in free:
                if next_row >= total or next_row // g >= batch_first + prefill_rows:
                    break
                p = next_row // g
                slot_ids[s], sources[s] = offset * slots + s, offset * prefill_rows + p - batch_first
                state["token"][s], state["pos"][s], state["step"][s] = prompts[p][-1], len(prompts[p]) - 1, 0
                state["sample_id"][s], state["live"][s] = sample_ids[next_row], True
                state["limit"][s] = limits[next_row]
                occupant[s] = next_row
                next_row += 1
            caches = insert(caches, batch_caches, _global(slot_ids, batch1), _global(sources, batch1))

        if not _any_host(state["live"].any()):
            break
        waiting = _any_host(next_row < total)
        if not waiting:  # draining: move the live samples into a pool half the size or less
            per_device = slots // multiple  # the slots of one device (its block of the batch rows)
            most_live = int(state["live"].reshape(multiple, per_device).sum(axis=1).max())
            keep = bucket(parallel.global_max(most_live)) * multiple
            if keep * COMPACT_RATIO <= slots:
                rows = compaction_rows(state["live"], multiple, keep // multiple)
                caches = _compact_program(config, mesh, global_slots, capacity, keep * hosts)(
                    caches, _global((rows % per_device).astype(np.int32), batch1))
                state = {k: v[rows] for k, v in state.items()}
                occupant, slots, global_slots = occupant[rows], keep, keep * hosts
        # ---- decode a chunk ----
        reach = int(state["pos"][state["live"]].max()) + chunk_steps if state["live"].any() else 1
        span = min(bucket(parallel.global_max(reach), MIN_SPAN), capacity)
        decode = _decode_program(config, sampling, stop_ids, mesh, w_treedef, w_shardings, global_slots, capacity,
                                 span, chunk_steps)
        caches, new_state, out_tok, out_logp, emitted, steps = decode(
            weights, caches, {k: _global(v, batch1) for k, v in state.items()}, rng, jnp.bool_(waiting))
        state = {k: _local(v) for k, v in new_state.items()}
        out_tok, out_logp, emitted, steps = _local(out_tok), _local(out_logp), _local(emitted), int(steps)
        STATS["decode_steps"] += steps
        STATS["slot_steps"] += steps * slots
        for s in np.flatnonzero(occupant >= 0):
            row, n = occupant[s], int(emitted[s].sum())
            tokens[row, lengths[row]:lengths[row] + n] = out_tok[s, :n]
            logprobs[row, lengths[row]:lengths[row] + n] = out_logp[s, :n]
            lengths[row] += n
            STATS["useful_tokens"] += n
            if not state["live"][s]:
                occupant[s] = -1

    last = tokens[np.arange(total), np.maximum(lengths - 1, 0)]
    stopped = (lengths > 0) & np.isin(last, np.asarray(stop_ids, np.int64))
    return Rollout(tokens=tokens, lengths=lengths, logprobs=logprobs,
                   prompt_index=np.repeat(np.arange(len(prompts), dtype=np.int32), g),
                   finish_reason=np.where(stopped, "stop", "length"))


# ---- the public entry point --------------------------------------------------------------------------------------
def generate(config: Qwen2Config, params, prompts: Sequence[Sequence[int]], *, num_samples: int = 1,
             max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             stop_ids: Sequence[int] = DEFAULT_STOP_IDS, rng: jax.Array | None = None, mesh: Mesh | None = None,
             max_cache_len: int | None = None, prompt_seeds: Sequence[int] | None = None,
             num_slots: int | None = None, chunk_steps: int = DEFAULT_CHUNK_STEPS,
             inference_dtype: str | None = None) -> Rollout:
    """Sample `num_samples` replies to each prompt (lists of token ids). temperature 0 = greedy.

    params: the model parameters, or `inference.prepare(...)`'s decode layout of them (made once per training step).
    prompt_seeds: one integer per prompt that, with `rng`, fixes that prompt's samples whatever the slots, batch
    or host it lands on (default: the prompt's index in `prompts`). In a multi-host run each process passes its own
    prompts and gets back their rollouts. num_slots: decode slots per process (default: one per sample, bucketed);
    chunk_steps: decode steps per compiled chunk; inference_dtype: the decode weights' dtype (default compute dtype).
    """
    sampling = Sampling(float(temperature), float(top_p), int(top_k))
    sampling.validate()
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be > 0, got {max_new_tokens}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if num_slots is not None and num_slots < 1:
        raise ValueError(f"num_slots must be >= 1, got {num_slots}")
    if chunk_steps < 1:
        raise ValueError(f"chunk_steps must be >= 1, got {chunk_steps}")
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
    longest = parallel.global_max(max(map(len, prompts)))
    capacity = max_cache_len or config.max_position_embeddings
    if longest + max_new_tokens > capacity:
        raise ValueError(f"prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds the cache "
                         f"capacity of {capacity} positions")
    mesh = mesh or inference.mesh_of(params)
    parallel.check_batch_layout(mesh)
    weights = inference.prepare(config, params, dtype=inference_dtype, mesh=mesh)
    seeds = np.arange(len(prompts)) if prompt_seeds is None else np.asarray(prompt_seeds, np.int64)
    sample_ids = (seeds[:, None] * num_samples + np.arange(num_samples)).reshape(-1).astype(np.uint32)
    limits = np.full(len(prompts) * num_samples, int(max_new_tokens), np.int32)
    return run(config, weights, prompts, num_samples=num_samples, limits=limits, sampling=sampling,
               stop_ids=tuple(int(s) for s in stop_ids), rng=jax.random.key(0) if rng is None else rng, mesh=mesh,
               sample_ids=sample_ids, num_slots=num_slots, chunk_steps=chunk_steps)
