"""Benchmark: the GRPO training passes (old log-probs, reference log-probs, the update) of one rollout in the packed
layout, in one process; prints JSON.

    python -m tooln1_jax.bench.train [--layers 4 --hidden 256 --prompts 8 --group 4 --new-tokens 64 --repeats 3]

The shipped sample data with the Tool-N1 prompt, a random Qwen2 shape with the real vocabulary, one rollout
(random rewards, so advantages are not zero). The passes are timed `--repeats` times after one warm-up
(compilation, reported separately); medians. "computed_per_useful" is the token positions the transformer runs
per useful token (each prompt once per group + the replies); "padding_frac" the share of positions holding no
token. Then the packed update under each remat policy: its median time and the compiled program's temporary
bytes (XLA's memory analysis). `--mini-batch` < `--prompts` gives several mini-batches (the later ones
need a separate old log-prob pass).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import jax
import numpy as np


def _trainer(args, run_dir):
    from tooln1_jax import assets
    from tooln1_jax import config as config_lib
    from tooln1_jax.train.trainer import GRPOTrainer

    overrides = [f"model.num_layers={args.layers}", f"model.hidden_size={args.hidden}",
                 f"model.intermediate_size={args.intermediate or 4 * args.hidden}",
                 f"model.num_heads={max(1, args.hidden // 64)}", f"model.num_kv_heads={max(1, args.hidden // 128)}",
                 f"model.dtype={args.dtype}", f"model.head={args.head}", f"train.batch_size={args.prompts}",
                 f"train.mini_batch_size={args.mini_batch or args.prompts}",
                 f"train.micro_batch_rows={args.micro_rows}",
                 f"train.pack_tokens={args.pack_tokens}", f"rollout.num_generations={args.group}",
                 f"rollout.max_new_tokens={args.new_tokens}", "train.eval_every=0", "data.test=null",
                 "checkpoint.async_save=false", "data.train=samples", "sft.warm_start_steps=0"]
    cfg = config_lib.load(assets.DEMO_CONFIG, overrides)  # the demo's settings where these say nothing
    return GRPOTrainer(cfg, run_dir=run_dir)


def _passes(t, records, generated, advantages):
    """The three passes of one step (as `GRPOTrainer.train_step` runs them), finished on the device."""
    metrics = t.update(t.minibatches(records, generated, advantages))
    jax.block_until_ready(t.params)
    return metrics


def _time(fn, repeats: int) -> tuple[float, float, list[float]]:
    start = time.perf_counter()
    fn()
    warmup = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return warmup, statistics.median(times), times


def run(args) -> dict:
    from tooln1_jax.models import head
    from tooln1_jax.rollout import sampler
    from tooln1_jax.train import packing
    from tooln1_jax.train.step import StepFunctions

    with tempfile.TemporaryDirectory() as tmp:
        t = _trainer(args, tmp)
        records = next(t.loader)
        positions = t.local_positions(len(records))
        rollout_s = []
        for _ in range(2):  # the first call compiles
            start = time.perf_counter()
            rollout = t.rollout(records, positions)
            rollout_s.append(time.perf_counter() - start)
        generated = sampler.reply_ids(rollout, stop_ids=())
        rewards = np.random.default_rng(0).integers(0, 2, len(generated)).astype(np.float32)
        advantages = t.advantages(rewards)
        lengths = [len(r) for r in generated]
        prompt_lengths = [len(r["prompt_ids"]) for r in records]
        result = {"model": {"layers": args.layers, "hidden": args.hidden, "vocab": t.model_config.vocab_size,
                            "dtype": t.model_config.dtype, "params": t.model_config.num_params,
                            "head": head.resolve(t.model_config.head)},
                  "prompts": args.prompts, "group": args.group, "new_tokens": args.new_tokens,
                  "mini_batches": args.prompts // (args.mini_batch or args.prompts),
                  "prompt_tokens": {"min": min(prompt_lengths), "median": float(np.median(prompt_lengths)),
                                    "max": max(prompt_lengths)},
                  "reply_tokens": {"mean": float(np.mean(lengths)), "max": max(lengths)},
                  "rollout_s": round(rollout_s[1], 3), "rollout_first_s": round(rollout_s[0], 3),
                  "devices": jax.device_count(), "backend": jax.default_backend()}
        warmup, median, times = _time(lambda: _passes(t, records, generated, advantages), args.repeats)
        layout = packing.layout_metrics(t.layout_stats["computed"], t.layout_stats["useful"])  # of the last passes
        result["packed"] = {"update_s_median": round(median, 3), "update_s": [round(x, 3) for x in times],
                            "first_s_with_compile": round(warmup, 3),
                            **{k.split("/")[1]: round(v, 4) for k, v in layout.items()}}

        if args.remat:
            base = t.model_config
            result["remat"] = {}
            for policy in ("none", "dots", "full"):
                t.model_config = base.replace(remat=policy)
                t.steps = StepFunctions(t.model_config, t.optimizer, t.mesh, t.params)
                _, median, _ = _time(lambda: _passes(t, records, generated, advantages), args.repeats)
                result["remat"][policy] = {"update_s_median": round(median, 3),
                                           "update_temp_bytes": _compiled_temp_bytes(t, records, generated,
                                                                                     advantages)}
        t.close()
    return result


def _compiled_temp_bytes(t, records, generated, advantages) -> int:
    """XLA's temporary bytes of the packed GRPO update program on this batch (compiled ahead of time)."""
    batch = {k: v for k, v in t.minibatches(records, generated, advantages)[0].items() if k != "entropy"}
    program = t.steps.grpo_packed_program(batch, t.settings)
    return int(program.lower(t.params, t.opt_state, batch).compile().memory_analysis().temp_size_in_bytes)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=None, help="default 4 x hidden")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--mini-batch", type=int, default=None, help="prompts per update (default: all)")
    parser.add_argument("--micro-rows", type=int, default=0, help="packed rows per pass (0: one per device)")
    parser.add_argument("--pack-tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--head", default="auto", choices=["auto", "chunked", "tiled"],
                        help="training log-prob head (model.head; auto is tiled on a CPU)")
    parser.add_argument("--no-remat", dest="remat", action="store_false", help="skip the remat-policy timings")
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
