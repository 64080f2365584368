"""`tooln1 compile`: compile, ahead of time and for a slice that is not here, every program one training step runs,
at the config's worst-case shapes, and report per chip memory, FLOPs and a roofline time.

    tooln1 compile --config configs/qwen2_5_7b_grpo.yaml --topology v5p:4x4x4 [--set k=v ...] [--eval] [--json OUT]

The mesh is the run's (`parallel.make_mesh` of the config's mesh section) over the devices of a TPU topology that
libtpu describes without the chips (`jax.experimental.topologies`), and the programs are the trainer's own jitted
functions (rollout engine, log-prob passes, GRPO or SFT update), lowered with ShapeDtypeStructs and compiled by the
real TPU compiler: nothing is allocated and no weights are read (the model shape comes from the config; a hub id
that is not on disk gives its size through the config's file name, e.g. qwen2_5_7b_grpo.yaml).

Worst case: every prompt at data.max_prompt_tokens, every reply at rollout.max_new_tokens (SFT: every example at
sft.max_seq_len), packed and sliced as the trainer would (`packing.pack_groups`, the engine's slot and prefill
arithmetic). Per program:
- bytes per chip = arguments + outputs - aliased (donated) + temporaries of the compiled program, plus what else
  is resident while it runs (policy weights, optimizer state, reference weights, the rollout's weight copy and KV
  caches, the step's other mini-batches), against the chip's HBM (`chips.py`);
- FLOPs and bytes accessed per chip: the matrix products of the program's jaxpr (2 x output elements x contracted
  size; the bytes of their operands and result, each read or written once from HBM: elementwise traffic is not
  counted), every loop body times its trip count, split evenly over the devices. XLA's cost_analysis counts a
  loop body once (a scan over 28 layers, or 16 decode steps, counts as one); its figures are reported as
  `xla_flops`, `xla_bytes_accessed`. On a program without loops the FLOPs agree within a few percent;
- roofline seconds = max(FLOPs / peak bf16 FLOP/s, bytes / HBM bandwidth) of one chip.
The step estimate sums runs x roofline over one step at the reference batch (train.batch_size), assuming every
reply runs to the cap and every decode chunk reads the cache's full capacity (an upper bound on the rollout), and
no overlap of communication with compute (not modelled: the roofline omits the interconnect). MFU = model FLOPs
(6 N per trained token, 2 N per token of every forward-only pass, N = parameters) / (chips x peak x step time).
`model.dtype: auto` is bfloat16, attention and head `auto` are what an accelerator picks (blockwise, chunked).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from tooln1_jax import chips, parallel
from tooln1_jax.config import RunConfig
from tooln1_jax.models import lora, presets, qwen2
from tooln1_jax.models.qwen2 import Qwen2Config

GB = 1e9
log = logging.getLogger(__name__)


# ---- the target: devices, chip, model --------------------------------------------------------------------------
def topology_devices(name: str) -> list:
    """The devices of a TPU slice ("v5p:4x4x4", "v5e:2x2", ...), described by libtpu without the chips."""
    from jax.experimental import topologies

    # describing a slice touches no chip: another process holding libtpu (a test worker) must not block it
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if not re.fullmatch(r"v\d+[a-z]*:\d+(x\d+)+", name):
        raise ValueError(f"--topology {name!r}: expected GENERATION:AxB[xC], e.g. v5p:2x4x4 or v5e:2x2")
    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
    except Exception as e:  # noqa: BLE001  libtpu's message says what it could not build
        raise ValueError(f"--topology {name!r}: libtpu cannot describe it ({e}); libtpu comes with "
                         f"pip install -e '.[tpu]' (or the dev extra)") from e


def devices_per_chip(devices) -> int:
    """Devices jax sees per chip (libtpu describes v4 slices with one device per TensorCore)."""
    return len(devices) // len({(d.process_index, tuple(d.coords)) for d in devices})


def model_config(cfg: RunConfig, config_path: str | None) -> Qwen2Config:
    """The run's model shape with what an accelerator runs: bfloat16 for dtype auto, blockwise attention and the
    chunked head for auto. A hub id that is not on disk falls back to the preset the config's file name names."""
    from tooln1_jax.train.run import build_config

    try:
        model = build_config(cfg)
    except FileNotFoundError:
        match = re.search(r"(qwen2_5|qwen3)_(\d+(?:_\d+)?b)", os.path.basename(config_path or ""))
        if not match:
            raise
        m = cfg.model
        name = "-".join(part.replace("_", ".") for part in match.groups())  # qwen2_5_7b -> qwen2.5-7b
        model = presets.preset(name, param_dtype=m.param_dtype, remat=m.remat,
                               attention=m.attention, head=m.head, lora_rank=m.lora_rank, lora_alpha=m.lora_alpha,
                               lora_targets=tuple(m.lora_targets))
    return model.replace(dtype="bfloat16" if cfg.model.dtype == "auto" else cfg.model.dtype,
                         attention="blockwise" if model.attention == "auto" else model.attention,
                         head="chunked" if model.head == "auto" else model.head)


# ---- abstract arrays ---------------------------------------------------------------------------------------------
def abstract(shapes, shardings):
    """ShapeDtypeStructs of a tree of shapes placed by a matching tree of shardings."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def batch_spec(mesh, shape: tuple, dtype) -> jax.ShapeDtypeStruct:
    """A ShapeDtypeStruct with its leading dim over the batch axes, as the trainer places batches."""
    return jax.ShapeDtypeStruct(shape, dtype, sharding=parallel.batch_sharding(mesh, len(shape)))


def per_chip_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
    return int(sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree) if not jnp.issubdtype(x.dtype, jax.dtypes.prng_key)))


@dataclasses.dataclass(frozen=True)
class TrainingState:
    """The abstract policy, optimizer state and reference of a run, with the step functions over them."""

    params: dict
    opt_state: object
    reference: dict | None  # the KL reference's weights (None without a KL term)
    reference_bytes: int  # per chip: with LoRA only the adapters' copy (the base is shared)
    steps: object  # train.step.StepFunctions


def training_state(cfg: RunConfig, model: Qwen2Config, mesh) -> TrainingState:
    from tooln1_jax.train.step import StepFunctions, make_optimizer

    shapes, logical = qwen2.abstract_params(model)
    params = abstract(shapes, parallel.shardings(shapes, logical, mesh))
    optimizer = make_optimizer(cfg.optim, cfg.train.steps or 1)  # null: set by data.num_epochs (no shapes)
    steps = StepFunctions(model, optimizer, mesh, params)
    opt_state = abstract(jax.eval_shape(optimizer.init, lora.partition(params)[0]), steps.opt_shardings)
    if cfg.grpo.beta <= 0:
        return TrainingState(params, opt_state, None, 0, steps)
    if model.lora_rank:  # the frozen base with a copy of the starting adapters
        return TrainingState(params, opt_state, params, per_chip_bytes(lora.partition(params)[0]), steps)
    dtype = model.dtype if cfg.grpo.ref_dtype == "compute" else None
    reference = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype or x.dtype, sharding=x.sharding), params)
    return TrainingState(params, opt_state, reference, per_chip_bytes(reference), steps)


# ---- worst-case shapes -------------------------------------------------------------------------------------------
def hosts_of(mesh) -> int:
    return len({d.process_index for d in mesh.devices.flat})


def packed_batch(mesh, prompt: int, replies: int, reply: int, groups: int, budget: int, micro_rows: int, *,
                 reply_cap: int) -> dict:
    """The packed batch (`packing.pack_groups`, then as `run.global_batch` places it) of `groups` prompts of `prompt`
    tokens per host with `replies` replies of `reply` tokens each (at most `reply_cap`, and at most `prompt` +
    `replies` x `reply` tokens per group): ShapeDtypeStructs of PACKED_KEYS + response_mask."""
    from tooln1_jax.train import packing
    from tooln1_jax.train.step import PACKED_KEYS

    hosts = hosts_of(mesh)
    if micro_rows % hosts:
        raise ValueError(f"train.micro_batch_rows: {micro_rows} packed rows per pass do not split over {hosts} hosts")
    if groups < 1:
        raise ValueError(f"train.mini_batch_size / train.batch_size: fewer prompts than the {hosts} hosts")
    packed = packing.pack_groups([np.zeros(prompt, np.int32)] * groups,
                                 [[np.zeros(reply, np.int32)] * replies] * groups, budget=budget,
                                 rows_multiple=micro_rows // hosts,
                                 reply_width=packing.reply_width_for(reply, reply_cap),
                                 max_length=prompt + replies * reply)
    rows, length, slots, width = packed.shape
    rows *= hosts
    batch = {k: batch_spec(mesh, (rows, length), jnp.int32) for k in PACKED_KEYS[:4]}
    batch.update({k: batch_spec(mesh, (rows, slots, width), jnp.int32) for k in PACKED_KEYS[4:]})
    batch["response_mask"] = batch_spec(mesh, (rows, slots, width), jnp.float32)
    return batch


@dataclasses.dataclass(frozen=True)
class RolloutPlan:
    """The shapes `engine.run` picks for one sampler call (global: all hosts), and its runs per call when every
    reply runs to the cap."""

    slots: int
    prefill_rows: int
    width: int  # prefill width (prompt tokens but the last, bucketed)
    capacity: int
    compact_to: int | None  # rows of the first compaction's pool (None: the engine never compacts this pool)
    prefill_batches: int  # per call
    decode_chunks: int  # per call


def rollout_plan(mesh, prompts: int, samples: int, prompt: int, reply: int, num_slots: int | None,
                 chunk_steps: int) -> RolloutPlan:
    """`engine.plan` for `prompts` prompts per host of `prompt` tokens, `samples` replies each, in global rows."""
    from tooln1_jax.rollout import engine

    hosts = hosts_of(mesh)
    p = engine.plan(hosts=hosts, batch_devices=parallel.batch_size_multiple(mesh), prompts=prompts, samples=samples,
                    longest_prompt=prompt, max_new=reply, num_slots=num_slots)
    waves = -(-prompts * samples // p.slots)
    compact_to = p.compacted(p.slots, p.compacts_at(p.slots))  # the first compaction's pool (p.slots: none)
    return RolloutPlan(slots=p.slots * hosts, prefill_rows=p.prefill_rows * hosts, width=p.width,
                       capacity=p.capacity, compact_to=compact_to * hosts if compact_to < p.slots else None,
                       prefill_batches=-(-prompts // p.prefill_rows), decode_chunks=waves * -(-reply // chunk_steps))


# ---- counting FLOPs and bytes on a jaxpr -------------------------------------------------------------------------
def _sub_jaxprs(params: dict):
    from jax.extend import core

    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, (core.ClosedJaxpr, core.Jaxpr)):
                yield item.jaxpr if isinstance(item, core.ClosedJaxpr) else item


def matmul_cost(jaxpr, while_trips: int | None = 1) -> tuple[float, float]:
    """(FLOPs, bytes) of the matrix products of a jaxpr: 2 x output elements x contracted size each, and the bytes of
    their operands and result; a scan's body counts `length` times, a while loop's `while_trips` times (None: every
    loop body once, as XLA's cost analysis counts), a cond its costliest branch. Global figures (divide by the
    devices for one device's share)."""
    flops = nbytes = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs, rhs, out = eqn.invars[0].aval, eqn.invars[1].aval, eqn.outvars[0].aval
            flops += 2.0 * math.prod(out.shape) * math.prod(lhs.shape[d] for d in contract)
            nbytes += sum(math.prod(a.shape) * a.dtype.itemsize for a in (lhs, rhs, out))
            continue
        costs = [matmul_cost(sub, while_trips) for sub in _sub_jaxprs(eqn.params)]
        if not costs:
            continue
        name = eqn.primitive.name
        times = 1 if while_trips is None else eqn.params["length"] if name == "scan" else while_trips \
            if name == "while" else 1
        f, b = max(costs) if name == "cond" else (sum(c[0] for c in costs), sum(c[1] for c in costs))
        flops, nbytes = flops + times * f, nbytes + times * b
    return flops, nbytes


# ---- compiling one program ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Target:
    chip: chips.Chip
    devices: int
    per_chip: int  # devices per chip

    @property
    def hbm(self) -> int:
        return int(self.chip.hbm_bytes // self.per_chip)

    def seconds(self, flops: float, nbytes: float) -> float:
        return max(flops * self.per_chip / self.chip.peak_flops, nbytes * self.per_chip / self.chip.hbm_bandwidth)


def compile_program(target: Target, name: str, program, args: tuple, *, runs: int, resident: int,
                    while_trips: int = 1) -> tuple[dict, object]:
    """Trace, lower and compile `program(*args)`; its report and its outputs (ShapeDtypeStructs). The report:
    runs per training step (0: not part of a step, e.g. eval or the warm start); bytes per chip, the program's own
    and `resident` (what else is held while it runs), against the chip's HBM; FLOPs, bytes accessed and roofline
    seconds of one run on one chip; XLA's own FLOPs and bytes."""
    start = time.perf_counter()
    traced = program.trace(*args)
    flops, nbytes = (x / target.devices for x in matmul_cost(traced.jaxpr.jaxpr, while_trips))
    try:
        compiled = traced.lower().compile()
    except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses temporaries beyond the HBM
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        error = str(e).splitlines()[0]
        log.info("%s: out of HBM at compile time (%s)", name, error)
        own = {"argument_bytes": per_chip_bytes(args), "temp_bytes": _temporaries_of(str(e))}
        peak, memory, xla = sum(own.values()), {**own, "resident_bytes": resident, "compiler_error": error}, {}
    else:
        log.info("compiled %s in %.0f s", name, time.perf_counter() - start)
        m = compiled.memory_analysis()
        own = {"argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
               "alias_bytes": int(m.alias_size_in_bytes), "temp_bytes": int(m.temp_size_in_bytes)}
        peak = own["argument_bytes"] + own["output_bytes"] - own["alias_bytes"] + own["temp_bytes"]
        memory, xla = {**own, "resident_bytes": resident}, compiled.cost_analysis()
        xla = (xla[0] if isinstance(xla, (list, tuple)) else xla) or {}
    report = {"name": name, "runs_per_step": runs, "bytes_per_chip": peak + resident, "chip_hbm_bytes": target.hbm,
              "fits": peak + resident <= target.hbm, "flops": flops, "bytes_accessed": nbytes,
              "estimated_seconds": target.seconds(flops, nbytes), "xla_flops": float(xla.get("flops", 0.0)),
              "xla_bytes_accessed": float(xla.get("bytes accessed", 0.0)), **memory}
    return report, traced.out_info


def _temporaries_of(message: str) -> int:
    """The temporaries' bytes in the TPU compiler's out-of-memory message ("... HLO temporaries (29.28G) ...")."""
    match = re.search(r"temporaries \(([\d.]+)([KMGT])\)", message)
    if not match:
        return 0
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2)))


# ---- the programs of a run ---------------------------------------------------------------------------------------
def _rollout_programs(target, model, mesh, state: TrainingState, plan: RolloutPlan, *, prefix: str, dtype: str,
                      fsdp: bool, sampling, calls: int, chunk_steps: int, resident: int) -> list[dict]:
    """The rollout weights, prefill, insert, decode and compaction programs of `calls` sampler calls per step
    (calls 0: reported, not counted in the step); `resident`: bytes per chip held throughout (policy, optimizer,
    reference)."""
    from tooln1_jax.rollout import engine, inference, kv_cache

    leaves, treedef = jax.tree.flatten(state.params)
    prepare = inference._prepare_program(model, dtype, fsdp, mesh, treedef, tuple(x.sharding for x in leaves))
    weights_report, weights = compile_program(target, f"{prefix}weights", prepare, (state.params,), runs=calls,
                                              resident=resident - per_chip_bytes(state.params))
    w_treedef, w_shardings = engine._shardings_of(weights)
    w_bytes = per_chip_bytes(weights)

    def cache_specs(rows, capacity):
        s = kv_cache.sharding(model, mesh, rows, capacity)
        shape = (rows, model.num_key_value_heads, capacity, model.head_dim)
        return tuple((jax.ShapeDtypeStruct(shape, dtype, sharding=s),) * 2 for _ in range(model.num_hidden_layers))

    def scalar(dt):
        return jax.ShapeDtypeStruct((), dt, sharding=parallel.replicated(mesh))

    def report(name, program, args, runs, held, **kwargs):  # held: resident besides `resident`
        return compile_program(target, prefix + name, program, args, runs=runs, resident=resident + held, **kwargs)[0]

    slot_caches, prompt_caches = cache_specs(plan.slots, plan.capacity), cache_specs(plan.prefill_rows, plan.width)
    slot_kv, prompt_kv = per_chip_bytes(slot_caches), per_chip_bytes(prompt_caches)
    ids = batch_spec(mesh, (plan.prefill_rows, plan.width), jnp.int32)
    slot_ids = batch_spec(mesh, (plan.slots,), jnp.int32)
    decode_state = jax.tree.map(lambda x: batch_spec(mesh, (plan.slots,), x.dtype), engine.SlotState.empty(0))
    rng = scalar(jax.eval_shape(lambda: jax.random.key(0)).dtype)
    decode_args = (weights, slot_caches, decode_state, rng, scalar(jnp.bool_), scalar(jnp.int32))  # waiting, compact_at
    prefills = calls * plan.prefill_batches

    reports = [weights_report]
    allocate = engine._allocate_program(model, mesh, plan.slots, plan.capacity, dtype)
    reports.append(report("kv_cache", allocate, (), calls, w_bytes))
    prefill = engine._prefill_program(model, mesh, w_treedef, w_shardings, plan.prefill_rows, plan.width)
    reports.append(report("prefill", prefill, (weights, ids, ids), prefills, slot_kv + prompt_kv))
    insert = engine._insert_program(model, mesh, plan.slots, plan.capacity, plan.prefill_rows, plan.width)
    reports.append(report("insert", insert, (slot_caches, prompt_caches, slot_ids, slot_ids), prefills, w_bytes))
    decode = engine._decode_program(model, sampling, tuple(engine.DEFAULT_STOP_IDS), mesh, w_treedef, w_shardings,
                                    plan.slots, plan.capacity, plan.capacity, chunk_steps)
    reports.append(report("decode", decode, decode_args, calls * plan.decode_chunks, prompt_kv,
                          while_trips=chunk_steps))
    if plan.compact_to:  # every reply at the cap: all finish together, so a step runs none
        compact = engine._compact_program(model, mesh, plan.slots, plan.capacity, plan.compact_to)
        reports.append(report("compact", compact, (slot_caches, batch_spec(mesh, (plan.compact_to,), jnp.int32)), 0,
                              w_bytes + prompt_kv))
    return reports


def batch_shapes(batch: dict) -> dict:
    rows, length = batch["tokens"].shape
    _, slots, width = batch["predict"].shape
    return {"rows": rows, "row_tokens": length, "slots": slots, "reply_width": width}


def _grpo_programs(target, cfg: RunConfig, mesh, state: TrainingState, micro_rows: int,
                   shapes: dict) -> list[dict]:
    """The old and reference log-prob passes and the GRPO updates of one step (`trainer.packed_minibatches` and
    `packed_update`): every mini-batch is built, with its log-probs, before the first update."""
    from tooln1_jax.train.step import PACKED_KEYS, GRPOSettings

    t, r, g = cfg.train, cfg.rollout, cfg.grpo
    hosts, n_mb = hosts_of(mesh), t.batch_size // t.mini_batch_size
    batch = packed_batch(mesh, cfg.data.max_prompt_tokens, r.num_generations, r.max_new_tokens,
                         t.mini_batch_size // hosts, t.pack_tokens, micro_rows, reply_cap=r.max_new_tokens)
    rows, slots, width = batch["predict"].shape
    shapes["mini_batch"] = {**batch_shapes(batch), "micro_rows": micro_rows, "mini_batches": n_mb}
    full = {**batch, "advantages": batch_spec(mesh, (rows, slots), jnp.float32),
            "old_logp": batch_spec(mesh, (rows, slots, width), jnp.float32)}
    if state.reference is not None:
        full["ref_logp"] = full["old_logp"]
    batches = n_mb * per_chip_bytes(full)  # the step's mini-batches, all held until the last update
    held = per_chip_bytes(state.opt_state) + state.reference_bytes
    inputs = {k: batch[k] for k in PACKED_KEYS}
    temperature = float(r.temperature)
    reports = []
    if n_mb > 1:  # the first mini-batch takes its old log-probs from its update's own forward
        program = state.steps.packed_logprob_program(temperature, True, micro_rows)
        reports.append(compile_program(target, "old_logprobs", program, (state.params, inputs), runs=n_mb - 1,
                                       resident=held + batches)[0])
    if state.reference is not None:
        program = state.steps.packed_logprob_program(temperature, False, micro_rows)
        # besides the reference: the policy (with LoRA only its adapters: the reference shares the frozen base)
        policy = per_chip_bytes(lora.partition(state.params)[0] if state.reference is state.params else state.params)
        reports.append(compile_program(target, "ref_logprobs", program, (state.reference, inputs), runs=n_mb,
                                       resident=policy + per_chip_bytes(state.opt_state) + batches)[0])
    settings = GRPOSettings(temperature=r.temperature, max_len=r.max_new_tokens, micro_batch_size=micro_rows, grpo=g)
    others = state.reference_bytes + batches - per_chip_bytes(full)
    first = {k: v for k, v in full.items() if k != "old_logp"}
    program = state.steps.grpo_packed_program(first, settings, log_entropy=True)
    reports.append(compile_program(target, "update_first", program, (state.params, state.opt_state, first), runs=1,
                                   resident=others)[0])
    if n_mb > 1:
        program = state.steps.grpo_packed_program(full, settings)
        reports.append(compile_program(target, "update", program, (state.params, state.opt_state, full),
                                       runs=n_mb - 1, resident=others)[0])
    return reports


def _sft_program(target, cfg: RunConfig, mesh, state: TrainingState, micro_rows: int, shapes: dict, *, name: str,
                 runs: int) -> dict:
    """The packed supervised update (`sft.supervised_step`) at its worst case: every example
    sft.max_seq_len tokens, its prompt data.max_prompt_tokens (or one token short of the limit)."""
    t = cfg.train
    prompt = min(cfg.data.max_prompt_tokens, cfg.sft.max_seq_len - 1)
    batch = packed_batch(mesh, prompt, 1, cfg.sft.max_seq_len - prompt, t.batch_size // hosts_of(mesh),
                         t.pack_tokens, micro_rows, reply_cap=cfg.sft.max_seq_len)
    shapes[name] = {**batch_shapes(batch), "micro_rows": micro_rows}
    program = state.steps.sft_packed_program(batch, micro_rows)
    return compile_program(target, name, program, (state.params, state.opt_state, batch), runs=runs, resident=0)[0]


def compile_report(cfg: RunConfig, devices, *, config_path: str | None = None, sft: bool = False,
                   with_eval: bool = False) -> dict:
    """Compile every program of one training step (GRPO, or SFT with `sft`) of `cfg` for `devices`; the report
    (see the module docstring). `with_eval` adds the greedy validation's programs (not counted in the step)."""
    from tooln1_jax.rollout.engine import DEFAULT_CHUNK_STEPS
    from tooln1_jax.rollout.sampling import Sampling

    target = Target(chips.chip_of(devices[0].device_kind), len(devices), devices_per_chip(devices))
    model = model_config(cfg, config_path)
    mesh = parallel.make_mesh({"data": cfg.mesh.data, "fsdp": cfg.mesh.fsdp, "tensor": cfg.mesh.tensor}, devices)
    state = training_state(cfg, model, mesh)
    hosts, t, r = hosts_of(mesh), cfg.train, cfg.rollout
    micro_rows = t.micro_batch_rows or parallel.batch_size_multiple(mesh)
    held = per_chip_bytes(state.params) + per_chip_bytes(state.opt_state) + state.reference_bytes
    prompt, n, shapes = cfg.data.max_prompt_tokens, model.num_params, {}
    if sft:
        programs = [_sft_program(target, cfg, mesh, state, micro_rows, shapes, name="sft_update", runs=1)]
        model_flops = 6 * n * t.batch_size * cfg.sft.max_seq_len
    else:
        local = t.batch_size // hosts
        chunk = max(1, r.prompts_per_call // hosts) if r.prompts_per_call else local
        plan = rollout_plan(mesh, chunk, r.num_generations, prompt, r.max_new_tokens, r.num_slots or None,
                            r.chunk_steps)
        shapes["rollout"] = dataclasses.asdict(plan)
        programs = _rollout_programs(target, model, mesh, state, plan, prefix="rollout_",
                                     dtype=r.inference_dtype or model.dtype, fsdp=r.inference_fsdp,
                                     sampling=Sampling(float(r.temperature), float(r.top_p), int(r.top_k)),
                                     calls=-(-local // chunk), chunk_steps=r.chunk_steps, resident=held)
        programs += _grpo_programs(target, cfg, mesh, state, micro_rows, shapes)
        if cfg.sft.warm_start_steps:
            programs.append(_sft_program(target, cfg, mesh, state, micro_rows, shapes, name="warm_start_update",
                                         runs=0))
        tokens = t.batch_size * (prompt + r.num_generations * r.max_new_tokens)
        n_mb = t.batch_size // t.mini_batch_size
        forwards = 1 + (n_mb - 1) / n_mb + (1 if state.reference is not None else 0)  # rollout, old, reference
        model_flops = 6 * n * tokens + 2 * n * tokens * forwards
    if with_eval and t.eval_size // hosts:
        plan = rollout_plan(mesh, t.eval_size // hosts, 1, prompt, r.max_new_tokens, None, DEFAULT_CHUNK_STEPS)
        shapes["eval"] = dataclasses.asdict(plan)
        programs += _rollout_programs(target, model, mesh, state, plan, prefix="eval_", dtype=model.dtype, fsdp=False,
                                      sampling=Sampling(0.0, 1.0, 0), calls=0, chunk_steps=DEFAULT_CHUNK_STEPS,
                                      resident=held)
    step_seconds = sum(p["runs_per_step"] * p["estimated_seconds"] for p in programs)
    n_chips = target.devices // target.per_chip
    return {"chip": target.chip.name, "chips": n_chips, "shapes": shapes, "hosts": hosts, "mesh": dict(mesh.shape),
            "run": "sft" if sft else "grpo",
            "model": {"params": n, "dtype": model.dtype, "param_dtype": model.param_dtype,
                      "remat": model.remat_policy, "attention": model.attention, "head": model.head,
                      "lora_rank": model.lora_rank},
            "fits": all(p["fits"] for p in programs), "estimated_step_seconds": step_seconds,
            "estimated_mfu": model_flops / (n_chips * target.chip.peak_flops * step_seconds) if step_seconds else 0.0,
            "programs": programs}


# ---- the command -------------------------------------------------------------------------------------------------
def verdict(report: dict) -> str:
    hbm = report["programs"][0]["chip_hbm_bytes"] / GB
    too_big = [p for p in report["programs"] if not p["fits"]]
    if too_big:
        names = ", ".join(f"{p['name']} needs {p['bytes_per_chip'] / GB:.1f} GB" for p in too_big)
        return f"DOES NOT FIT on {report['topology']}: {names} per chip of {hbm:.1f} GB ({report['chip']} HBM)"
    largest = max(report["programs"], key=lambda p: p["bytes_per_chip"])
    return (f"fits on {report['topology']}: every program within {hbm:.1f} GB of {report['chip']} HBM per chip "
            f"(largest: {largest['name']}, {largest['bytes_per_chip'] / GB:.1f} GB)")


def table(report: dict) -> str:
    mesh = " x ".join(f"{k} {v}" for k, v in report["mesh"].items())
    lines = [f"{report['config']} ({report['run']}, {report['model']['params'] / 1e9:.2f}B params) on "
             f"{report['topology']}: {report['chips']} x {report['chip']}, {report['hosts']} hosts, mesh {mesh}",
             f"{'program':<24}{'runs/step':>10}{'GB/chip':>10}{'HBM GB':>8}{'fits':>6}{'GFLOP/chip':>13}"
             f"{'GB accessed':>13}{'roofline ms':>13}"]
    for p in report["programs"]:
        lines.append(f"{p['name']:<24}{p['runs_per_step']:>10}{p['bytes_per_chip'] / GB:>10.2f}"
                     f"{p['chip_hbm_bytes'] / GB:>8.1f}{'yes' if p['fits'] else 'NO':>6}{p['flops'] / 1e9:>13.1f}"
                     f"{p['bytes_accessed'] / GB:>13.2f}{p['estimated_seconds'] * 1e3:>13.2f}")
    lines.append(verdict(report))
    lines.append(f"step estimate at the reference batch (every reply at the cap): "
                 f"{report['estimated_step_seconds']:.3g} s, MFU {100 * report['estimated_mfu']:.1f}%")
    return "\n".join(lines)


def run_cli(args) -> int:
    """`tooln1 compile`: the table on stdout, the JSON report to --json; 1 when a program does not fit."""
    import json

    from tooln1_jax import config as config_lib
    from tooln1_jax import logs

    logs.configure_logging()
    cfg = config_lib.load(args.config, args.overrides)
    devices = jax.devices() if args.topology == "local" else topology_devices(args.topology)
    report = {"topology": args.topology, "config": args.config, "overrides": list(args.overrides),
              "versions": _versions()}
    report.update(compile_report(cfg, devices, config_path=args.config, sft=args.sft, with_eval=args.eval))
    print(table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if report["fits"] else 1


def _versions() -> dict:
    from importlib import metadata

    out = {"jax": jax.__version__}
    try:
        out["libtpu"] = metadata.version("libtpu")
    except metadata.PackageNotFoundError:
        pass
    return out
