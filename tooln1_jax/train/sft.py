"""Supervised baseline on the same records: next-token loss on the assistant reply only.

The data carries no reasoning traces, so the target is the reply format the reward checks, with `sft.think` as
the reasoning text: `<think>{think}</think>\\n<tool_call>{calls as JSON}</tool_call><|im_end|>`.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np

from tooln1_jax.train.run import StepResult, TrainingRun

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
