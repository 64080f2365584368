"""Training records from what a run config names: the shipped samples, the shipped demo set, a prepare-data
directory, a parquet file of prepared records, or a raw source (KIND=PATH) converted on the fly. Every record comes
back with `prompt_ids`."""

from __future__ import annotations

import logging
from pathlib import Path

from tooln1_jax import assets
from tooln1_jax.data import prepare, prompts, records

log = logging.getLogger(__name__)
SAMPLES = "samples"
DEMO = "demo"  # the CPU demo's templated set (data/demo_set.py), already split into train and test


def _convert_and_split(sources: dict[str, str], split: str, seed: int, test_fraction: float) -> list[dict]:
    out = []
    for kind in sorted(sources):
        converted = records.convert(kind, sources[kind])
        if converted.dropped:
            log.info("%s: dropped %s", kind, dict(converted.dropped))
        train, test = prepare.split_by_group(converted.records, seed=seed, test_fraction=test_fraction, salt=kind)
        out += train if split == "train" else test
    return out


def load_records(spec: str, split: str, tokenizer, *, max_prompt_tokens: int = 4096, native_tools: bool = False,
                 seed: int = 0, test_fraction: float = 0.1) -> list[dict]:
    """Records of `split` ("train" or "test") from `spec`; a clear error when there are none."""
    if spec == SAMPLES:
        rows = _convert_and_split(prepare.shipped_samples(), split, seed, test_fraction)
    elif spec == DEMO:
        rows = records.read_rows(str(assets.path("demo", f"{split}.jsonl")))
    elif "=" in spec and spec.split("=", 1)[0] in records.SOURCES:
        kind, location = spec.split("=", 1)
        rows = _convert_and_split({kind: location}, split, seed, test_fraction)
    else:
        path = Path(spec)
        if path.is_dir():
            path = path / f"{split}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"data {spec!r}: {path} not found (want 'samples', 'demo', a prepare-data directory, "
                                    "a .parquet file, or KIND=PATH with KIND in " + "|".join(records.SOURCES) + ")")
        rows = records.read_prepared(path)
    if not rows:
        raise ValueError(f"data {spec!r} ({split}): no records")
    if any(not r.get("prompt_ids") for r in rows):
        rows, dropped = prompts.encode_records(rows, tokenizer, max_prompt_tokens=max_prompt_tokens,
                                               native_tools=native_tools)
        if dropped:
            log.warning("data %r (%s): dropped %s", spec, split, dict(dropped))
    too_long = sum(len(r["prompt_ids"]) > max_prompt_tokens for r in rows)
    if too_long:
        rows = [r for r in rows if len(r["prompt_ids"]) <= max_prompt_tokens]
        log.warning("data %r (%s): dropped %d prompts over %d tokens", spec, split, too_long, max_prompt_tokens)
    if not rows:
        raise ValueError(f"data {spec!r} ({split}): no records left after dropping prompts over "
                         f"{max_prompt_tokens} tokens")
    return rows
