"""Prepared parquet files (`train.parquet` / `test.parquet` of `tooln1 prepare-data`): the unified columns plus
Tool-N1's verl columns, so a prepared file is also a valid Tool-N1 source."""

from __future__ import annotations

import json
from pathlib import Path

from tooln1_jax import paths
from tooln1_jax.data import prompts
from tooln1_jax.data.raw_files import read_parquet
from tooln1_jax.data.records import DataError

_JSON_COLUMNS = ("tools", "messages", "answer")


def write_prepared(records: list[dict], path: str | Path, split: str) -> None:
    """Write records as parquet: the unified columns (JSON text for nested ones) plus Tool-N1's verl columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {
        "id": [r["id"] for r in records],
        "source": [r["source"] for r in records],
        "system": [r.get("system") for r in records],
        **{key: [json.dumps(r[key], ensure_ascii=False) for r in records] for key in _JSON_COLUMNS},
        "multi_turn": [bool(r.get("multi_turn")) for r in records],
        "tool_block": [r.get("tool_block") for r in records],
        "data_source": ["toolcall"] * len(records),
        "prompt": [prompts.chat_messages(r) for r in records],
        "ability": ["toolcall"] * len(records),
        "reward_model": [{"style": "rule", "ground_truth": json.dumps(r["answer"])} for r in records],
        "extra_info": [{"split": split, "index": i, "prompt_type": "qwen"} for i in range(len(records))],
    }
    schema = [
        ("id", pa.string()), ("source", pa.string()), ("system", pa.string()),
        ("tools", pa.string()), ("messages", pa.string()), ("answer", pa.string()), ("multi_turn", pa.bool_()),
        ("tool_block", pa.string()), ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        ("extra_info", pa.struct([("split", pa.string()), ("index", pa.int64()), ("prompt_type", pa.string())])),
    ]
    if records and all("prompt_ids" in r for r in records):
        columns["prompt_ids"] = [r["prompt_ids"] for r in records]
        schema.append(("prompt_ids", pa.list_(pa.int32())))
    table = pa.table(columns, schema=pa.schema(schema))
    if paths.is_remote(path):
        with paths.path(path).open("wb") as f:
            pq.write_table(table, f)
    else:
        pq.write_table(table, str(path))


def read_prepared(path: str | Path) -> list[dict]:
    """Records back from a `write_prepared` parquet file (`prompt_ids` included when present)."""
    path = paths.path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected a train.parquet / test.parquet from prepare-data)")
    records = []
    for lineno, row in enumerate(read_parquet(path)):
        missing = [k for k in ("id", "source", "system", *_JSON_COLUMNS) if k not in row]
        if missing:
            raise DataError(f"{path}: row {lineno}: missing column(s) {missing}; not a prepared file")
        record = {"id": row["id"], "source": row["source"], "system": row["system"],
                  **{key: json.loads(row[key]) for key in _JSON_COLUMNS},
                  "multi_turn": bool(row.get("multi_turn"))}
        if row.get("tool_block") is not None:
            record["tool_block"] = row["tool_block"]
        if row.get("prompt_ids") is not None:
            record["prompt_ids"] = list(row["prompt_ids"])
        records.append(record)
    return records
