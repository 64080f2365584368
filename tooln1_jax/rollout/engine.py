"""The rollout engine: continuous batching of (prompt, sample) pairs over a fixed pool of decode slots, run as a
small serving loop (`_Run.serve`).

- `plan` fixes the shapes of a run's programs from the sizes of the call (`aot.rollout_plan` reports it for a slice).
- Samples queue in order (prompt 0's G samples, then prompt 1's, ...). Prompts are prefilled a batch at a time
  (chunked through a per-layer cache), all but their last token; a sample taking a free slot gets a copy of its
  prompt's entries and decodes from the prompt's last token.
- Decoding runs in jitted chunks of up to `chunk_steps` steps over all slots (caches donated; the slot state stays
  on the devices). A chunk ends early when a sample finishes while others wait, so its slot is refilled at once.
  Per chunk, the host reads the chunk's output once and the processes agree on what they share in one collective.
- Once no sample waits, the next chunk is dispatched before the last one's output is read (nothing read changes its
  input); its decisions see the slots a chunk old: live slots can only have finished, positions grown by a chunk.
- Once the queue is empty and the live samples fit a pool `COMPACT_RATIO` times smaller, they move into one, device
  by device, so the drain does not decode mostly idle slots.
- A chunk's attention reads the caches up to the longest live context plus the chunk, bucketed (`shapes.bucket`):
  a run compiles a few programs, not one per length.
- Sample s = (prompt seed, sample j) draws its token at reply step r from fold_in(fold_in(rng, r), seed * G + j):
  nothing depends on the slot it runs in, the number of slots, or the host.
- The weights are the decode layout of `rollout.inference` (made here, or once per training step by the caller).

Each Rollout carries its `RolloutStats`: programs built, decode steps, slot-steps (slots x steps) and useful tokens
(sampled tokens of live slots); slot utilisation = useful tokens / slot-steps.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from tooln1_jax import parallel
from tooln1_jax.models.qwen2 import Qwen2Config
from tooln1_jax.rollout import inference, kv_cache
from tooln1_jax.rollout.inference import InferenceWeights
from tooln1_jax.rollout.sampling import Sampling, sample_keys, sample_step
from tooln1_jax.shapes import bucket, round_up

DEFAULT_STOP_IDS = (151645, 151643)  # <|im_end|>, <|endoftext|>
PREFILL_CHUNK = 512  # prompt tokens per prefill pass: attention scores stay [P, heads, 512, T]
DEFAULT_CHUNK_STEPS = 16
COMPACT_RATIO = 2  # once the queue is empty, live samples move to a pool this many times smaller when they fit
MIN_SPAN = 512  # cache entries a decode chunk reads at least: below this, one program beats a compile per bucket


@dataclasses.dataclass(frozen=True)
class RolloutStats:
    compiles: int = 0  # programs built (each compiles once)
    decode_steps: int = 0
    slot_steps: int = 0  # slots x decode steps
    useful_tokens: int = 0  # tokens sampled for live samples

    def __add__(self, other: RolloutStats) -> RolloutStats:
        return RolloutStats(*(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)))

    @property
    def utilisation(self) -> float:
        return self.useful_tokens / max(self.slot_steps, 1)


@dataclasses.dataclass
class Rollout:
    """One row per (prompt, sample); a prompt's samples are contiguous. Entries at and after `lengths` are 0."""

    tokens: np.ndarray  # int32 [P*G, max_new_tokens]
    lengths: np.ndarray  # int32 [P*G], generated tokens including the stop token
    logprobs: np.ndarray  # float32 [P*G, max_new_tokens]
    prompt_index: np.ndarray  # int32 [P*G]
    finish_reason: np.ndarray  # str [P*G]: "stop" (emitted a stop id) or "length" (hit max_new_tokens)
    stats: RolloutStats = dataclasses.field(default_factory=RolloutStats)


def reply_ids(rollout: Rollout, stop_ids: Sequence[int]) -> list[list[int]]:
    """Each row's generated token ids without its final stop token."""
    replies = [row[:int(n)].tolist() for row, n in zip(rollout.tokens, rollout.lengths)]
    return [ids[:-1] if ids and ids[-1] in stop_ids else ids for ids in replies]


def concatenate(parts: Sequence[Rollout]) -> Rollout:
    """Rollouts of consecutive prompt chunks as one (prompt_index counts across the chunks, stats add up)."""
    offsets = np.cumsum([0] + [int(p.prompt_index.max()) + 1 for p in parts[:-1]])
    joined = {name: np.concatenate([getattr(p, name) for p in parts])
              for name in ("tokens", "lengths", "logprobs", "finish_reason")}
    return Rollout(**joined, prompt_index=np.concatenate([p.prompt_index + o for p, o in zip(parts, offsets)]),
                   stats=sum((p.stats for p in parts), RolloutStats()))


# ---- the plan: shapes of a run's programs ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Plan:
    """Slots and prefill rows are per process (the global arrays hold `hosts` times as many rows); pools come in
    multiples of `multiple` slots, one block per device of a process."""

    hosts: int
    multiple: int
    slots: int
    prefill_rows: int
    width: int  # prefill width: the longest prompt but its last token, bucketed
    capacity: int  # cache entries per slot: the prefill width and the reply budget, bucketed

    def compacted(self, slots: int, most_live: int) -> int:
        """The pool `slots` slots move into with at most `most_live` live per device (`slots`: none fits)."""
        keep = bucket(most_live) * self.multiple
        return keep if keep * COMPACT_RATIO <= slots else slots

    def compacts_at(self, slots: int) -> int:
        """The most live samples per device with which `slots` slots compact (0: never)."""
        return next((n for n in range(slots // self.multiple, 0, -1) if self.compacted(slots, n) < slots), 0)


def plan(*, hosts: int, batch_devices: int, prompts: int, samples: int, longest_prompt: int, max_new: int,
         num_slots: int | None) -> Plan:
    """The shapes for `prompts` prompts per process (the most any process has) of at most `longest_prompt` tokens,
    `samples` replies each of at most `max_new` tokens, over a mesh of `batch_devices` devices along its batch axes
    and `hosts` processes; `num_slots`: slots per process (default: one per sample, bucketed)."""
    multiple = max(batch_devices // hosts, 1)
    most = bucket(prompts * samples)
    slots = round_up(min(num_slots, most) if num_slots else most, multiple)
    width = bucket(longest_prompt - 1, 16)
    if width > PREFILL_CHUNK:
        width = round_up(width, PREFILL_CHUNK)
    prefill_rows = round_up(min(bucket(max(prompts, 1)), bucket(-(-slots // samples))), multiple)
    return Plan(hosts=hosts, multiple=multiple, slots=slots, prefill_rows=prefill_rows, width=width,
                capacity=width + bucket(max_new, 16))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SlotState:
    """Per slot: the next input token at position `pos`, the reply step of the token it samples, the sample id that
    keys its draws, whether a sample is live there, its token budget (numpy on the host, jax on the devices)."""

    token: np.ndarray  # int32
    pos: np.ndarray  # int32
    step: np.ndarray  # int32
    sample_id: np.ndarray  # uint32
    live: np.ndarray  # bool
    limit: np.ndarray  # int32

    @staticmethod
    def empty(slots: int) -> SlotState:
        zeros = lambda dtype: np.zeros(slots, dtype)  # noqa: E731
        return SlotState(zeros(np.int32), zeros(np.int32), zeros(np.int32), zeros(np.uint32), zeros(bool),
                         np.ones(slots, np.int32))


# ---- the compiled programs ---------------------------------------------------------------------------------------
def _shardings_of(w: InferenceWeights):
    leaves, treedef = jax.tree.flatten(w)
    return treedef, tuple(x.sharding for x in leaves)


def _cache_shardings(config, mesh, rows, capacity):
    s = kv_cache.sharding(config, mesh, rows, capacity)
    return tuple((s, s) for _ in range(config.num_hidden_layers))


@functools.lru_cache(maxsize=16)
def _allocate_program(config: Qwen2Config, mesh: Mesh, slots: int, capacity: int, dtype: str):
    return jax.jit(lambda: kv_cache.allocate(config, slots, capacity, dtype),
                   out_shardings=_cache_shardings(config, mesh, slots, capacity))


@functools.lru_cache(maxsize=64)
def _prefill_program(config: Qwen2Config, mesh: Mesh, w_treedef, w_shardings, rows: int, width: int):
    """tokens, positions [rows, width] -> per-layer caches [rows, KV, width, D], in chunks of PREFILL_CHUNK."""
    chunk = min(width, PREFILL_CHUNK)

    def prefill(w, tokens, positions):
        caches = kv_cache.allocate(config, rows, width, w.dtype)
        split = lambda x: x.reshape(rows, width // chunk, chunk).swapaxes(0, 1)  # noqa: E731  [chunks, rows, C]
        step = lambda c, xs: (inference.forward(config, w, xs[0], xs[1], c, width)[1], None)  # noqa: E731
        return jax.lax.scan(step, caches, (split(tokens), split(positions)))[0]

    batch2 = parallel.batch_sharding(mesh, 2)
    return jax.jit(prefill, in_shardings=(jax.tree.unflatten(w_treedef, w_shardings), batch2, batch2),
                   out_shardings=_cache_shardings(config, mesh, rows, width))


@functools.lru_cache(maxsize=64)
def _insert_program(config: Qwen2Config, mesh: Mesh, slots: int, capacity: int, rows: int, width: int):
    batch1 = parallel.batch_sharding(mesh, 1)
    slot_sh = _cache_shardings(config, mesh, slots, capacity)
    return jax.jit(kv_cache.insert, in_shardings=(slot_sh, _cache_shardings(config, mesh, rows, width), batch1,
                                                  batch1), out_shardings=slot_sh, donate_argnums=(0,))


@functools.lru_cache(maxsize=64)
def _decode_program(config: Qwen2Config, sampling: Sampling, stop_ids: tuple[int, ...], mesh: Mesh, w_treedef,
                    w_shardings, slots: int, capacity: int, width: int, steps: int):
    """Up to `steps` decode steps of every slot (`SlotState`); stops early when no slot is live, when a slot
    finished and `waiting` says samples wait for it; runs no step when it starts with no device holding more than
    `compact_at` live slots (the pool can compact first; -1: never). Returns the caches, the state and one int32 array
    [slots, 2 * steps + 3] for the host: the sampled tokens, the bits of their log-probs, the tokens each slot
    emitted (a prefix of the chunk: a slot stays live until it finishes), whether it is still live, the steps run."""
    stops = jnp.asarray(stop_ids if stop_ids else (-1,), jnp.int32)
    devices = parallel.batch_size_multiple(mesh)  # blocks of slots, one per device

    def decode(w, caches, state, rng, waiting, compact_at):
        def cond(carry):
            i, _, state, _, _, _, ended = carry
            most_live = state.live.reshape(devices, -1).sum(axis=1).max()
            return (i < steps) & (most_live > 0) & ~(ended & waiting) & ((i > 0) | (most_live > compact_at))

        def body(carry):
            i, caches, state, out_tok, out_logp, emitted, _ = carry
            hidden, caches = inference.forward(config, w, state.token[:, None], state.pos[:, None], caches, width)
            token, logp = sample_step(inference.logits(w, hidden[:, 0]),
                                      sample_keys(rng, state.step, state.sample_id), sampling)
            live = state.live
            out_tok = out_tok.at[:, i].set(jnp.where(live, token, 0))
            out_logp = out_logp.at[:, i].set(jnp.where(live, logp, 0.0))
            finished = live & (jnp.isin(token, stops) | (state.step + 1 >= state.limit))
            advance = live.astype(jnp.int32)
            state = dataclasses.replace(state, token=jnp.where(live, token, state.token), pos=state.pos + advance,
                                        step=state.step + advance, live=live & ~finished)
            return i + 1, caches, state, out_tok, out_logp, emitted + advance, jnp.any(finished)

        carry = (jnp.int32(0), caches, state, jnp.zeros((slots, steps), jnp.int32),
                 jnp.zeros((slots, steps), jnp.float32), jnp.zeros(slots, jnp.int32), jnp.bool_(False))
        i, caches, state, out_tok, out_logp, emitted, _ = jax.lax.while_loop(cond, body, carry)
        column = lambda x: x.astype(jnp.int32)[:, None]  # noqa: E731
        out = jnp.concatenate([out_tok, jax.lax.bitcast_convert_type(out_logp, jnp.int32), column(emitted),
                               column(state.live), jnp.broadcast_to(i, (slots, 1))], axis=1)
        return caches, state, out

    batch1, batch2 = parallel.batch_sharding(mesh, 1), parallel.batch_sharding(mesh, 2)
    cache_sh, replicated = _cache_shardings(config, mesh, slots, capacity), parallel.replicated(mesh)
    state_sh = jax.tree.map(lambda _: batch1, SlotState.empty(0))
    return jax.jit(decode, in_shardings=(jax.tree.unflatten(w_treedef, w_shardings), cache_sh, state_sh, replicated,
                                         replicated, replicated),
                   out_shardings=(cache_sh, state_sh, batch2), donate_argnums=(1,))


@functools.lru_cache(maxsize=64)
def _compact_program(config: Qwen2Config, mesh: Mesh, slots: int, capacity: int, keep: int):
    """Caches of `keep` rows taken from `slots` (the queue is empty and few slots are live). Each device keeps rows
    of its own block (`compaction_rows`; `rows` are indices inside the device's block), so no cache row crosses a
    device: a global gather would all-gather every layer's cache onto every chip."""
    cache_in = _cache_shardings(config, mesh, slots, capacity)
    cache_out = _cache_shardings(config, mesh, keep, capacity)
    batch1 = parallel.batch_sharding(mesh, 1)
    specs = lambda shardings: tuple((k.spec, v.spec) for k, v in shardings)  # noqa: E731

    gather = jax.shard_map(lambda c, r: tuple((k[r], v[r]) for k, v in c), mesh=mesh,
                           in_specs=(specs(cache_in), batch1.spec), out_specs=specs(cache_out), check_vma=False)
    return jax.jit(gather, in_shardings=(cache_in, batch1), out_shardings=cache_out)


def programs_built() -> int:
    """Programs the engine has built in this process (each compiles once): its program caches' misses."""
    programs = (_allocate_program, _prefill_program, _insert_program, _decode_program, _compact_program)
    return sum(program.cache_info().misses for program in programs)


def compaction_rows(live: np.ndarray, devices: int, keep_per_device: int) -> np.ndarray:
    """This process's slots to keep, device block by device block: each of the `devices` equal blocks of `live`
    keeps its live slots first, then idle ones, `keep_per_device` in all."""
    per = live.size // devices
    blocks = [np.arange(j * per, (j + 1) * per) for j in range(devices)]
    return np.concatenate([np.concatenate([b[live[b]], b[~live[b]]])[:keep_per_device] for b in blocks])


# ---- the serving loop --------------------------------------------------------------------------------------------
def _global(local: np.ndarray, mesh: Mesh) -> jax.Array:
    return jax.make_array_from_process_local_data(parallel.batch_sharding(mesh, local.ndim), local)


def _local(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded array (all rows in a single-process run)."""
    if x.is_fully_addressable:
        return np.array(x)
    shards = {s.index[0].start or 0: np.asarray(s.data) for s in x.addressable_shards}
    return np.concatenate([shards[k] for k in sorted(shards)])


class _Run:
    """One `run`'s serving loop and its state: the queue of samples (row p * samples + j: prompt p's sample j), the
    pool of slots, the replies (filled in place) and the stats."""

    def __init__(self, config, weights, mesh, plan, sampling, stop_ids, rng, chunk_steps, prompts, samples,
                 sample_ids, limits, replies):
        self.config, self.weights, self.mesh, self.plan, self.chunk_steps = config, weights, mesh, plan, chunk_steps
        self.sampling, self.stop_ids, self.rng = sampling, stop_ids, rng
        self.prompts, self.samples, self.sample_ids, self.limits = prompts, samples, sample_ids, limits
        self.tokens, self.logprobs, self.lengths = replies
        self.total, self.stats = len(prompts) * samples, RolloutStats()
        self.head, self.first, self.batch = 0, None, None  # the next sample's row; the prefilled prompts' first, caches
        self.caches = _allocate_program(config, mesh, plan.slots * plan.hosts, plan.capacity, str(weights.dtype))()
        # the slot state as the host knows it, each slot's sample row (-1: free), the devices' state (None: stale)
        self.state, self.row, self.on_device = SlotState.empty(plan.slots), np.full(plan.slots, -1), None
        positions = np.broadcast_to(np.arange(plan.width, dtype=np.int32), (plan.prefill_rows, plan.width))
        self.positions = _global(np.ascontiguousarray(positions), mesh)

    def serve(self) -> None:
        """Admit and fill, agree, compact, decode a chunk, collect. While samples wait, a chunk is read before the
        next goes (its free slots decide the fill); after that the last one is read while the next runs."""
        p, pending = self.plan, None  # pending: a dispatched chunk not yet read
        while True:
            rounds, live = self.admit(), self.state.live
            reach = int(self.state.pos[live].max()) + self.chunk_steps if live.any() else 1
            count, prefill_first, waiting, any_live, most_live, reach = parallel.global_max(
                len(rounds), bool(rounds) and rounds[0][0] is not None, self.head < self.total, live.any(),
                live.reshape(p.multiple, -1).sum(axis=1).max(), reach)
            self.fill(rounds, count, prefill_first)
            if not any_live:
                break
            keep = p.compacted(self.row.size, most_live)
            if not waiting and keep < self.row.size:
                self.collect(pending)  # it ran no step (`_decode_program`'s compact_at): the host's state is current
                pending = None
                self.compact(keep)
            reach += 0 if pending is None else self.chunk_steps  # the host's state is a chunk old
            chunk = self.decode_chunk(min(bucket(reach, MIN_SPAN), p.capacity), bool(waiting))
            self.collect(pending)
            if waiting:
                self.collect(chunk)
            pending = None if waiting else chunk
        self.collect(pending)

    def admit(self) -> list[tuple]:
        """Take waiting samples into the free slots (the host's state), in rounds of one batch of prompts each: the
        batch's first prompt when the round prefills it (None: prefilled before; every round after the first
        prefills), the slots, and their samples' prompt rows in the batch."""
        rounds, free, s, batch = [], np.flatnonzero(self.row < 0), self.state, self.plan.prefill_rows
        while free.size and self.head < self.total:
            p = self.head // self.samples
            fresh = self.first is None or not self.first <= p < self.first + batch
            self.first = p if fresh else self.first
            rows = np.arange(self.head, min(self.total, (self.first + batch) * self.samples, self.head + free.size))
            slots, free, prompts = free[:rows.size], free[rows.size:], [self.prompts[i] for i in rows // self.samples]
            s.token[slots], s.pos[slots], s.step[slots] = [q[-1] for q in prompts], [len(q) - 1 for q in prompts], 0
            s.sample_id[slots], s.live[slots], s.limit[slots] = self.sample_ids[rows], True, self.limits[rows]
            self.row[slots], self.head = rows, int(rows[-1]) + 1
            rounds.append((p if fresh else None, slots, rows // self.samples - self.first))
        if rounds:
            self.on_device = None
        return rounds

    def fill(self, rounds: list[tuple], count: int, prefill_first: bool) -> None:
        """Prefill and insert the admitted prompts, `count` rounds on every process (a round this process lacks
        prefills a throwaway batch and inserts nothing)."""
        p, slots, offset = self.plan, self.row.size, jax.process_index()
        for i in range(count):
            first, taken, sources = rounds[i] if i < len(rounds) else (None, np.zeros(0, int), np.zeros(0, int))
            if i or prefill_first:
                ids = np.zeros((p.prefill_rows, p.width), np.int32)
                for r, prompt in enumerate(self.prompts[first:first + p.prefill_rows] if first is not None else []):
                    ids[r, :len(prompt) - 1] = prompt[:-1]
                prefill = _prefill_program(self.config, self.mesh, *_shardings_of(self.weights),
                                           p.prefill_rows * p.hosts, p.width)
                fresh = prefill(self.weights, _global(ids, self.mesh), self.positions)
                if first is not None or self.batch is None:
                    self.batch = fresh
            slot_ids = np.full(slots, slots * p.hosts, np.int32)  # out of range: no insert
            rows = np.zeros(slots, np.int32)
            slot_ids[taken], rows[taken] = offset * slots + taken, offset * p.prefill_rows + sources
            insert = _insert_program(self.config, self.mesh, slots * p.hosts, p.capacity, p.prefill_rows * p.hosts,
                                     p.width)
            self.caches = insert(self.caches, self.batch, _global(slot_ids, self.mesh), _global(rows, self.mesh))

    def compact(self, keep: int) -> None:
        """Move the live samples into a pool of `keep` slots, each device keeping its own."""
        p, slots = self.plan, self.row.size
        rows = compaction_rows(self.state.live, p.multiple, keep // p.multiple)
        program = _compact_program(self.config, self.mesh, slots * p.hosts, p.capacity, keep * p.hosts)
        self.caches = program(self.caches, _global((rows % (slots // p.multiple)).astype(np.int32), self.mesh))
        self.state, self.row, self.on_device = jax.tree.map(lambda x: x[rows], self.state), self.row[rows], None

    def decode_chunk(self, span: int, waiting: bool) -> jax.Array:
        """Dispatch a chunk of decode steps reading `span` cache entries; returns its output, not yet read."""
        p, slots = self.plan, self.row.size
        if self.on_device is None:
            self.on_device = jax.tree.map(lambda x: _global(x, self.mesh), self.state)
        program = _decode_program(self.config, self.sampling, self.stop_ids, self.mesh, *_shardings_of(self.weights),
                                  slots * p.hosts, p.capacity, span, self.chunk_steps)
        compact_at = -1 if waiting else p.compacts_at(slots)
        self.caches, self.on_device, out = program(self.weights, self.caches, self.on_device, self.rng,
                                                   jnp.bool_(waiting), jnp.int32(compact_at))
        return out

    def collect(self, out: jax.Array | None) -> None:
        """Read a chunk's output (None: none) in one transfer: append the samples' tokens, update the host's state."""
        if out is None:
            return
        n, s = self.chunk_steps, self.state
        out = _local(out)
        tokens, logprobs = out[:, :n], out[:, n:2 * n].view(np.float32)
        emitted, live, steps = out[:, 2 * n], out[:, 2 * n + 1].astype(bool), int(out[0, 2 * n + 2])
        for slot in np.flatnonzero(emitted):
            row, k = self.row[slot], emitted[slot]
            done = slice(self.lengths[row], self.lengths[row] + k)
            self.tokens[row, done], self.logprobs[row, done] = tokens[slot, :k], logprobs[slot, :k]
            self.lengths[row] += k
        s.token = np.where(emitted > 0, tokens[np.arange(self.row.size), np.maximum(emitted - 1, 0)], s.token)
        s.pos, s.step, s.live = s.pos + emitted, s.step + emitted, live
        self.row = np.where(live, self.row, -1)
        self.stats += RolloutStats(decode_steps=steps, slot_steps=steps * self.row.size,
                                   useful_tokens=int(emitted.sum()))


def run(config: Qwen2Config, weights: InferenceWeights, prompts: list[list[int]], *, num_samples: int,
        limits: np.ndarray, sampling: Sampling, stop_ids: tuple[int, ...], rng: jax.Array, mesh: Mesh,
        sample_ids: np.ndarray, num_slots: int | None = None, chunk_steps: int = DEFAULT_CHUNK_STEPS) -> Rollout:
    """Decode this process's samples (prompt p's sample j is row p * num_samples + j) with at most
    `limits[row]` tokens each. Inputs are checked by `generate`; an empty queue returns an empty Rollout."""
    total = len(prompts) * num_samples
    most_prompts, longest, max_new = parallel.global_max(len(prompts), max(map(len, prompts), default=0),
                                                         int(limits.max()) if total else 1)
    tokens, logprobs = np.zeros((total, max_new), np.int32), np.zeros((total, max_new), np.float32)
    lengths, stats, built = np.zeros(total, np.int32), RolloutStats(), programs_built()
    if most_prompts:
        shapes = plan(hosts=jax.process_count(), batch_devices=parallel.batch_size_multiple(mesh),
                      prompts=most_prompts, samples=num_samples, longest_prompt=longest, max_new=max_new,
                      num_slots=num_slots)
        state = _Run(config, weights, mesh, shapes, sampling, stop_ids, rng, chunk_steps, prompts, num_samples,
                     sample_ids, limits, (tokens, logprobs, lengths))
        state.serve()
        stats = dataclasses.replace(state.stats, compiles=programs_built() - built)
    last = tokens[np.arange(total), np.maximum(lengths - 1, 0)]
    stopped = (lengths > 0) & np.isin(last, np.asarray(stop_ids, np.int64))
    return Rollout(tokens=tokens, lengths=lengths, logprobs=logprobs,
                   prompt_index=np.repeat(np.arange(len(prompts), dtype=np.int32), num_samples),
                   finish_reason=np.where(stopped, "stop", "length"), stats=stats)


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
    for name, value in (("num_samples", num_samples), ("num_slots", num_slots), ("chunk_steps", chunk_steps)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
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
