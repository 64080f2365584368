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
    spec = {"data": -1} if spec is None else spec
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
    """A mesh over `devices` (default: all) with axes (data, fsdp, tensor); -1 takes the remaining devices.

    With the devices of several processes (a multi-host slice) the batch rows (data-major, then fsdp) are grouped by
    process in process order: process p holds rows [p * n, (p + 1) * n), as the rollout engine's slots and the data
    feeding assume, and each tensor group lies inside one host.
    """
    devices = list(jax.devices() if devices is None else devices)
    requested = parse_mesh_spec(spec)
    sizes = dict(requested)
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
    hosts = _devices_by_process(devices)
    if len(hosts) == 1:
        return Mesh(_device_grid(shape, devices), MESH_AXES)
    local, tensor = len(hosts[0]), sizes["tensor"]
    if any(len(h) != local for h in hosts):
        raise ValueError(f"mesh spec {requested}: the processes hold different numbers of devices "
                         f"({sorted({len(h) for h in hosts})}); every process needs the same number")
    if local % tensor:
        fits = max(t for t in range(1, min(tensor, local) + 1) if local % t == 0)
        raise ValueError(f"mesh spec {requested}: tensor {tensor} does not divide the {local} devices of a host "
                         f"({len(hosts)} processes). The tensor axis must stay inside a host so that each process "
                         f"holds its own batch rows; use e.g. {_working_spec(requested, fits, devices)}")
    # each host's devices as [its batch rows, tensor], stacked in process order
    grid = np.concatenate([_device_grid((local // tensor, tensor), h) for h in hosts])
    return Mesh(grid.reshape(shape), MESH_AXES)


def _devices_by_process(devices: Sequence[jax.Device]) -> list[list[jax.Device]]:
    processes = sorted({d.process_index for d in devices})
    return [[d for d in devices if d.process_index == p] for p in processes]


def _device_grid(shape: tuple[int, ...], devices: Sequence[jax.Device]) -> np.ndarray:
    """`devices` in a physically sensible order for `shape` (jax's topology-aware mesh where it applies)."""
    try:
        from jax.experimental import mesh_utils

        return mesh_utils.create_device_mesh(shape, devices)
    except Exception:  # CPU, one host of a slice, two devices per chip (TPU v4 without megacore): plain order
        return np.asarray(devices, dtype=object).reshape(shape)


def _working_spec(requested: dict[str, int], tensor: int, devices: Sequence[jax.Device]) -> dict[str, int]:
    """The requested spec with a tensor size that fits a host, closest to what was asked that builds a mesh."""
    candidates = ({**requested, "tensor": tensor}, {"data": requested["data"], "fsdp": -1, "tensor": tensor},
                  {"data": 1, "fsdp": -1, "tensor": tensor})
    for candidate in candidates[:-1]:
        with contextlib.suppress(ValueError):
            make_mesh(candidate, devices)
            return candidate
    return candidates[-1]


def single_device_mesh(device: jax.Device | None = None) -> Mesh:
    return make_mesh({"data": 1}, [device or jax.devices()[0]])


def _mesh_axes_for(logical_name: str | None, rules: Rules) -> tuple[str, ...]:
    if logical_name is None:
        return ()
    for name, axes in rules:
        if name == logical_name:
            return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
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
def activation_sharding(mesh: Mesh):
    """While tracing inside this context, `constrain` pins activations to the mesh by their logical axes."""
    previous = getattr(_ACTIVE, "mesh", None)
    _ACTIVE.mesh = mesh
    try:
        yield
    finally:
        _ACTIVE.mesh = previous


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """Sharding constraint from logical axis names (`RULES`); a no-op outside `activation_sharding`."""
    mesh = getattr(_ACTIVE, "mesh", None)
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(logical, x.shape, mesh)))


def global_max(*values: int):
    """The largest of each value over all processes, in one collective (shapes every host must agree on): an int
    for one value, a list for several."""
    if jax.process_count() == 1:
        out = [int(v) for v in values]
    else:
        from jax.experimental import multihost_utils

        out = multihost_utils.process_allgather(np.asarray(values, np.int64)).max(axis=0).tolist()
    return out[0] if len(values) == 1 else out


def check_batch_layout(mesh: Mesh) -> None:
    """Process p must hold exactly batch rows [p * n, (p + 1) * n) of the mesh, n = rows / processes: the rollout
    engine writes its slots there and make_array_from_process_local_data places each host's rows there."""
    rows = batch_size_multiple(mesh)
    processes = sorted({d.process_index for d in mesh.devices.flat})
    if jax.process_count() > 1 and len(processes) != jax.process_count():
        raise ValueError(f"mesh {dict(mesh.shape)} spans processes {processes}, but {jax.process_count()} "
                         f"processes run: build the mesh over all devices (parallel.make_mesh)")
    if rows % len(processes):
        raise ValueError(f"mesh {dict(mesh.shape)}: the batch axes (data x fsdp = {rows}) do not split into one "
                         f"block of rows per process ({len(processes)} processes); put the tensor axis within hosts")
    held = {p: set() for p in processes}
    for device, index in batch_sharding(mesh, 1).devices_indices_map((rows,)).items():
        held[device.process_index].update(range(*index[0].indices(rows)))
    n = rows // len(processes)
    for block, p in enumerate(processes):
        if p != block or held[p] != set(range(p * n, (p + 1) * n)):
            raise ValueError(f"mesh {dict(mesh.shape)}: process {p} holds batch rows {sorted(held[p])}, not the "
                             f"block [{block * n}, {(block + 1) * n}) the rollout engine and the data feeding "
                             f"assume; build the mesh with parallel.make_mesh, which orders the batch rows by "
                             f"process")


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

    Started when a coordinator or more than one process is given (the arguments, or TOOLN1_COORDINATOR,
    TOOLN1_NUM_PROCESSES and TOOLN1_PROCESS_ID), or on a multi-host Cloud TPU slice with nothing given: a TPU VM
    whose slice has several workers, detected as jax detects it (GKE's TPU_WORKER_HOSTNAMES, else the VM's metadata
    server); jax then finds the coordinator, the process count and this process's id itself. On SLURM / Open MPI
    give the process count and jax finds the rest. Otherwise -- one process, a single-host TPU VM, a machine
    without TPU chips (which makes no network call here) -- it does nothing.
    """
    coordinator_address = coordinator_address or os.environ.get("TOOLN1_COORDINATOR")
    if num_processes is None and "TOOLN1_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["TOOLN1_NUM_PROCESSES"])
    if process_id is None and "TOOLN1_PROCESS_ID" in os.environ:
        process_id = int(os.environ["TOOLN1_PROCESS_ID"])
    one_process = coordinator_address is None and num_processes in (None, 1) and _cloud_tpu_processes() == 1
    if one_process or jax.distributed.is_initialized():
        return
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    log.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())


def _cloud_tpu_processes() -> int:
    """The processes of this Cloud TPU slice (all slices of a multislice run) as jax's own cluster detection counts
    them; 1 off a TPU VM. jax only looks for them on a TPU VM (libtpu and TPU chips on the PCI bus): GKE's worker
    variables first, then the VM's metadata server (not queried when TPU_SKIP_MDS_QUERY is set)."""
    from jax._src.clusters import cloud_tpu_cluster

    for cluster in (cloud_tpu_cluster.GkeTpuCluster, cloud_tpu_cluster.GceTpuCluster):
        try:
            if cluster.is_env_present():
                return cluster.get_process_count()
        except Exception as e:  # e.g. a metadata server that does not answer: leave jax.distributed alone
            log.warning("could not read the Cloud TPU slice's workers (%s): %s", cluster.__name__, e)
            return 1
    return 1
