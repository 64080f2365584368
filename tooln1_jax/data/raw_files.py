"""Reading raw tool-calling data: local JSON / JSONL / parquet files or directories of them, or a `datasets` hub
id; unreadable input raises `DataError` naming the file (and line, where there is one)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tooln1_jax import paths
from tooln1_jax.data.records import DataError

LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")


def _read_json(path: Path) -> list:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # one object per line in a .json file
            return _read_jsonl(path)
        raise DataError(f"{path}: line {e.lineno}, column {e.colno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of rows, got a {type(data).__name__}")
    return data


def _read_jsonl(path: Path) -> list:
    rows = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {lineno}, column {e.colno}: not valid JSON ({e.msg})") from None
    return rows


def read_parquet(path: Path) -> list:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if paths.is_remote(path):
            with path.open("rb") as f:
                return pq.read_table(f).to_pylist()
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: byte {e.start}: not UTF-8 text") from None


_READERS = {".json": _read_json, ".jsonl": _read_jsonl, ".parquet": read_parquet}


def _read_local(path: Path) -> list:
    if path.is_dir():  # its parquet files (e.g. train/test.parquet), or its JSON / JSONL files
        files = sorted(p for p in path.iterdir() if p.suffix in LOCAL_SUFFIXES and p.is_file())
        parquet = [p for p in files if p.suffix == ".parquet"]
        if parquet:  # a prepare-data output directory: its stats.json is no data
            files = [p for p in files if p.suffix == ".parquet" or p.name != "stats.json"]
        if not files:
            raise DataError(f"{path}: directory holds no {'/'.join(LOCAL_SUFFIXES)} files")
        if parquet and len(parquet) < len(files):
            names = ", ".join(p.name for p in files[:6])
            raise DataError(f"{path}: directory mixes parquet and JSON files ({names}); give one kind per source")
        return [row for f in files for row in _read_local(f)]
    if path.suffix not in _READERS:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (expected one of {LOCAL_SUFFIXES})")
    return _READERS[path.suffix](path)


def load_from_hub(name: str, split: str) -> list:
    import datasets

    return datasets.load_dataset(name, split=split).to_list()


def _looks_like_path(location: str) -> bool:
    return location.startswith((".", "/", "~")) or location.endswith(LOCAL_SUFFIXES) or location.count("/") != 1


def read_rows(location: str, *, split: str = "train",
              hub_loader: Callable[[str, str], list] = load_from_hub) -> list:
    """Rows of a local .json / .jsonl / .parquet file (or a directory of them), else of a hub data set id."""
    path = Path(location).expanduser()
    if path.exists():
        return _read_local(path)
    if _looks_like_path(location):
        raise DataError(f"{location}: no such file or directory")
    try:
        return hub_loader(location, split)
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear message
        raise DataError(f"{location!r} is not a local file or directory, and loading it from the hub failed "
                        f"({type(e).__name__}: {e})") from e
