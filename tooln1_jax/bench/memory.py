"""Memory report: compile (ahead of time, abstract shapes, fake CPU devices) the packed GRPO update and log-prob
programs of a run config at its worst-case lengths, and print XLA's per-device bytes as JSON.

    python -m tooln1_jax.bench.memory --config configs/qwen2_5_7b_grpo.yaml [--devices 8] [--set key=value ...]

Nothing is allocated: parameters, optimizer state and batch are ShapeDtypeStructs with the run's shardings, on
`--devices` fake CPU devices (XLA_FLAGS is set before jax is imported), so the programs are the ones the trainer
would run on that mesh, compiled by the CPU backend. Worst case: every prompt at data.max_prompt_tokens, every
reply at rollout.max_new_tokens, so a group is P + G x R tokens; rows hold as many whole groups as fit
train.pack_tokens (at least one). "peak_bytes" = arguments + outputs - aliased + temporaries of a program;
"resident_bytes" adds what else lives during it (the reference weights during the update, the optimizer state
during the log-prob passes). The CPU compiler's buffer assignment differs from the GPU/TPU one (fusion, layouts):
treat the figures as estimates with a margin of a few GB. `model.dtype: auto` is taken as bfloat16 (the
accelerator default). The rollout's KV cache is not in these programs (see the config headers).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys


def _set_fake_devices(n: int) -> None:
    if "jax" in sys.modules:
        raise RuntimeError("tooln1_jax.bench.memory must set XLA_FLAGS before jax is imported")
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n} " + os.environ.get("XLA_FLAGS", "")
    os.environ["JAX_PLATFORMS"] = "cpu"


def _model_config(cfg, config_path: str):
    """The run's model shape; a hub id that is not on disk falls back to the preset named by the config file."""
    from tooln1_jax.models import presets
    from tooln1_jax.train.run import build_config

    m = cfg.model
    runtime = {"dtype": "bfloat16" if m.dtype == "auto" else m.dtype, "param_dtype": m.param_dtype,
               "remat": m.remat, "attention": m.attention, "lora_rank": m.lora_rank, "lora_alpha": m.lora_alpha,
               "lora_targets": tuple(m.lora_targets)}
    if cfg.model.preset:
        return presets.preset(cfg.model.preset, **runtime)
    try:
        return build_config(cfg).replace(**runtime)
    except Exception:  # noqa: BLE001  no config.json at hand: the size is in the file name
        match = re.search(r"qwen2_5_(\d+(?:_\d+)?b)", os.path.basename(config_path))
        if not match:
            raise
        return presets.preset(match.group(1).replace("_", "."), **runtime)


def _bytes(compiled) -> dict:
    m = compiled.memory_analysis()
    out = {"argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
           "alias_bytes": int(m.alias_size_in_bytes), "temp_bytes": int(m.temp_size_in_bytes)}
    out["peak_bytes"] = out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
    return out


def run(config_path: str, overrides: list[str], devices: int, attention: str | None) -> dict:
    import math

    import jax
    import jax.numpy as jnp

    from tooln1_jax import config as config_lib
    from tooln1_jax import parallel
    from tooln1_jax.models import lora, qwen2
    from tooln1_jax.rollout.sampler import bucket
    from tooln1_jax.train.packing import ROW_QUANTUM
    from tooln1_jax.train.step import GRPOSettings, StepFunctions, make_optimizer

    cfg = config_lib.load(config_path, overrides)
    model = _model_config(cfg, config_path)
    if attention:
        model = model.replace(attention=attention)
    elif model.attention == "auto":
        model = model.replace(attention="blockwise")  # what "auto" picks on accelerators
    if model.head == "auto":
        model = model.replace(head="chunked")  # likewise (on a CPU "auto" is the vocabulary-tiled head)
    mesh = parallel.make_mesh({"data": cfg.mesh.data, "fsdp": cfg.mesh.fsdp, "tensor": cfg.mesh.tensor})
    shapes, logical = qwen2.abstract_params(model)
    shardings = parallel.shardings(shapes, logical, mesh)
    params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    optimizer = make_optimizer(cfg.optim, 1000)
    steps = StepFunctions(model, optimizer, mesh, params)
    opt_state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                             jax.eval_shape(optimizer.init, lora.partition(params)[0]), steps.opt_shardings)

    t, r, g = cfg.train, cfg.rollout, cfg.grpo
    group = cfg.data.max_prompt_tokens + r.num_generations * r.max_new_tokens
    length = -(-max(t.pack_tokens, group) // ROW_QUANTUM) * ROW_QUANTUM
    per_row = max(1, length // group)
    micro_rows = t.micro_batch_rows or parallel.batch_size_multiple(mesh)
    rows = -(-math.ceil(t.mini_batch_size / per_row) // micro_rows) * micro_rows
    slots, width = per_row * r.num_generations, bucket(r.max_new_tokens, 16)

    def spec(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=parallel.batch_sharding(mesh, len(shape)))

    batch = {k: spec((rows, length), jnp.int32) for k in ("tokens", "positions", "segment_ids", "prefix_ids")}
    batch.update({k: spec((rows, slots, width), jnp.int32) for k in ("predict", "targets")})
    batch.update(response_mask=spec((rows, slots, width), jnp.float32), advantages=spec((rows, slots), jnp.float32),
                 old_logp=spec((rows, slots, width), jnp.float32))
    if g.beta > 0:
        batch["ref_logp"] = spec((rows, slots, width), jnp.float32)
    settings = GRPOSettings(temperature=r.temperature, max_len=r.max_new_tokens, micro_batch_size=micro_rows, grpo=g)

    def per_device(tree, dtype=None) -> int:
        total = 0
        for x in jax.tree.leaves(tree):
            shard = x.sharding.shard_shape(x.shape)
            total += math.prod(shard) * jnp.dtype(dtype or x.dtype).itemsize
        return int(total)

    ref_dtype = model.dtype if g.ref_dtype == "compute" else None
    # the reference: a copy of the weights; with LoRA a copy of the adapters only (it shares the frozen base)
    ref_bytes = per_device(lora.partition(params)[0], ref_dtype) if g.beta > 0 else 0
    update = _bytes(steps.grpo_packed_program(batch, settings).lower(params, opt_state, batch).compile())
    update["resident_bytes"] = update["peak_bytes"] + ref_bytes
    logprob_batch = {k: batch[k] for k in ("tokens", "positions", "segment_ids", "prefix_ids", "predict", "targets")}
    logprobs = _bytes(steps.packed_logprob_program(float(r.temperature), False, micro_rows)
                      .lower(params, logprob_batch).compile())
    logprobs["resident_bytes"] = logprobs["peak_bytes"] + per_device(opt_state) + ref_bytes + per_device(params)
    gib = 1024 ** 3
    return {"config": config_path, "overrides": overrides, "devices": devices, "mesh": dict(mesh.shape),
            "model": {"params": model.num_params, "dtype": model.dtype, "remat": model.remat_policy,
                      "attention": model.attention, "lora_rank": model.lora_rank,
                      "trainable_params": sum(math.prod(x.shape) for x in jax.tree.leaves(lora.partition(params)[0]))},
            "worst_case": {"prompt": cfg.data.max_prompt_tokens, "reply": r.max_new_tokens,
                           "group_tokens": group, "row_tokens": length, "groups_per_row": per_row, "rows": rows,
                           "micro_rows": micro_rows},
            "per_device": {"params_bytes": per_device(params), "opt_state_bytes": per_device(opt_state),
                           "ref_params_bytes": ref_bytes, "update": update, "logprobs": logprobs},
            "resident_gib": {"update": round(update["resident_bytes"] / gib, 2),
                             "logprobs": round(logprobs["resident_bytes"] / gib, 2)}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--attention", default=None, help="override model.attention (default: blockwise for auto)")
    args = parser.parse_args(argv)
    _set_fake_devices(args.devices)
    result = run(args.config, args.overrides, args.devices, args.attention)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
