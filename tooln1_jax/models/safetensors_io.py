"""Streaming reads and writes of the safetensors format, one tensor at a time.

The `safetensors` package reads whole tensors (and its numpy API refuses bfloat16) and writes only a complete dict,
so a checkpoint larger than host memory could not pass through it. The format is small and documented
(https://github.com/huggingface/safetensors#format): an 8-byte little-endian header length, a JSON header
`{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`, then the raw little-endian data.
Here each tensor is read through a short-lived memory map (only the tensor's pages are touched, and they are
released when it is dropped) and written sequentially after a header computed up front.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}
_ALIGN = 8


class SafetensorsFile:
    """Header of one .safetensors file, validated against the file size; tensors read on demand."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        size = self.path.stat().st_size  # FileNotFoundError names the path
        with open(self.path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError(f"{self.path}: truncated safetensors file ({size} bytes, no header)")
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > size - 8:
                raise ValueError(f"{self.path}: truncated safetensors file (header of {header_len} bytes, "
                                 f"file of {size})")
            try:
                header = json.loads(f.read(header_len))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{self.path}: corrupt safetensors header ({e})") from None
        header.pop("__metadata__", None)
        self.data_start = 8 + header_len
        self.entries = header
        for name, entry in header.items():
            if entry.get("dtype") not in DTYPES:
                raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {entry.get('dtype')!r}")
            begin, end = entry["data_offsets"]
            if self.data_start + end > size:
                raise ValueError(f"{self.path}: truncated safetensors file: tensor {name!r} needs bytes up to "
                                 f"{self.data_start + end}, the file has {size}")
            expected = int(np.prod(entry["shape"], dtype=np.int64)) * DTYPES[entry["dtype"]].itemsize
            if end - begin != expected:
                raise ValueError(f"{self.path}: tensor {name!r} spans {end - begin} bytes, its shape "
                                 f"{entry['shape']} and dtype {entry['dtype']} need {expected}")

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def read(self, name: str) -> np.ndarray:
        """The tensor as a read-only memory-mapped array (copy or slice it; drop it to release its pages)."""
        entry, shape = self.entries[name], self.shape(name)
        if int(np.prod(shape, dtype=np.int64)) == 0:
            return np.zeros(shape, DTYPES[entry["dtype"]])
        return np.memmap(self.path, dtype=DTYPES[entry["dtype"]], mode="r",
                         offset=self.data_start + entry["data_offsets"][0], shape=shape)


def write(path: str | os.PathLike, specs: Iterable[tuple[str, tuple[int, ...], np.dtype]],
          fetch: Callable[[str], np.ndarray]) -> int:
    """Write tensors given as (name, shape, dtype) specs; `fetch(name)` is called once per tensor, in order.

    Returns the number of data bytes written. Only one fetched tensor is alive at a time.
    """
    specs = [(name, tuple(int(d) for d in shape), np.dtype(dtype)) for name, shape, dtype in specs]
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in specs:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": _NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % _ALIGN)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype in specs:
            array = np.ascontiguousarray(fetch(name), dtype=dtype)
            if array.shape != shape:
                raise ValueError(f"{path}: tensor {name!r} has shape {array.shape}, the header says {shape}")
            f.write(array.reshape(-1).view(np.uint8).data)
    return offset
