"""Writing outputs safely: whole files (and whole directories) appear at once or not at all, and JSON is strict.

- `write_text` / `open_atomic`: write a temporary file next to the target, then `os.replace` it into place, so
  a reader (or a rerun after an interrupt) never sees half a file.
- `replace_dir`: fill a temporary directory, then swap it in for the target directory, so files that belong
  together (train.parquet, test.parquet, stats.json) never mix two runs.
- `strict_json`: `json.dumps` that never writes NaN / Infinity (not JSON): they become null.

In an object store (gs://, see `paths`) writing one object is already all-or-nothing: `open_atomic` collects the
text and writes the object once at the end; `replace_dir` fills a local temporary directory and then copies its
files over (each file whole, the set not in one step).
- `AppendFile`: a growing text file (metrics.jsonl, samples.jsonl, run.log). Object stores have no append and no
  rename: there it keeps the text and writes the whole object again when flushed (these files are small).

Pure Python (no jax).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import io
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from tooln1_jax import paths


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, *, encoding: str = "utf-8", errors: str = "strict") -> Iterator[TextIO]:
    """A text file opened for writing that replaces `path` only when the block ends without an error."""
    if paths.is_remote(path):
        buffer = io.StringIO()
        yield buffer
        paths.path(path).write_bytes(buffer.getvalue().encode(encoding, errors))
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding=encoding, errors=errors) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> None:
    with open_atomic(path, encoding=encoding) as f:
        f.write(text)


@contextlib.contextmanager
def replace_dir(target: str | os.PathLike, *, expected: tuple[str, ...]) -> Iterator[Path]:
    """A fresh temporary directory to fill; when the block ends without an error it takes `target`'s place.

    An existing `target` may only hold names in `expected` (it is removed as a whole, so nothing else may be lost).
    """
    if paths.is_remote(target):
        yield from _replace_remote_dir(paths.path(target), expected)
        return
    target = Path(target)
    if target.exists():
        if not target.is_dir():
            raise FileExistsError(f"{target}: exists and is not a directory")
        foreign = sorted(p.name for p in target.iterdir() if p.name not in expected)
        if foreign:
            raise FileExistsError(f"{target}: holds files this command did not write ({', '.join(foreign[:5])}); "
                                  f"choose an empty or new directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _replace_remote_dir(target, expected: tuple[str, ...]) -> Iterator[Path]:
    foreign = sorted(p.name for p in target.iterdir() if p.name not in expected) if target.is_dir() else []
    if foreign:
        raise FileExistsError(f"{target}: holds files this command did not write ({', '.join(foreign[:5])}); "
                              f"choose an empty or new directory")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)
        target.mkdir(parents=True, exist_ok=True)
        for stale in target.iterdir() if target.is_dir() else []:
            if not (Path(tmp) / stale.name).exists():
                stale.unlink()
        for file in sorted(Path(tmp).iterdir()):
            (target / file.name).write_bytes(file.read_bytes())


def finite(value: Any) -> Any:
    """`value` with every non-finite float (NaN, +-Infinity) in it replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def strict_json(value: Any, **kwargs) -> str:
    """`json.dumps(value, **kwargs)` with NaN and Infinity written as null (they are not JSON)."""
    try:
        return json.dumps(value, allow_nan=False, **kwargs)
    except ValueError:  # a non-finite float somewhere (the only ValueError json.dumps raises besides cycles)
        return json.dumps(finite(value), allow_nan=False, **kwargs)


class AppendFile:
    """A text file written by appending, on a local disk (appended and flushed) or in an object store (the whole
    text written again on `flush`, at most every `min_interval` seconds, and always on `close`). The text already
    there is kept; `replace(text)` rewrites it (used to drop lines on resume)."""

    def __init__(self, location, *, min_interval: float = 0.0):
        self.path = paths.path(location)
        self.remote = paths.is_remote(location)
        self.min_interval = min_interval
        self._local = None
        self._text = None
        self._dirty = False
        self._uploaded_at = 0.0

    def read(self) -> str:
        return self.path.read_text(encoding="utf-8") if self.path.exists() else ""

    def replace(self, text: str) -> None:
        self.close()
        write_text(self.path, text)
        if self.remote:
            self._text = text

    def write(self, text: str) -> None:
        if not self.remote:
            if self._local is None:
                self._local = open(self.path, "a", encoding="utf-8")
            self._local.write(text)
            return
        if self._text is None:
            self._text = self.read()
        self._text += text
        self._dirty = True

    def flush(self, force: bool = False) -> None:
        if self._local is not None:
            self._local.flush()
        elif self._dirty and (force or time.monotonic() - self._uploaded_at >= self.min_interval):
            self.path.write_text(self._text, encoding="utf-8")
            self._dirty = False
            self._uploaded_at = time.monotonic()

    def close(self) -> None:
        self.flush(force=True)
        if self._local is not None:
            self._local.close()
            self._local = None
