"""A tiny GRPO set-up for trainer tests: small-vocabulary model, synthetic prompts, a dense synthetic reward.

Used in-process by the tests and as a script by the subprocess tests (resume after SIGKILL, many devices,
several processes):  python tests/train_helpers.py RUN_DIR [--resume] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tooln1_jax import assets  # noqa: E402
from tooln1_jax import config as config_lib  # noqa: E402

VOCAB = 64
DIGITS = frozenset(range(10, 20))  # "digit" tokens: 10 of 64 ids, about 16% of uniform samples

TINY = [
    "model.vocab_size=64", "model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=2",
    "model.num_heads=4", "model.num_kv_heads=2", "model.tie_word_embeddings=false", "model.dtype=float32",
    "rollout.num_generations=4", "rollout.max_new_tokens=12", "rollout.temperature=1.0",
    "train.batch_size=8", "train.mini_batch_size=4", "train.micro_batch_rows=0", "train.eval_every=0",
    "train.sample_every=0", "optim.lr=0.01", "grpo.beta=0.001", "checkpoint.every=1", "checkpoint.keep=20",
    "checkpoint.async_save=false", "sft.warm_start_steps=0",  # GRPO from the initial policy (the demo warms up)
]


TIMING = ("time/", "tokens_per_s", "rollout_tokens_per_s", "compiles/")  # metrics that differ between equal runs


def comparable(metrics: dict) -> dict:
    """A step's metrics without its timings: what two runs of the same steps must agree on."""
    return {k: v for k, v in metrics.items() if not k.startswith(TIMING)}


def tiny_config(*overrides: str) -> config_lib.RunConfig:
    return config_lib.load(assets.DEMO_CONFIG, [*TINY, *overrides])  # what TINY leaves: the demo's


def synthetic_records(n: int = 32, seed: int = 0, max_len: int = 8) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": f"syn-{i}", "source": "synthetic", "system": None, "tools": [], "messages": [], "answer": [],
             "prompt_ids": rng.integers(20, VOCAB, int(rng.integers(3, max_len + 1))).tolist()} for i in range(n)]


def digit_reward(records, replies, reply_ids):
    """Share of reply tokens that are "digits": dense, so GRPO has a gradient from the first step."""
    rewards = np.array([np.mean([t in DIGITS for t in ids]) if ids else 0.0 for ids in reply_ids], np.float32)
    return rewards, {}


class FakeTokenizer:
    """Decoding is only for logging here: token ids as text."""

    def batch_decode(self, ids, skip_special_tokens=False):
        return [" ".join(map(str, row)) for row in ids]

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(map(str, ids))


def trainer(cfg, run_dir, *, resume=False, records=None, reward_fn=digit_reward):
    from tooln1_jax.train.trainer import GRPOTrainer

    return GRPOTrainer(cfg, run_dir=run_dir, train_records=records or synthetic_records(), eval_records=[],
                       tokenizer=FakeTokenizer(), reward_fn=reward_fn, resume=resume)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--prompt-len-max", type=int, default=8)
    parser.add_argument("--reward-seconds", type=float, default=0.0, help="slow every reward call down (signals)")
    args = parser.parse_args()

    def reward_fn(*batch):
        time.sleep(args.reward_seconds)
        return digit_reward(*batch)

    t = trainer(tiny_config(*args.overrides), args.run_dir, resume=args.resume,
                records=synthetic_records(max_len=args.prompt_len_max), reward_fn=reward_fn)
    history = t.run(progress=False)
    t.close()
    import jax

    if jax.process_index() == 0:
        print("HISTORY " + json.dumps(history))
    if t.interrupted:
        from tooln1_jax.train.preemption import EXIT_INTERRUPTED

        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
