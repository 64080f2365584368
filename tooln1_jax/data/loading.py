"""Training records from what a run config names: the shipped samples, the shipped demo set, a prepare-data
directory, a parquet file of prepared records, or a raw source (KIND=PATH) converted on the fly. Every record comes
back with `prompt_ids`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tooln1_jax import assets, paths
from tooln1_jax.data import converters, prepare, prepared, prompts, raw_files, records

log = logging.getLogger(__name__)
SAMPLES = "samples"
DEMO = "demo"  # the CPU demo's templated set (data/demo_set.py), already split into train and test


def _convert_and_split(sources: dict[str, str], split: str, seed: int, test_fraction: float) -> list[dict]:
    out = []
    for kind in sorted(sources):
        converted = converters.convert(kind, sources[kind])
        if converted.dropped:
            log.info("%s: dropped %s", kind, dict(converted.dropped))
        train, test = prepare.split_by_group(converted.records, seed=seed, test_fraction=test_fraction, salt=kind)
        out += train if split == "train" else test
    return out


def check_prepared_settings(path: Path, tokenizer, native_tools: bool) -> None:
    """The prompt ids of a prepared parquet were made with some tokenizer and prompt layout (its stats.json says
    which); a run that asks for others is an error naming both, not a silent use of the stored ids."""
    stats_path = path.parent / "stats.json"
    if not stats_path.is_file():
        log.warning("data %s: no stats.json next to it: its prompts' tokenizer and layout cannot be checked", path)
        return
    settings = json.loads(stats_path.read_text()).get("settings", {})
    prepared_native = bool(settings.get("native_tools", False))
    if prepared_native != native_tools:
        raise records.DataError(
            f"{path}: its prompts were built with native_tools={str(prepared_native).lower()} ({stats_path}), the run "
            f"asks data.native_tools={str(native_tools).lower()}: set it to match, or prepare the data again")
    expected = settings.get("tokenizer_sha256")
    if expected is None:
        log.warning("data %s: prepared before tokenizer fingerprints (%s): its tokenizer cannot be checked", path,
                    stats_path)
    elif expected != assets.tokenizer_fingerprint(tokenizer):
        raise records.DataError(
            f"{path}: its prompt ids come from the tokenizer {settings.get('tokenizer')!r} ({stats_path}), the run "
            f"uses another one ({getattr(tokenizer, 'name_or_path', tokenizer)}; data.tokenizer / model.path): "
            f"prepare the data again with --tokenizer, or run with that tokenizer")


def load_records(spec: str, split: str, tokenizer, *, max_prompt_tokens: int = 4096, native_tools: bool = False,
                 seed: int = 0, test_fraction: float = 0.1) -> list[dict]:
    """Records of `split` ("train" or "test") from `spec`; a clear error when there are none."""
    if spec == SAMPLES:
        rows = _convert_and_split(prepare.shipped_samples(), split, seed, test_fraction)
    elif spec == DEMO:
        rows = raw_files.read_rows(str(assets.path("demo", f"{split}.jsonl")))
    elif "=" in spec and spec.split("=", 1)[0] in converters.SOURCES:
        kind, location = spec.split("=", 1)
        rows = _convert_and_split({kind: location}, split, seed, test_fraction)
    else:
        path = paths.path(spec)  # local or gs://
        if path.is_dir():
            path = path / f"{split}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"data {spec!r}: {path} not found (want 'samples', 'demo', a prepare-data "
                                    "directory, a .parquet file, or KIND=PATH with KIND in "
                                    + "|".join(converters.SOURCES) + ")")
        rows = prepared.read_prepared(path)
        if any(r.get("prompt_ids") for r in rows):
            check_prepared_settings(path, tokenizer, native_tools)
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
