"""Local and cloud locations behind one path type, for run directories, checkpoints, prepared data and evaluation
outputs: a local path stays a `pathlib.Path` (nothing changes for it); `gs://bucket/dir` (and `s3://`) becomes an
`etils.epath.Path`, the path type orbax itself uses, which reaches the store through fsspec (gcsfs for gs://,
`pip install 'tooln1-jax[gcs]'`). Both share the pathlib API (`/`, exists, is_dir, mkdir, read_text, write_text,
open, iterdir, glob).

Object stores have no append and no rename: `AppendFile` keeps a growing file's text and writes the whole object
again when flushed (metrics.jsonl, samples.jsonl, run.log are small). Writing one object is atomic in a store, so
`files.write_text` needs no temporary file there.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import time

REMOTE_SCHEMES = {"gs": "gcsfs", "s3": "s3fs"}  # scheme -> the fsspec package that reaches it


def scheme(location: str | os.PathLike) -> str | None:
    """"gs" for "gs://b/x", None for a local path."""
    text = os.fspath(location)
    return text.split("://", 1)[0] if "://" in text else None


def is_remote(location: str | os.PathLike) -> bool:
    return scheme(location) is not None


def path(location: str | os.PathLike):
    """A `pathlib.Path` for a local location (`~` expanded), an `etils.epath.Path` for gs:// or s3://."""
    kind = scheme(location)
    if kind is None:
        return pathlib.Path(location).expanduser()
    package = REMOTE_SCHEMES.get(kind)
    if package is None:
        raise ValueError(f"{os.fspath(location)}: unsupported location {kind}:// (use a local path, gs:// or s3://)")
    if importlib.util.find_spec(package) is None:
        raise ImportError(f"{os.fspath(location)}: {kind}:// paths need {package}: "
                          f"pip install 'tooln1-jax[gcs]'" if kind == "gs" else f"pip install {package}")
    from etils import epath

    return epath.Path(os.fspath(location))


class AppendFile:
    """A text file written by appending, on a local disk (appended and flushed) or in an object store (the whole
    text written again on `flush`, at most every `min_interval` seconds, and always on `close`). The text already
    there is kept; `replace(text)` rewrites it (used to drop lines on resume)."""

    def __init__(self, location, *, min_interval: float = 0.0):
        self.path = path(location)
        self.remote = is_remote(location)
        self.min_interval = min_interval
        self._local = None
        self._text = None
        self._dirty = False
        self._uploaded_at = 0.0

    def read(self) -> str:
        return self.path.read_text(encoding="utf-8") if self.path.exists() else ""

    def replace(self, text: str) -> None:
        from tooln1_jax import files

        self.close()
        files.write_text(self.path, text)
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
