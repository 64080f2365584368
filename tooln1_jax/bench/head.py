"""Benchmark: the training passes' LM-head log-probs, vocabulary-tiled (`models/head.py`, the CPU default) vs whole
logits in chunks of reply positions (the accelerator default), forward alone and forward + gradient; prints JSON.

    python -m tooln1_jax.bench.head [--rows 8 --reply 32 --hidden 64 --vocab 151936 --repeats 7]

[rows, reply] positions are one packed row's slots as the demo's GRPO passes see them (8 replies of <= 32 tokens);
the weights are a random tied embedding. Runs are interleaved in one process after one warm-up each; medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp

from tooln1_jax.models.qwen2 import Qwen2Config
from tooln1_jax.train import sequences


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--reply", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)

    keys = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(keys[0], (args.rows, args.reply, args.hidden))
    params = {"model": {"embed_tokens": {"embedding": 0.02 * jax.random.normal(keys[1], (args.vocab, args.hidden))}}}
    targets = jax.random.randint(keys[2], (args.rows, args.reply), 0, args.vocab)
    weights = jnp.linspace(-1.0, 1.0, args.rows * args.reply).reshape(args.rows, args.reply)

    programs = {}
    for name in ("chunked", "tiled"):
        config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden,
                             num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
                             tie_word_embeddings=True, head=name)

        def logp(p, h, config=config):
            return sequences._head_logprobs(config, p, h, targets, args.temperature, 128, True)

        def loss(p, h, logp=logp):
            lp, entropy = logp(p, h)
            return jnp.sum(weights * lp) + 0.01 * jnp.sum(entropy)

        programs[f"{name}_forward"] = jax.jit(logp)
        programs[f"{name}_grad"] = jax.jit(jax.grad(loss, argnums=(0, 1)))

    for fn in programs.values():
        jax.block_until_ready(fn(params, h))
    times = {name: [] for name in programs}
    for _ in range(args.repeats):
        for name, fn in programs.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(params, h))
            times[name].append(time.perf_counter() - start)
    ms = {name: round(1000 * statistics.median(t), 1) for name, t in times.items()}
    agree = float(jnp.max(jnp.abs(programs["tiled_forward"](params, h)[0] - programs["chunked_forward"](params, h)[0])))
    out = {"positions": args.rows * args.reply, "hidden": args.hidden, "vocab": args.vocab,
           "median_ms": ms, "speedup_forward": round(ms["chunked_forward"] / ms["tiled_forward"], 2),
           "speedup_grad": round(ms["chunked_grad"] / ms["tiled_grad"], 2), "max_abs_logp_diff": agree,
           "repeats": args.repeats, "backend": jax.default_backend(), "cpus": os.cpu_count()}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
