"""Multi-host slices without the hardware: on libtpu's descriptions of real Cloud TPU slices (single host up to 256
chips), every process of a `parallel.make_mesh` mesh holds one contiguous block of batch rows in process order, the
block the rollout engine's slots and the data feeding write to; and `parallel.initialize` starts jax.distributed on
a multi-host Cloud TPU VM slice (faked as jax sees one) and nowhere else."""

from __future__ import annotations

import ast
import functools
import os
import re
from pathlib import Path

import jax
import numpy as np
import pytest

from tooln1_jax import config, parallel

# several pytest workers load libtpu at once; without this the second one fails on libtpu's lockfile
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))
SLICES = ["v5e:2x2", "v5e:2x4", "v5e:4x4", "v5e:8x8", "v5e:16x16", "v5p:2x2x1", "v5p:2x2x2", "v5p:2x4x4",
          "v5p:4x4x4", "v5p:4x8x8", "v6e:2x2", "v6e:4x4", "v6e:8x8", "v6e:16x16",
          "v4:2x2x2"]  # v4: two devices per chip, 8 per host
SPECS = [{"data": -1}, {"fsdp": -1}, {"fsdp": -1, "tensor": 4}, {"data": 2, "fsdp": -1}, {"fsdp": -1, "tensor": 2}]
V5P_BY_CHIPS = {8: "v5p:2x2x2", 16: "v5p:2x2x4", 32: "v5p:2x4x4", 64: "v5p:4x4x4", 128: "v5p:4x4x8",
                256: "v5p:4x8x8"}


@functools.cache
def slice_devices(name: str) -> tuple:
    from jax.experimental import topologies

    return tuple(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)


def rows_by_process(sharding, rows: int) -> dict[int, list[tuple[int, int]]]:
    """Each process's distinct row ranges [start, stop) of a [rows] array, sorted, read off the sharding alone."""
    held: dict[int, set] = {}
    for device, index in sharding.devices_indices_map((rows,)).items():
        held.setdefault(device.process_index, set()).add(index[0].indices(rows)[:2])
    return {p: sorted(ranges) for p, ranges in sorted(held.items())}


def place(sharding, local: dict[int, np.ndarray]) -> np.ndarray:
    """The global array make_array_from_process_local_data builds from each process's rows: a process's addressable
    row ranges, in order, take its local rows one after another (as jax documents it)."""
    rows = sum(len(x) for x in local.values())
    out = np.full(rows, -1)
    for p, ranges in rows_by_process(sharding, rows).items():
        at = 0
        for start, stop in ranges:
            out[start:stop] = local[p][at:at + stop - start]
            at += stop - start
        assert at == len(local[p]), (p, ranges, len(local[p]))
    return out


def check_layout(mesh) -> None:
    """The three things the engine and the trainer assume of every process p of `mesh`."""
    processes = sorted({d.process_index for d in mesh.devices.flat})
    hosts, multiple = len(processes), parallel.batch_size_multiple(mesh)
    assert processes == list(range(hosts)) and multiple % hosts == 0, (processes, multiple)
    rows1 = parallel.batch_sharding(mesh, 1)
    # (a) the rows each process's devices hold: one contiguous block [p * n, (p + 1) * n), for any batch size
    for batch in (multiple, 3 * multiple):
        n = batch // hosts
        for p, ranges in rows_by_process(rows1, batch).items():
            held = sorted({r for start, stop in ranges for r in range(start, stop)})
            assert held == list(range(p * n, (p + 1) * n)), (dict(mesh.shape), p, held[:8], n)
    # (b) the engine: process p writes slot ids p * slots + s into its local slot s; each must land at that global
    # row (the cache row the insert writes), held by a device of process p
    slots = 2 * (multiple // hosts)
    slot_ids = {p: p * slots + np.arange(slots) for p in processes}
    np.testing.assert_array_equal(place(rows1, slot_ids), np.arange(slots * hosts))
    owner = {r: p for p, ranges in rows_by_process(rows1, slots * hosts).items()
             for start, stop in ranges for r in range(start, stop)}
    assert all(owner[int(i)] == p for p, ids in slot_ids.items() for i in ids)
    # (c) the data feeding: each process's prompts (its slice of the global batch, `local_positions`) placed by
    # make_array_from_process_local_data are that slice of the global batch
    batch = 2 * multiple
    global_rows = np.random.default_rng(0).permutation(10 * batch)[:batch]
    n = batch // hosts
    np.testing.assert_array_equal(place(rows1, {p: global_rows[p * n:(p + 1) * n] for p in processes}), global_rows)
    parallel.check_batch_layout(mesh)


@pytest.mark.parametrize("name", SLICES)
def test_every_process_holds_one_block_of_batch_rows(name):
    devices = slice_devices(name)
    for spec in SPECS:
        mesh = parallel.make_mesh(spec, devices)
        check_layout(mesh)
        hosts = len({d.process_index for d in devices})
        if "tensor" in spec:  # a tensor group never spans two hosts
            groups = mesh.devices.reshape(-1, spec["tensor"])
            assert all(len({d.process_index for d in g}) == 1 for g in groups), (name, spec)
        if hosts == 1:  # one host: the mesh is jax's topology-aware mesh, as before
            from jax.experimental import mesh_utils

            assert (mesh.devices == mesh_utils.create_device_mesh(mesh.devices.shape, devices)).all(), (name, spec)


def config_slice(path: Path) -> str | None:
    """The slice a config's header names ("Mesh: 64 TPU v5p chips"); None for the CPU configs."""
    found = re.search(r"Mesh: (\d+) TPU v5p chips", path.read_text())
    assert found or "cpu" in path.name or path.name == "demo.yaml", f"{path.name} names no slice"
    return V5P_BY_CHIPS[int(found.group(1))] if found else None


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_starts_on_its_slice(path):
    mesh_cfg = config.load(path, ["model.path=set-by-the-chain"] if "cpu" in path.name else []).mesh
    name = config_slice(path)
    devices = slice_devices(name) if name else tuple(jax.devices("cpu")[:1])  # the CPU configs: one CPU device
    mesh = parallel.make_mesh({"data": mesh_cfg.data, "fsdp": mesh_cfg.fsdp, "tensor": mesh_cfg.tensor}, devices)
    assert mesh.devices.size == len(devices)
    check_layout(mesh)


@pytest.mark.parametrize("name, spec", [("v5p:2x2x2", {"data": -1}), ("v5p:2x4x4", {"fsdp": -1}),
                                        ("v5p:4x4x4", {"fsdp": -1, "tensor": 4})])
def test_the_topology_order_mesh_of_the_issue_is_refused(name, spec):
    """jax's topology-aware mesh over the whole slice (the old make_mesh) interleaves the hosts' rows; on v5p-64 the
    row counts even agree, so the check has to look at which rows."""
    from jax.experimental import mesh_utils
    from jax.sharding import Mesh

    devices = slice_devices(name)
    shape = parallel.make_mesh(spec, devices).devices.shape
    interleaved = Mesh(mesh_utils.create_device_mesh(shape, devices), parallel.MESH_AXES)
    with pytest.raises(ValueError, match=r"process \d+ holds batch rows \[.*not the block"):
        parallel.check_batch_layout(interleaved)


def test_a_tensor_axis_wider_than_a_host_names_a_spec_that_works():
    devices = slice_devices("v5p:2x4x4")  # 8 hosts of 4 chips
    for spec, working in (({"fsdp": -1, "tensor": 8}, {"data": 1, "fsdp": -1, "tensor": 4}),
                          ({"data": 2, "fsdp": -1, "tensor": 8}, {"data": 2, "fsdp": -1, "tensor": 4}),
                          ({"data": -1, "tensor": 8}, {"data": -1, "fsdp": 1, "tensor": 4}),
                          ({"fsdp": 4, "tensor": 8}, {"data": 1, "fsdp": -1, "tensor": 4})):
        with pytest.raises(ValueError, match="tensor 8 does not divide the 4 devices of a host") as err:
            parallel.make_mesh(spec, devices)
        suggested = ast.literal_eval(re.search(r"use e\.g\. (\{.*\})", str(err.value)).group(1))
        assert suggested == working, (spec, str(err.value))
        check_layout(parallel.make_mesh(suggested, devices))


# ---- parallel.initialize on a faked Cloud TPU VM -----------------------------------------------------------------
@pytest.fixture
def tpu_vm(monkeypatch):
    """A Cloud TPU VM as jax's cluster detection reads it: its TPU-VM flag (set at import from the PCI bus), the
    environment, and the VM's metadata server; returns (set_metadata, metadata keys read, initialize calls)."""
    from jax._src.clusters import cloud_tpu_cluster

    metadata, asked, calls = {}, [], []

    def get_metadata(key):
        asked.append(key)
        if isinstance(metadata.get(key), Exception):
            raise metadata[key]
        return (metadata[key], 200) if key in metadata else ("", 404)

    for var in ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_NUM_SLICES", "MEGASCALE_SLICE_ID",
                "TPU_SKIP_MDS_QUERY", "TOOLN1_COORDINATOR", "TOOLN1_NUM_PROCESSES", "TOOLN1_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
    monkeypatch.setattr(cloud_tpu_cluster, "get_metadata", get_metadata)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    return metadata.update, asked, calls


def endpoints(n: int) -> str:
    return ",".join(f"t1v-n-{i}-w-{i}:{i}:10.0.0.{i + 2}" for i in range(n))


def test_initialize_starts_jax_distributed_on_a_multi_host_tpu_vm_slice(tpu_vm):
    set_metadata, asked, calls = tpu_vm
    set_metadata({"agent-worker-number": "1", "worker-network-endpoints": endpoints(4), "tpu-env": ""})
    parallel.initialize()
    assert calls == [{"coordinator_address": None, "num_processes": None, "process_id": None}]
    assert "worker-network-endpoints" in asked


@pytest.mark.parametrize("case", ["single-host VM", "metadata unreachable", "no chips (TPU_SKIP_MDS_QUERY)"])
def test_initialize_leaves_a_single_host_or_unreadable_tpu_vm_alone(tpu_vm, monkeypatch, case):
    set_metadata, asked, calls = tpu_vm
    set_metadata({"agent-worker-number": "0", "worker-network-endpoints": endpoints(1), "tpu-env": ""})
    if case == "metadata unreachable":
        set_metadata({"agent-worker-number": ConnectionError("metadata.google.internal")})
    if case.startswith("no chips"):
        monkeypatch.setenv("TPU_SKIP_MDS_QUERY", "1")  # what jax sets where it finds no TPU chips
    parallel.initialize()
    assert calls == []
    assert bool(asked) == (case != "no chips (TPU_SKIP_MDS_QUERY)"), asked


@pytest.mark.parametrize("env, started", [({"TPU_WORKER_HOSTNAMES": "h0,h1", "MEGASCALE_NUM_SLICES": "1"}, True),
                                          ({"TPU_WORKER_HOSTNAMES": "h0", "MEGASCALE_NUM_SLICES": "1"}, False),
                                          ({"TPU_WORKER_HOSTNAMES": "h0", "MEGASCALE_NUM_SLICES": "2"}, True)])
def test_initialize_on_gke_reads_the_worker_variables(tpu_vm, monkeypatch, env, started):
    _, asked, calls = tpu_vm
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    parallel.initialize()
    assert len(calls) == started and asked == []  # GKE: the environment alone, no metadata query


def test_initialize_is_a_no_op_without_tpu_chips_and_asks_no_server(tpu_vm, monkeypatch):
    """This machine as it is (libtpu installed, no chips: jax's TPU-VM flag is off), with and without the
    TPU_SKIP_MDS_QUERY that loading libtpu leaves behind."""
    from jax._src import cloud_tpu_init
    from jax._src.clusters import cloud_tpu_cluster

    _, asked, calls = tpu_vm
    monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", cloud_tpu_init.running_in_cloud_tpu_vm)
    assert not cloud_tpu_init.running_in_cloud_tpu_vm
    for skip_mds in (None, "1"):
        if skip_mds:
            monkeypatch.setenv("TPU_SKIP_MDS_QUERY", skip_mds)
        parallel.initialize()
    assert calls == [] and asked == []
    monkeypatch.setenv("TOOLN1_NUM_PROCESSES", "2")  # configured explicitly: started whatever the machine
    parallel.initialize()
    assert calls == [{"coordinator_address": None, "num_processes": 2, "process_id": None}]
