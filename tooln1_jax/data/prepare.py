"""`tooln1 prepare-data`: raw tool-calling data -> train.parquet, test.parquet and stats.json.

Each source is converted (converters.py), tokenized with the chat template (prompts.py; prompts over
`max_prompt_tokens` are dropped), split into train/test by dialogue (all examples cut from one dialogue land on
the same side) with a seeded shuffle per source, and written with `prepared.write_prepared`. Every drop is counted
by reason in stats.json and printed. Nothing is deduplicated: exact duplicate examples are kept and counted.
The same inputs and seed give byte-identical files.
"""

from __future__ import annotations

import json
import random
from collections import Counter

from tooln1_jax import assets, files, paths
from tooln1_jax.data import converters, prepared, prompts, records

DUPLICATE_ID = "duplicate_id"
OUTPUTS = ("train.parquet", "test.parquet", "stats.json")
SAMPLE_FILES = {
    "sharegpt": ("samples", "glaive_toolcall_en_demo.json"),
    "xlam": ("samples", "xlam_sample.json"),
    "toolace": ("samples", "toolace_sample.json"),
}


def shipped_samples() -> dict[str, str]:
    """The demo data shipped with the package, as `run(sources=...)` takes it."""
    return {kind: str(assets.path(*parts)) for kind, parts in SAMPLE_FILES.items()}


def split_by_group(examples: list[dict], *, seed: int, test_fraction: float, salt: str) -> tuple[list, list]:
    """(train, test): round(groups * test_fraction) seeded-random dialogues go to test; input order is kept."""
    groups = list(dict.fromkeys(records.group_of(r["id"]) for r in examples))
    random.Random(f"{seed}:{salt}").shuffle(groups)
    test_groups = set(groups[: round(len(groups) * test_fraction)])
    train = [r for r in examples if records.group_of(r["id"]) not in test_groups]
    test = [r for r in examples if records.group_of(r["id"]) in test_groups]
    return train, test


def _drop_duplicate_ids(examples: list[dict]) -> tuple[list[dict], Counter]:
    first = {}  # the first example of each id, in input order
    for r in examples:
        first.setdefault(r["id"], r)
    return list(first.values()), Counter({DUPLICATE_ID: len(examples) - len(first)})


def _count_duplicate_examples(examples: list[dict]) -> int:
    keys = [json.dumps([r["system"], r["tools"], r["messages"], r["answer"]], sort_keys=True) for r in examples]
    return len(keys) - len(set(keys))


def _source_line(kind: str, s: dict) -> str:
    drops = ", ".join(f"{k}={v}" for k, v in sorted(s["dropped"].items())) or "none"
    return (f"{kind:>9}: {s['rows']} rows -> {s['examples']} examples -> kept {s['kept']} "
            f"(train {s['train']}, test {s['test']}); dropped: {drops}; duplicates kept: {s['duplicates_kept']}")


def run(sources: dict[str, str], out: str, *, seed: int = 0, test_fraction: float = 0.1,
        max_prompt_tokens: int = 4096, tokenizer_dir: str | None = None) -> dict:
    """Convert, tokenize, split and write each source; returns (and writes) the counts."""
    unknown = sorted(set(sources) - set(converters.SOURCES))
    if unknown:
        raise records.DataError(f"unknown source kind(s) {unknown}; expected some of {converters.SOURCES}")
    if not sources:
        raise records.DataError("no --source given")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if tokenizer_dir is not None and not assets.has_tokenizer(tokenizer_dir):
        raise records.DataError(f"{tokenizer_dir}: no tokenizer files (tokenizer.json or vocab.json) there")
    tokenizer = assets.load_tokenizer(tokenizer_dir)

    stats = {"settings": {"seed": seed, "test_fraction": test_fraction, "max_prompt_tokens": max_prompt_tokens,
                          "tokenizer": tokenizer_dir or "shipped Qwen2.5-Instruct",
                          "tokenizer_sha256": assets.tokenizer_fingerprint(tokenizer), "native_tools": False},
             "sources": {}}
    splits = {"train": [], "test": []}
    for kind in sorted(sources):
        converted = converters.convert(kind, sources[kind])
        kept, too_long = prompts.encode_records(converted.records, tokenizer, max_prompt_tokens=max_prompt_tokens)
        kept, duplicate_ids = _drop_duplicate_ids(kept)
        train, test = split_by_group(kept, seed=seed, test_fraction=test_fraction, salt=kind)
        splits["train"] += train
        splits["test"] += test
        source_stats = {
            "location": sources[kind], "rows": converted.rows, "examples": len(converted.records),
            "dropped": dict(sorted((converted.dropped + too_long + duplicate_ids).items())),
            "kept": len(kept), "train": len(train), "test": len(test),
            "multi_turn": {"train": sum(r["multi_turn"] for r in train), "test": sum(r["multi_turn"] for r in test)},
            "duplicates_kept": _count_duplicate_examples(kept),
        }
        stats["sources"][kind] = source_stats
        print(_source_line(kind, source_stats), flush=True)
        if not kept:
            raise records.DataError(f"source {kind} ({sources[kind]}) kept no example of its {converted.rows} rows "
                                    f"(dropped: {source_stats['dropped'] or 'none'}); nothing written")

    total_dropped = sum((Counter(s["dropped"]) for s in stats["sources"].values()), Counter())
    stats["total"] = {key: sum(s[key] for s in stats["sources"].values())
                      for key in ("rows", "examples", "kept", "train", "test", "duplicates_kept")}
    stats["total"]["dropped"] = dict(sorted(total_dropped.items()))

    out_dir = paths.path(out)  # local or gs://
    with files.replace_dir(out_dir, expected=OUTPUTS) as tmp:  # train and test of one run, or the old ones
        for split, examples in splits.items():
            prepared.write_prepared(examples, tmp / f"{split}.parquet", split)
        (tmp / "stats.json").write_text(files.strict_json(stats, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    t = stats["total"]
    print(f"{'total':>9}: {t['rows']} rows -> {t['examples']} examples -> kept {t['kept']} "
          f"(train {t['train']}, test {t['test']}); dropped {sum(total_dropped.values())}; wrote {out_dir}/"
          f"{{train,test}}.parquet and stats.json", flush=True)
    return stats
