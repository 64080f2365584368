"""Benchmark: one decode step's sampling from [rows, vocab] logits, in one process; prints JSON (median ms).

    python -m tooln1_jax.bench.sampling [--rows 64 --vocab 151936 --repeats 15]

Compared: `rollout.sampling.sample_step` (the two-level race), the one-level race it replaced (an exponential
race over the whole vocabulary: a hash, a log and a division per entry, after a full log-softmax), and
`jax.random.categorical` (threefry Gumbel numbers); the LM-head matmul of the demo shape (hidden 64) for scale.
Interleaved repeats after one warm-up call each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from tooln1_jax.rollout import sampling


def _one_level(logits, keys):
    """The previous sampler: log_softmax, then a race over every vocabulary entry."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    u = sampling.uniforms(keys, logits.shape[-1])
    tokens = jnp.argmax(jnp.log(u) / jnp.exp(logp), axis=-1).astype(jnp.int32)
    return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


def _categorical(logits, keys):
    tokens = jax.vmap(jax.random.categorical)(keys, logits)
    return tokens, jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[:, None], axis=-1)[:, 0]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    logits = 3.0 * jax.random.normal(jax.random.key(0), (args.rows, args.vocab))
    keys = jax.random.split(jax.random.key(1), args.rows)
    hidden = jax.random.normal(jax.random.key(2), (args.rows, args.hidden))
    embedding = jax.random.normal(jax.random.key(3), (args.vocab, args.hidden))
    cases = {"two_level_race": (jax.jit(lambda x, k: sampling.sample_step(x, k, sampling.Sampling(1.0))),
                                (logits, keys)),
             "one_level_race": (jax.jit(_one_level), (logits, keys)),
             "jax_random_categorical": (jax.jit(_categorical), (logits, keys)),
             "head_matmul": (jax.jit(lambda h, e: h @ e.T), (hidden, embedding))}
    for fn, inputs in cases.values():
        jax.block_until_ready(fn(*inputs))
    times = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (fn, inputs) in cases.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*inputs))
            times[name].append(time.perf_counter() - start)
    out = {"rows": args.rows, "vocab": args.vocab, "backend": jax.default_backend(),
           **{f"{name}_ms": round(1000 * statistics.median(t), 1) for name, t in times.items()}}
    out["speedup_vs_one_level"] = round(out["one_level_race_ms"] / out["two_level_race_ms"], 2)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
