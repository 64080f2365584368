"""Benchmark: the CPU demo (`tooln1 train`, no arguments unless given after `--`), run as a child process; prints
JSON with its wall and CPU seconds, the GRPO reward of each step and the demo's acceptance figures.

    python -m tooln1_jax.bench.demo                       # the demo itself
    python -m tooln1_jax.bench.demo -- --config configs/demo.yaml --set train.steps=6  # a variant (--set alone
                                                                                    # starts from the defaults)
    python -m tooln1_jax.bench.demo --check runs/demo       # the figures of a finished run; exit 1 if they fail

Acceptance (README, "Quick start"): at least 6 GRPO steps; the mean reward of the last three >= 0.3 and >= 0.25
above the mean of the first three.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIN_STEPS, MIN_FINAL, MIN_RISE = 6, 0.3, 0.25
SEED_MARGIN = 0.05  # every seed pair the tests run clears MIN_FINAL and MIN_RISE by this much


def summarize(records: list[dict]) -> dict:
    """The demo's reward figures from its metrics.jsonl records (step-0 lines are the warm start)."""
    grpo = [r for r in records if r["step"] > 0 and "reward/mean" in r]
    warm = [r for r in records if r["step"] == 0 and "warm_start/loss" in r]
    rewards = [r["reward/mean"] for r in grpo]
    first = sum(rewards[:3]) / max(len(rewards[:3]), 1)
    last = sum(rewards[-3:]) / max(len(rewards[-3:]), 1)
    out = {"grpo_steps": len(rewards), "reward_per_step": [round(x, 4) for x in rewards],
           "first3_mean": round(first, 4), "last3_mean": round(last, 4), "rise": round(last - first, 4),
           "zero_var_groups_per_step": [round(r.get("reward/all_equal_group_frac", float("nan")), 3) for r in grpo],
           "val_reward": {r["step"]: r["val/reward"] for r in records if "val/reward" in r},
           "warm_start_steps": len(warm),
           "warm_start_loss_first_last": [warm[0]["warm_start/loss"], warm[-1]["warm_start/loss"]] if warm else None,
           "time_rollout_s": round(sum(r["time/rollout_s"] for r in grpo), 1),
           "time_update_s": round(sum(r["time/update_s"] for r in grpo), 1),
           "time_warm_start_s": round(sum(r["warm_start/time/update_s"] for r in warm), 1)}
    out["passes"] = (len(rewards) >= MIN_STEPS and last >= MIN_FINAL and last - first >= MIN_RISE)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", default=None, help="default: a temporary directory, removed afterwards")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="arguments after -- go to `tooln1 train`")
    parser.add_argument("--check", metavar="RUN_DIR", default=None,
                        help="only summarize a finished demo run's metrics.jsonl; exit 1 unless it meets the figures")
    args = parser.parse_args(argv)
    if args.check:
        out = summarize([json.loads(line) for line in (Path(args.check) / "metrics.jsonl").read_text().splitlines()])
        print(json.dumps(out))
        if not out["passes"]:
            raise SystemExit(f"{args.check}: the demo's reward figures miss the acceptance: at least {MIN_STEPS} GRPO "
                             f"steps, last three >= {MIN_FINAL} and >= {MIN_RISE} above the first three")
        return out
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.run_dir or Path(tmp) / "demo")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "tooln1_jax.cli", "train", "--run-dir", str(run_dir), *extra],
                                capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if result.returncode:
            sys.stderr.write(result.stdout + result.stderr)
            raise SystemExit(f"tooln1 train exited {result.returncode}")
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    out = {"command": "tooln1 train " + " ".join(extra), "wall_s": round(wall, 1),
           "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
           "cpus": os.cpu_count(), **summarize(records)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
