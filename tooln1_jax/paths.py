"""Local and cloud locations behind one path type, for run directories, checkpoints, prepared data and evaluation
outputs: a local path stays a `pathlib.Path` (nothing changes for it); `gs://bucket/dir` (and `s3://`) becomes an
`etils.epath.Path`, the path type orbax itself uses, which reaches the store through fsspec (gcsfs for gs://,
`pip install 'tooln1-jax[gcs]'`). Both share the pathlib API (`/`, exists, is_dir, mkdir, read_text, write_text,
open, iterdir, glob).

The lowest layer of file handling: writing (whole files, appended logs) is `files`, which uses these paths.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

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
