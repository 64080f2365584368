"""Benchmark: load a preset-shaped checkpoint (random weights written to disk first); prints JSON.

    python -m tooln1_jax.bench.load --preset 0.5b

Reports load seconds and the loading process's peak resident memory against the parameter bytes (the loader
places one tensor at a time, so the peak should stay near the parameters themselves plus one tensor).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_random_checkpoint(preset: str, directory: Path, dtype: str = "bfloat16", seed: int = 0) -> None:
    """An HF directory with random weights of the preset's shape, written tensor by tensor."""
    import ml_dtypes

    from tooln1_jax.models import presets, safetensors_io, weights

    config = presets.preset(preset)
    shapes = weights.hf_shapes(config)
    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(presets.hf_config(preset)))
    specs = [(name, shape, np_dtype) for name, shape in shapes.items()]
    safetensors_io.write(directory / weights.SINGLE_FILE, specs,
                         lambda name: (rng.standard_normal(shapes[name], np.float32) * 0.02).astype(np_dtype))


def _peak_rss_bytes() -> int:
    """This process's peak resident memory. VmHWM, not getrusage: ru_maxrss survives exec, so a child spawned
    by a big parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux, bytes on macOS


def measure(directory: str, param_dtype: str) -> dict:
    import jax

    from tooln1_jax.models import weights

    jax.numpy.zeros(1).block_until_ready()  # backend up before the clock starts
    baseline = _peak_rss_bytes()
    start = time.perf_counter()
    config, params = weights.load(directory, param_dtype=param_dtype)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - start
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    peak = _peak_rss_bytes()
    return {"load_seconds": round(seconds, 3), "param_bytes": param_bytes, "num_params": config.num_params,
            "peak_rss_bytes": peak, "rss_before_load_bytes": baseline,
            "peak_rss_over_param_bytes": round(peak / param_bytes, 3), "backend": jax.default_backend()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="0.5b")
    parser.add_argument("--disk-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--param-dtype", default="float32", choices=["bfloat16", "float32"])
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: run the load in this (fresh) process
    args = parser.parse_args(argv)
    if args.measure:
        result = measure(args.measure, args.param_dtype)
        print(json.dumps(result))
        return result
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_random_checkpoint(args.preset, Path(tmp), args.disk_dtype)
        write_seconds = time.perf_counter() - start
        child = subprocess.run([sys.executable, "-m", "tooln1_jax.bench.load", "--measure", tmp,
                                "--param-dtype", args.param_dtype], capture_output=True, text=True, check=False)
        if child.returncode:
            raise RuntimeError(f"load benchmark failed:\n{child.stdout}\n{child.stderr}")
        result = json.loads(child.stdout.strip().splitlines()[-1])
    result = {"benchmark": "load", "preset": args.preset, "disk_dtype": args.disk_dtype,
              "param_dtype": args.param_dtype, "write_seconds": round(write_seconds, 3), **result}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
