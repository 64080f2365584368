"""train.report_to: [wandb]: scalars and a table of sample replies reach a Weights & Biases run (offline mode, read
back from its .wandb file by hand: LevelDB-style log records around wandb's protocol buffers); a resumed run keeps
the W&B run id."""

from __future__ import annotations

import json
import struct
import time

import pytest

from tooln1_jax.train.metrics import MetricsLogger

wandb = pytest.importorskip("wandb", reason="the optional extra tooln1-jax[wandb] is not installed")
from google.protobuf.message import DecodeError  # noqa: E402  (protobuf comes with wandb)


def wandb_records(path):
    """Protocol-buffer records of a .wandb file: a 7-byte header, then 32 KiB blocks of records, each with a
    7-byte header (crc32c, length u16, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left in the block for a header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack_from("<IHB", data, pos)
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk)
            pending = b""
            yield record
        elif kind in (2, 3):
            pending += chunk


def finished_records(path, timeout_s: float = 60.0):
    """The records of a finished offline run. wandb's service process writes the file itself and may still be
    writing it when `run.finish()` returns (seen: only the 7-byte header, the whole file a second later), so wait
    for the run's exit record."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            records = list(wandb_records(path))
        except DecodeError:  # a record cut off mid-write
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def history(run_dir):
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    rows = []
    for record in finished_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
    return rows


def test_scalars_and_sample_table_reach_an_offline_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with MetricsLogger(tmp_path, tensorboard=False, wandb={"project": "tests", "config": {"lr": 0.1}}) as log:
        for step in (1, 2):
            log.log(step, {"reward/mean": step / 10, "kl": 1e-3})
        log.log_samples(2, [{"id": "r0", "reward": 1.0, "reply": "<tool_call>[]</tool_call>"}])
    rows = history(tmp_path)
    scalars = [r for r in rows if "reward/mean" in r]
    assert [(r["_step"], r["reward/mean"]) for r in scalars] == [(1, 0.1), (2, 0.2)]
    table = next(r for r in rows if "samples/_type" in r)  # nested keys come flattened: samples/<field>
    assert table["_step"] == 2 and table["samples/_type"] == "table-file"
    assert (table["samples/ncols"], table["samples/nrows"]) == (4, 1)
    (run_files,) = tmp_path.glob("wandb/offline-run-*/files")
    content = json.loads((run_files / table["samples/path"]).read_text())
    assert content["columns"] == ["step", "id", "reward", "reply"]
    assert content["data"] == [[2, "r0", 1.0, "<tool_call>[]</tool_call>"]]
    run_id = (tmp_path / "wandb_id").read_text().strip()
    with MetricsLogger(tmp_path, tensorboard=False, wandb={"project": "tests"}, resume_step=2) as log:
        log.log(3, {"reward/mean": 0.3})
    assert (tmp_path / "wandb_id").read_text().strip() == run_id  # the same W&B run continues
    assert len(list(tmp_path.glob(f"wandb/offline-run-*-{run_id}"))) == 2
