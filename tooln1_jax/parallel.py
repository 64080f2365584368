"""Device mesh, logical-axis sharding rules, and multi-host initialisation.

One mesh with named axes `data`, `fsdp`, `tensor`. Parameters name their dimensions with logical axes; `RULES` maps
each logical axis to mesh axes (FSDP shards `embed`, tensor parallelism shards heads, MLP and vocabulary). A
dimension that a mesh axis does not divide stays replicated on that axis (e.g. 2 KV heads on a tensor axis of 4).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]
RULES: Rules = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("length", None),
    # activations: the batch over (data, fsdp) -- so FSDP gathers weights rather than moving activations -- and
    # heads / MLP / vocabulary over tensor
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def parse_mesh_spec(spec: Mapping[str, int] | str | None) -> dict[str, int]:
    """`{data: -1, fsdp: 4, tensor: 2}` or "data=-1,fsdp=4,tensor=2" -> sizes per axis (missing axes are 1)."""
    if spec is None:
        spec = {"data": -1}
    if isinstance(spec, str):
        items = [part.split("=", 1) for part in spec.replace(" ", "").split(",") if part]
        if any(len(kv) != 2 for kv in items):
            raise ValueError(f"mesh spec {spec!r}: expected AXIS=SIZE pairs such as 'data=-1,fsdp=4,tensor=2'")
        spec = {k: int(v) for k, v in items}
    unknown = set(spec) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh spec {dict(spec)}: unknown axis {sorted(unknown)}; axes are {MESH_AXES}")
    sizes = {axis: int(spec.get(axis, 1)) for axis in MESH_AXES}
    if sum(size == -1 for size in sizes.values()) > 1:
        raise ValueError(f"mesh spec {dict(spec)}: at most one axis may be -1")
    if any(size == 0 or size < -1 for size in sizes.values()):
        raise ValueError(f"mesh spec {dict(spec)}: sizes must be positive (or -1 for the rest)")
    return sizes


CPU_HINT = (" (JAX runs on CPU here: a plain `pip install` gives CPU-only JAX; on a Cloud TPU VM install "
            "'tooln1-jax[tpu]', on an NVIDIA GPU machine 'tooln1-jax[cuda]')")
LARGE_ON_CPU = 2_000_000_000  # parameters: above this, training or evaluating on CPU is almost surely a mistake


def cpu_warning(num_params: int) -> str | None:
    """A warning when a large model is about to run on CPU (JAX installed without accelerator support)."""
    if jax.default_backend() != "cpu" or num_params < LARGE_ON_CPU:
        return None
    return f"a {num_params / 1e9:.1f}B-parameter model on CPU{CPU_HINT}"


def make_mesh(spec: Mapping[str, int] | str | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all) with axes (data, fsdp, tensor); -1 takes the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh_spec(spec)
    fixed = math.prod(size for size in sizes.values() if size != -1)
    for axis, size in sizes.items():
        if size == -1:
            if len(devices) % fixed:
                raise ValueError(f"mesh spec {sizes}: {len(devices)} devices are not divisible by {fixed}")
            sizes[axis] = len(devices) // fixed
    shape = tuple(sizes[axis] for axis in MESH_AXES)
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh spec {sizes} needs {math.prod(shape)} devices, but {len(devices)} are available"
                         + (CPU_HINT if jax.default_backend() == "cpu" else ""))
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices)
    except Exception:  # CPU or an unusual topology: plain order
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES)


def single_device_mesh(device: jax.Device | None = None) -> Mesh:
    return make_mesh({"data": 1}, [device or jax.devices()[0]])


def _mesh_axes_for(logical_name: str | None, rules: Rules) -> tuple[str, ...]:
    if logical_name is None:
        return ()
    for name, axes in rules:
        if name == logical_name:
            if axes is None:
                return ()
            return (axes,) if isinstance(axes, str) else tuple(axes)
    raise KeyError(f"no sharding rule for logical axis {logical_name!r}")


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Rules = RULES) -> PartitionSpec:
    """Mesh PartitionSpec for one array; dims the mesh axes do not divide are replicated."""
    if len(logical) != len(shape):
        raise ValueError(f"logical axes {tuple(logical)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, size in zip(logical, shape):
        axes = tuple(a for a in _mesh_axes_for(name, rules) if mesh.shape[a] > 1)
        if used & set(axes):
            raise ValueError(f"logical axes {tuple(logical)} put mesh axis {sorted(used & set(axes))} on two dims")
        if axes and size % math.prod(mesh.shape[a] for a in axes):
            log.info("dim %s of size %d is not divisible by mesh axes %s: replicated", name, size, axes)
            axes = ()
        used |= set(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def shardings(shapes, logical, mesh: Mesh, rules: Rules = RULES):
    """Tree of NamedSharding for a tree of arrays/ShapeDtypeStructs and the matching tree of logical specs."""
    return jax.tree.map(lambda s, names: NamedSharding(mesh, logical_to_spec(tuple(names), s.shape, mesh, rules)),
                        shapes, logical, is_leaf=lambda x: isinstance(x, PartitionSpec))


_ACTIVE = threading.local()


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules = RULES):
    """While tracing inside this context, `constrain` pins activations to the mesh by their logical axes."""
    previous = getattr(_ACTIVE, "value", None)
    _ACTIVE.value = (mesh, rules)
    try:
        yield
    finally:
        _ACTIVE.value = previous


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """Sharding constraint from logical axis names; a no-op outside `activation_sharding`."""
    active = getattr(_ACTIVE, "value", None)
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(logical, x.shape, mesh, rules)))


def global_max(value: int) -> int:
    """The largest `value` over all processes (shapes every host must agree on)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.asarray([value], np.int64))))


def check_batch_layout(mesh: Mesh) -> None:
    """Each process must own its own block of batch rows (make_array_from_process_local_data assumes it)."""
    if jax.process_count() == 1:
        return
    rows = batch_size_multiple(mesh)
    local = {idx[0].indices(rows)[:2] for idx in batch_sharding(mesh, 1).addressable_devices_indices_map(
        (rows,)).values()}
    owned = sum(stop - start for start, stop in local)
    if rows % jax.process_count() or owned != rows // jax.process_count():
        raise ValueError(f"mesh {dict(mesh.shape)}: the batch axes (data x fsdp = {rows}) must split into one block "
                         f"of rows per process ({jax.process_count()} processes); put the tensor axis within hosts")


def batch_size_multiple(mesh: Mesh) -> int:
    """Global batch sizes must be multiples of this (the devices along the batch axes)."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading dim over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Start `jax.distributed` for a multi-host run (call once per process, before any other jax call).

    Cloud TPU VMs and SLURM/Open MPI clusters need no arguments (jax detects them). Otherwise pass the
    coordinator's host:port, the process count and this process's id, or set TOOLN1_COORDINATOR,
    TOOLN1_NUM_PROCESSES and TOOLN1_PROCESS_ID. A single process with nothing configured is left alone.
    """
    coordinator_address = coordinator_address or os.environ.get("TOOLN1_COORDINATOR")
    if num_processes is None and "TOOLN1_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["TOOLN1_NUM_PROCESSES"])
    if process_id is None and "TOOLN1_PROCESS_ID" in os.environ:
        process_id = int(os.environ["TOOLN1_PROCESS_ID"])
    if coordinator_address is None and num_processes in (None, 1) and not _on_cloud_tpu():
        return
    if jax.distributed.is_initialized():
        return
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    log.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())


def _on_cloud_tpu() -> bool:
    return bool(os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID"))
