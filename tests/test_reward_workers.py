"""train.reward_workers > 0: replies scored in worker processes started safely after JAX (no fork of a process
with JAX threads), with the rewards, exact-match and format flags of in-process scoring."""

import json
import random

import jax
import jax.numpy as jnp
import numpy as np

from tooln1_jax.rewards import toolcall
from tooln1_jax.train.trainer import Rewards

CALLS = [{"name": "weather", "arguments": {"city": "Oslo"}}, {"name": "convert", "arguments": {"value": 5}}]


def replies_and_records(n=400, seed=0):
    rng = random.Random(seed)
    replies, records = [], []
    for i in range(n):
        answer = rng.sample(CALLS, rng.randint(0, 2))
        said = answer if rng.random() < 0.5 else rng.sample(CALLS, rng.randint(0, 2))
        reply = rng.choice(["", "<think>x</think>"]) + f"<tool_call>{json.dumps(said)}</tool_call>"
        replies.append(reply if rng.random() < 0.9 else reply[: rng.randrange(len(reply))])
        records.append({"id": str(i), "answer": answer if rng.random() < 0.5 else json.dumps(answer)})
    return replies, records


def test_worker_processes_give_the_in_process_rewards_after_jax_started():
    jax.block_until_ready(jax.jit(lambda x: x @ x)(jnp.ones((64, 64))))  # the JAX runtime and its threads are up
    replies, records = replies_and_records()
    for variant in toolcall.VARIANTS:
        local = Rewards((variant,))(records, replies, None)
        np.testing.assert_array_equal(local[0], np.float32([toolcall.score(r, rec["answer"], variant)
                                                            for r, rec in zip(replies, records)]))
        pooled_fn = Rewards((variant,), workers=2)
        try:
            assert pooled_fn._pool._mp_context.get_start_method() in ("forkserver", "spawn")
            pooled = pooled_fn(records, replies, None)
        finally:
            pooled_fn.close()
        np.testing.assert_array_equal(pooled[0], local[0])
        for key in ("exact_match", "format_ok"):
            np.testing.assert_array_equal(pooled[1][key], local[1][key])
    assert 0 < local[0].mean() < 1  # the replies cover both outcomes
