"""Simulation: the packed training shapes (rows, row length, reply slots, reply width) a GRPO run meets, with the
layout before shape bucketing and with the current one (`train.packing`); no model, no device; prints JSON.

    python -m tooln1_jax.bench.shapes [--config configs/qwen2_5_7b_grpo.yaml --steps 6 --devices 16]

Each step draws `batch_size` prompt lengths and G reply lengths per prompt from log-normal spreads (medians and
sigmas below, clipped to data.max_prompt_tokens and rollout.max_new_tokens, fixed seed) and packs each mini-batch
as `GRPOTrainer.packed_minibatches` does on one host whose batch axes span `--devices` devices. Every distinct
shape is a compilation of the update and of the log-prob passes; "programs" counts them as the trainer calls them:
updates with and without old log-probs (a step's first mini-batch), log-prob passes for the old log-probs (with
entropy) and for the reference policy. "computed_per_useful" is transformer positions per useful token (each prompt
once per group + the replies); "slot_positions_per_reply_token" the LM head's positions ([rows, S, R]) per reply
token.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from tooln1_jax import config as config_lib
from tooln1_jax import shapes
from tooln1_jax.train import packing


def _before(lengths, group_sizes, longest_reply, *, budget, rows_multiple, max_length, reply_cap):
    """The layout before bucketing: the row length (a multiple of 128 from the longest group up to the budget)
    with the fewest rows x L, rows rounded up to the multiple, the most slots of any row, the reply width
    `shapes.bucket`ed (powers of two, multiples of 1024 beyond 1024)."""
    quantum = packing.ROW_QUANTUM
    round_up = lambda n: -(-n // quantum) * quantum  # noqa: E731
    padded_rows = lambda rows: -(-len(rows) // rows_multiple) * rows_multiple  # noqa: E731
    layouts = [(packing._first_fit_decreasing(lengths, length), length)
               for length in range(round_up(max(lengths)), round_up(max(budget, max(lengths))) + 1, quantum)]
    rows, length = min(layouts, key=lambda layout: padded_rows(layout[0]) * layout[1])  # ties: the shortest
    slots = max(sum(group_sizes[g] for g in row) for row in rows)
    return padded_rows(rows), length, slots, shapes.bucket(longest_reply, 16)


def _after(lengths, group_sizes, longest_reply, *, budget, rows_multiple, max_length, reply_cap):
    _, rows, length, slots = packing.layout(lengths, group_sizes, budget=budget, rows_multiple=rows_multiple,
                                            max_length=max_length)
    return rows, length, slots, packing.reply_width_for(longest_reply, reply_cap)


def _lognormal(rng, n: int, median: float, sigma: float, cap: int) -> np.ndarray:
    return np.clip(np.round(rng.lognormal(np.log(median), sigma, n)), 1, cap).astype(int)


def simulate(cfg: config_lib.RunConfig, *, steps: int, devices: int, seed: int, prompt_median: float,
             prompt_sigma: float, reply_median: float, reply_sigma: float) -> dict:
    t, r = cfg.train, cfg.rollout
    g = r.num_generations
    args = {"budget": t.pack_tokens, "rows_multiple": t.micro_batch_rows or devices,
            "max_length": cfg.data.max_prompt_tokens + g * r.max_new_tokens, "reply_cap": r.max_new_tokens}
    rng = np.random.default_rng(seed)
    out = {name: {"shapes": [], "computed": 0, "slot_positions": 0} for name in ("before", "after")}
    useful = reply_tokens = 0
    for _ in range(steps):
        prompts = _lognormal(rng, t.batch_size, prompt_median, prompt_sigma, cfg.data.max_prompt_tokens)
        replies = _lognormal(rng, t.batch_size * g, reply_median, reply_sigma, r.max_new_tokens).reshape(-1, g)
        for start in range(0, t.batch_size, t.mini_batch_size):
            p, rs = prompts[start:start + t.mini_batch_size], replies[start:start + t.mini_batch_size]
            lengths = (p + rs.sum(1)).tolist()
            useful += sum(lengths)
            reply_tokens += int(rs.sum())
            for name, plan in (("before", _before), ("after", _after)):
                shape = plan(lengths, [g] * len(lengths), int(replies.max()), **args)  # R: the step's longest
                out[name]["shapes"].append((shape, start == 0))
                out[name]["computed"] += shape[0] * shape[1]
                out[name]["slot_positions"] += shape[0] * shape[2] * shape[3]
    report = {"mini_batches": steps * (t.batch_size // t.mini_batch_size), "useful_tokens": useful}
    for name, o in out.items():
        distinct = sorted({shape for shape, _ in o["shapes"]})
        later = {shape for shape, first in o["shapes"] if not first}
        report[name] = {
            "distinct_shapes": len(distinct),
            "programs": {"update": len(set(o["shapes"])),
                         "logprobs": len(later) + (len(distinct) if cfg.grpo.beta > 0 else 0)},
            "computed_per_useful": round(o["computed"] / useful, 4),
            "slot_positions_per_reply_token": round(o["slot_positions"] / reply_tokens, 2),
            "shapes_rows_L_S_R": [list(s) for s in distinct]}
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/qwen2_5_7b_grpo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--steps", type=int, default=6, help="rollout steps (6 x 4 = 24 mini-batches)")
    parser.add_argument("--devices", type=int, default=16, help="devices of the batch axes (v5p-128: fsdp 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt-median", type=float, default=800.0)
    parser.add_argument("--prompt-sigma", type=float, default=0.6)
    parser.add_argument("--reply-median", type=float, default=300.0)
    parser.add_argument("--reply-sigma", type=float, default=0.8)
    args = parser.parse_args(argv)
    cfg = config_lib.load(args.config, args.overrides)
    report = simulate(cfg, steps=args.steps, devices=args.devices, seed=args.seed,
                      prompt_median=args.prompt_median, prompt_sigma=args.prompt_sigma,
                      reply_median=args.reply_median, reply_sigma=args.reply_sigma)
    print(json.dumps({"config": args.config, "overrides": args.overrides, "steps": args.steps,
                      "devices": args.devices, "seed": args.seed,
                      "prompt_lognormal": [args.prompt_median, args.prompt_sigma],
                      "reply_lognormal": [args.reply_median, args.reply_sigma], **report}, indent=1))


if __name__ == "__main__":
    main()
