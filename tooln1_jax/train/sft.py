"""Supervised baseline on the same records: next-token loss on the assistant reply only.

The data carries no reasoning traces, so the target is the reply format the reward checks, with `sft.think` as
the reasoning text: `<think>{think}</think>\\n<tool_call>{calls as JSON}</tool_call><|im_end|>`.
"""

from __future__ import annotations

import json
import logging
import time

import jax
import numpy as np

from tooln1_jax import parallel
from tooln1_jax.rollout.sampler import bucket
from tooln1_jax.train import packing
from tooln1_jax.train.run import StepResult, TrainingRun
from tooln1_jax.train.step import PACKED_KEYS

log = logging.getLogger(__name__)


def target_text(answer: list, think: str = "") -> str:
    calls = [{"name": c["name"], "arguments": c["arguments"]} for c in answer]
    return f"<think>{think}</think>\n<tool_call>{json.dumps(calls)}</tool_call>"


class SFTTrainer(TrainingRun):
    name = "sft"

    def sequences_per_update(self) -> int:
        return self.cfg.train.batch_size

    def total_updates(self) -> int:
        return self.cfg.train.steps

    def prepare_records(self, records: list[dict]) -> list[dict]:
        """Add `target_ids`; drop (and count) examples whose prompt + target exceed sft.max_seq_len."""
        limit, think = self.cfg.sft.max_seq_len, self.cfg.sft.think
        im_end = self.stop_ids[0]
        texts = [target_text(r["answer"], think) for r in records]
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        kept = [{**r, "target_ids": list(ids) + [im_end]} for r, ids in zip(records, encoded)
                if len(r["prompt_ids"]) + len(ids) + 1 <= limit]
        if len(kept) < len(records):
            log.warning("sft: dropped %d of %d examples longer than sft.max_seq_len=%d", len(records) - len(kept),
                        len(records), limit)
        if not kept:
            raise ValueError(f"sft: no example fits sft.max_seq_len={limit}")
        return kept

    def train_step(self) -> StepResult:
        if self.cfg.train.layout == "packed":
            return self.packed_train_step()
        records = next(self.loader)
        start = time.perf_counter()
        packed = self.pack([r["prompt_ids"] for r in records], [r["target_ids"] for r in records])
        batch = {"tokens": packed.tokens, "attention_mask": packed.attention_mask,
                 "response_mask": packed.response_mask}
        batch = {k: self.global_batch(v) for k, v in batch.items()}
        self.params, self.opt_state, m = self.steps.sft_update(self.params, self.opt_state, batch,
                                                               packed.prompt_width, self.cfg.train.micro_batch_size)
        metrics = {k: float(v) for k, v in m.items()}
        self.step += 1
        seconds = time.perf_counter() - start
        tokens = float(self.all_rows(packed.attention_mask.sum(1)).sum())
        metrics.update({"time/update_s": seconds, "tokens_per_s": tokens / max(seconds, 1e-9),
                        "target_len/mean": float(np.mean([len(r["target_ids"]) for r in records])),
                        "epoch": self.loader.epoch})
        return StepResult(metrics, [])

    def packed_train_step(self) -> StepResult:
        """`train_step` with the examples packed into rows (groups of one reply, `packing.py`)."""
        records = next(self.loader)
        start = time.perf_counter()
        hosts = jax.process_count()
        micro_rows = self.cfg.train.micro_batch_rows or parallel.batch_size_multiple(self.mesh)
        width = parallel.global_max(bucket(max(len(r["target_ids"]) for r in records), 16))
        packed = packing.pack_groups([r["prompt_ids"] for r in records], [[r["target_ids"]] for r in records],
                                     budget=self.cfg.train.pack_tokens, rows_multiple=micro_rows // hosts,
                                     reply_width=width)
        packed = packed.pad_to(*(parallel.global_max(n) for n in packed.shape))
        batch = {k: self.global_batch(getattr(packed, k)) for k in PACKED_KEYS + ("response_mask",)}
        self.params, self.opt_state, m = self.steps.sft_update_packed(self.params, self.opt_state, batch, micro_rows)
        metrics = {k: float(v) for k, v in m.items()}
        self.step += 1
        seconds = time.perf_counter() - start
        useful = float(self.all_rows(np.array([packed.useful_tokens])).sum())
        computed = packed.computed_tokens * hosts
        metrics.update({"time/update_s": seconds, "tokens_per_s": useful / max(seconds, 1e-9),
                        "target_len/mean": float(np.mean([len(r["target_ids"]) for r in records])),
                        "layout/computed_per_useful": computed / max(useful, 1.0),
                        "layout/padding_frac": 1.0 - useful / max(computed, 1), "epoch": self.loader.epoch})
        return StepResult(metrics, [])
