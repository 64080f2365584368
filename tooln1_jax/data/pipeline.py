"""Prompt batches for training: seeded per-epoch shuffle, host sharding, and a checkpointable position (grain).

The order is one global stream: epoch 0's permutation of all records, then epoch 1's (a different permutation),
and so on. Every host computes the same stream and cuts it into global batches of B*n (B = `batch_size`, n hosts);
host `i` takes the i-th contiguous slice of each. So step k's batches of all hosts together are the global
positions k*B*n .. (k+1)*B*n - 1, in host order exactly a single process's batch of B*n: disjoint, and within
an epoch they cover the data. Batches run on across epoch boundaries, so nothing is lost between epochs. With a
finite `num_epochs` the stream is cut to a whole number of global batches: the last `dropped_at_end` positions
of the final epoch are not served (logged when the loader is built). `get_state()` / `set_state()` save and
restore the position, in any process.

`import grain` imports jax when jax is installed, so grain is imported only when a loader is built: importing
this module (and the rest of `tooln1_jax.data`) stays free of jax.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

log = logging.getLogger(__name__)


class PromptLoader:
    """Iterator of `list[dict]` batches of `batch_size` records (this host's share)."""

    def __init__(self, records: Sequence[dict], *, batch_size: int, seed: int, shuffle: bool = True,
                 num_epochs: int | None = None, shard_index: int = 0, shard_count: int = 1):
        if not records:
            raise ValueError("PromptLoader needs at least one record")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_epochs is not None and num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or None (forever), got {num_epochs}")
        if shard_count < 1 or not 0 <= shard_index < shard_count:
            raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index} of {shard_count}")
        self.records = records
        self.config = {"num_records": len(records), "batch_size": batch_size, "seed": seed, "shuffle": shuffle,
                       "num_epochs": num_epochs, "shard_index": shard_index, "shard_count": shard_count}
        global_batch = batch_size * shard_count
        self.num_batches, self.dropped_at_end = None, 0  # None: batches forever
        if num_epochs is not None:
            total = len(records) * num_epochs
            self.num_batches, self.dropped_at_end = divmod(total, global_batch)
            if self.dropped_at_end:
                log.warning("PromptLoader: %d of %d record positions at the end of epoch %d do not fill a global "
                            "batch of %d and are not served", self.dropped_at_end, total, num_epochs, global_batch)
        self._iterator = iter(self._build())
        self.step = 0  # batches served so far

    def _build(self):
        import grain

        cfg = self.config
        indices = grain.MapDataset.range(cfg["num_records"])
        if cfg["shuffle"]:
            indices = indices.shuffle(seed=cfg["seed"])  # reseeded per epoch by repeat()
        indices = indices.repeat(cfg["num_epochs"])
        if self.num_batches is not None:
            indices = indices[: self.num_batches * cfg["batch_size"] * cfg["shard_count"]]
        size, lo = cfg["batch_size"], cfg["shard_index"] * cfg["batch_size"]
        batches = indices.batch(size * cfg["shard_count"], drop_remainder=True, batch_fn=list)
        batches = batches.map(lambda global_batch: global_batch[lo:lo + size])
        # Indices of in-memory records: reader threads and prefetch would only contend for the GIL.
        return batches.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))

    def __iter__(self) -> PromptLoader:
        return self

    def __next__(self) -> list[dict]:
        batch = [self.records[i] for i in next(self._iterator)]
        self.step += 1
        return batch

    @property
    def epoch(self) -> float:
        """Epochs of the data consumed so far (fractional), counted over all hosts."""
        cfg = self.config
        return self.step * cfg["batch_size"] * cfg["shard_count"] / cfg["num_records"]

    def get_state(self) -> dict:
        """JSON-serialisable position, with the settings it is only valid for."""
        return {"config": dict(self.config), "step": self.step, "iterator": self._iterator.get_state()}

    def set_state(self, state: dict) -> None:
        """Continue from a `get_state()` result (of this or another process) made with the same settings."""
        saved = state.get("config", {})
        for key, value in self.config.items():
            if saved.get(key) != value:
                raise ValueError(f"PromptLoader state was saved with {key}={saved.get(key)!r}, "
                                 f"this loader has {key}={value!r}")
        self._iterator.set_state(state["iterator"])
        self.step = state["step"]

