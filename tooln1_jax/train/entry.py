"""`tooln1 train` / `tooln1 sft`: load the config, build the trainer, run it, say where the results are."""

from __future__ import annotations

import dataclasses
import sys

from tooln1_jax import config as config_lib
from tooln1_jax import logs


def run(command: str, *, config_path: str | None = None, overrides: list[str] = (), run_dir: str | None = None,
        resume: bool = False):
    logs.configure_logging()
    cfg = config_lib.load(config_path, overrides)
    if run_dir is not None:
        cfg = cfg.replace(train=dataclasses.replace(cfg.train, run_dir=run_dir))
    if command == "train":
        from tooln1_jax.train.trainer import GRPOTrainer as Trainer
    else:
        from tooln1_jax.train.sft import SFTTrainer as Trainer
    trainer = Trainer(cfg, resume=resume)
    try:
        history = trainer.run()
    finally:
        trainer.close()
    if trainer.interrupted:
        from tooln1_jax.train import preemption

        print(f"stopped by {trainer.interrupted}: {cfg.train.run_dir} saved at step {trainer.step}; continue with "
              f"--resume (exit status {preemption.EXIT_INTERRUPTED})", file=sys.stderr)
        raise SystemExit(preemption.EXIT_INTERRUPTED)
    last = history[-1] if history else {}
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in last.items()
             if k.startswith(("reward/", "val/", "loss", "kl"))}
    print(f"done: {cfg.train.run_dir} (step {trainer.step}); last metrics {shown}")
    rewards = [m["reward/mean"] for m in history if "reward/mean" in m]
    if rewards:
        print("reward/mean per step: " + " ".join(f"{r:.3f}" for r in rewards))
    return trainer
