"""Supervised baseline on the same records: next-token loss on the assistant reply only.

The data carries no reasoning traces, so the target is the reply format the reward checks, with `sft.think` as
the reasoning text: `<think>{think}</think>\\n<tool_call>{calls as JSON}</tool_call><|im_end|>`.

`add_targets` and `supervised_step` serve `SFTTrainer` (`tooln1 sft`) and `warm_start`, the supervised format
warm start a GRPO run makes first when `sft.warm_start_steps` > 0 (the paper's SFT-then-RL recipe, in one run).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import jax
import numpy as np

from tooln1_jax import logs, parallel
from tooln1_jax.data.pipeline import PromptLoader
from tooln1_jax.train import packing
from tooln1_jax.train.run import StepResult, TrainingRun
from tooln1_jax.train.step import PACKED_KEYS, StepFunctions, make_optimizer

log = logging.getLogger(__name__)


def target_text(answer: list, think: str = "") -> str:
    calls = [{"name": c["name"], "arguments": c["arguments"]} for c in answer]
    return f"<think>{think}</think>\n<tool_call>{json.dumps(calls)}</tool_call>"


def add_targets(run: TrainingRun, records: list[dict]) -> list[dict]:
    """Copies of the records with `target_ids` (the target text and the stop token); those whose prompt + target
    exceed sft.max_seq_len are dropped and counted."""
    limit, think = run.cfg.sft.max_seq_len, run.cfg.sft.think
    im_end = run.stop_ids[0]
    texts = [target_text(r["answer"], think) for r in records]
    encoded = run.tokenizer(texts, add_special_tokens=False)["input_ids"]
    kept = [{**r, "target_ids": list(ids) + [im_end]} for r, ids in zip(records, encoded)
            if len(r["prompt_ids"]) + len(ids) + 1 <= limit]
    if len(kept) < len(records):
        log.warning("sft: dropped %d of %d examples longer than sft.max_seq_len=%d", len(records) - len(kept),
                    len(records), limit)
    if not kept:
        raise ValueError(f"sft: no example fits sft.max_seq_len={limit}")
    return kept


def supervised_step(run: TrainingRun, steps: StepFunctions, params, opt_state, records: list[dict]):
    """One optimizer step of the masked next-token loss on this host's `records`, packed into rows (groups of one
    reply, `packing.py`) -> (params, opt_state, metrics)."""
    start = time.perf_counter()
    hosts = jax.process_count()
    micro_rows = run.micro_rows()
    limit = run.cfg.sft.max_seq_len  # prompt + target of every example (`add_targets`)
    width = parallel.global_max(packing.reply_width_for(max(len(r["target_ids"]) for r in records), limit))
    packed = packing.pack_groups([r["prompt_ids"] for r in records], [[r["target_ids"]] for r in records],
                                 budget=run.cfg.train.pack_tokens, rows_multiple=micro_rows // hosts,
                                 reply_width=width, max_length=limit)
    packed = packed.pad_to(*(parallel.global_max(n) for n in packed.shape))
    batch = {k: run.global_batch(getattr(packed, k)) for k in PACKED_KEYS + ("response_mask",)}
    with run.compiles.phase("update"):
        params, opt_state, m = steps.sft_update_packed(params, opt_state, batch, micro_rows)
    metrics = {k: float(v) for k, v in m.items()}
    seconds = time.perf_counter() - start
    useful = float(run.all_rows(np.array([packed.useful_tokens])).sum())
    metrics.update({"time/update_s": seconds, "tokens_per_s": useful / max(seconds, 1e-9),
                    "target_len/mean": float(np.mean([len(r["target_ids"]) for r in records])),
                    **packing.layout_metrics(packed.computed_tokens * hosts, useful)})
    return params, opt_state, metrics


def warm_start(run: TrainingRun, progress: bool = True) -> list[dict]:
    """`sft.warm_start_steps` supervised steps on `run.params` (updated in place) over the run's training records,
    with their own optimizer (AdamW at `sft.warm_start_lr`, the run's other optimizer settings) and data order.
    Returns each step's metrics."""
    cfg = run.cfg
    n = cfg.sft.warm_start_steps
    records = add_targets(run, run.train_records)
    hosts = jax.process_count()
    loader = PromptLoader(records, batch_size=cfg.train.batch_size // hosts, seed=cfg.train.seed,
                          shuffle=cfg.data.shuffle, shard_index=jax.process_index(), shard_count=hosts)
    optim = dataclasses.replace(cfg.optim, lr=cfg.sft.warm_start_lr, schedule="constant", warmup_steps=0)
    steps = StepFunctions(run.model_config, make_optimizer(optim, n, run.token_row_ids), run.mesh, run.params)
    opt_state = steps.init_opt_state(run.params)
    history = []
    with logs.progress(n, "warm start (sft)", "step", disable=not (progress and run.is_main)) as bar:
        for _ in range(n):
            run.params, opt_state, metrics = supervised_step(run, steps, run.params, opt_state, next(loader))
            history.append(metrics)
            bar.update(1)
    log.info("warm start: %d supervised steps of %d records at lr %g: loss %.3f -> %.3f, target-token "
             "probability %.3f -> %.3f", n, cfg.train.batch_size, cfg.sft.warm_start_lr, history[0]["loss"],
             history[-1]["loss"], history[0]["target_prob"], history[-1]["target_prob"])
    return history


class SFTTrainer(TrainingRun):
    name = "sft"

    def sequences_per_update(self) -> int:
        return self.cfg.train.batch_size

    def total_updates(self) -> int:
        return self.cfg.train.steps

    def prepare_records(self, records: list[dict]) -> list[dict]:
        return add_targets(self, records)

    def train_step(self) -> StepResult:
        records = next(self.loader)
        self.params, self.opt_state, metrics = supervised_step(self, self.steps, self.params, self.opt_state, records)
        self.step += 1
        metrics["epoch"] = self.loader.epoch
        return StepResult(metrics, [])
