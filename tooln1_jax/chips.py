"""Accelerator chips: HBM, peak bf16 FLOP/s and HBM bandwidth per chip, as the vendors publish them (decimal units,
dense math: no sparsity), and the `device_kind` strings jax reports for them.

The HBM figures are the labels (95 GB, 16 GB, ...); what a program may use is a little less (the runtime keeps some),
so a program that fits in under a few percent of headroom is tight.
"""

from __future__ import annotations

import dataclasses

GB, TERA = 1e9, 1e12


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: float
    peak_flops: float  # bf16, dense, per second
    hbm_bandwidth: float  # bytes per second


CHIPS = {c.name: c for c in (
    # https://cloud.google.com/tpu/docs/v4: 275 TFLOPs bf16, 32 GiB HBM2 at 1200 GBps
    Chip("v4", 32 * 2 ** 30, 275 * TERA, 1200 * GB),
    # https://cloud.google.com/tpu/docs/v5e: 197 TFLOPs bf16, 16 GB HBM2 at 819 GBps
    Chip("v5e", 16 * GB, 197 * TERA, 819 * GB),
    # https://cloud.google.com/tpu/docs/v5p: 459 TFLOPs bf16, 95 GB HBM2e at 2765 GBps
    Chip("v5p", 95 * GB, 459 * TERA, 2765 * GB),
    # https://cloud.google.com/tpu/docs/v6e: 918 TFLOPs bf16, 32 GB HBM at 1640 GBps (older versions of the page
    # print 1600)
    Chip("v6e", 32 * GB, 918 * TERA, 1640 * GB),
    # https://www.nvidia.com/en-us/data-center/h100/ (SXM): 989 TFLOPS bf16 dense (1979 with sparsity), 80 GB HBM3
    # at 3.35 TB/s
    Chip("h100", 80 * GB, 989 * TERA, 3350 * GB),
    # https://www.nvidia.com/en-us/data-center/h200/: 989 TFLOPS bf16 dense, 141 GB HBM3e at 4.8 TB/s
    Chip("h200", 141 * GB, 989 * TERA, 4800 * GB),
    # https://www.nvidia.com/en-us/data-center/a100/ (SXM): 312 TFLOPS bf16 dense; 80 GB HBM2e at 2039 GB/s,
    # 40 GB HBM2 at 1555 GB/s
    Chip("a100-80gb", 80 * GB, 312 * TERA, 2039 * GB),
    Chip("a100-40gb", 40 * GB, 312 * TERA, 1555 * GB),
)}

_TPU_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p", "TPU v5p": "v5p",
              "TPU v6 lite": "v6e", "TPU v6e": "v6e"}
_GPU_KINDS = (("H200", "h200"), ("H100", "h100"), ("A100-SXM4-80GB", "a100-80gb"), ("A100 80GB", "a100-80gb"),
              ("A100", "a100-40gb"))  # first substring that matches wins


def chip_of(device_kind: str) -> Chip:
    """The table entry of a jax `device.device_kind` ("TPU v5", "NVIDIA H100 80GB HBM3", ...)."""
    if device_kind in _TPU_KINDS:
        return CHIPS[_TPU_KINDS[device_kind]]
    for part, name in _GPU_KINDS:
        if part in device_kind:
            return CHIPS[name]
    raise ValueError(f"device_kind {device_kind!r} is not in the chip table ({', '.join(CHIPS)}); "
                     f"add it to tooln1_jax/chips.py")
