"""Run directories, checkpoints, prepared data and evaluation outputs on gs://, offline: a local GCS emulator
(gcp-storage-emulator) stands in for Cloud Storage, reached through the same clients a real bucket uses (gcsfs
for files, tensorstore's gcs driver for orbax's arrays, google-cloud-storage for TensorBoard events).

Each gs:// result is compared with the same work done on a local directory."""

import gc
import http.server
import json
import logging
import os
import socket
import types
from pathlib import Path

import jax
import numpy as np
import pytest


# gcsfs reads this when imported: without it, it probes each bucket's type over gRPC, which the emulator does not
# serve (a 60 s timeout per bucket)
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
pytest.importorskip("gcsfs", reason="gs:// needs the [gcs] extra (installed by [dev])")
emulator = pytest.importorskip("gcp_storage_emulator.server", reason="the offline GCS emulator is a [dev] dependency")

BUCKET = "tooln1-test"


class _Server(http.server.ThreadingHTTPServer):
    """The emulator's server, one thread per connection: its own single-threaded one serves one kept-alive
    client at a time, and a run has three (gcsfs, tensorstore, TensorBoard's google-cloud-storage)."""

    daemon_threads = True

    def handle_error(self, request, client_address):  # clients hanging up at exit are not errors here
        pass


def _with_generation_headers(download):
    """The emulator's media download, plus the x-goog-generation header real GCS sends: tensorstore (orbax's
    array store) reads an object's generation from it and fails with "Malformed StorageGeneration" without."""

    def handler(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        if response.status.value < 300:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = obj["generation"]
            response["x-goog-metageneration"] = obj["metageneration"]

    return handler


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bucket():
    """gs://BUCKET, served by an in-memory emulator for this module; a client lists its objects."""
    port = _free_port()
    url = f"http://localhost:{port}"
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")}
    os.environ.update(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url)
    logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
    emulator.server = types.SimpleNamespace(HTTPServer=_Server)  # the name APIThread.run builds its server from
    from gcp_storage_emulator.handlers import objects

    download = objects.download
    objects.download = _with_generation_headers(download)  # objects.get (?alt=media) looks it up at call time
    emulator.HANDLERS = tuple((route, {method: objects.download if fn is download else fn for method, fn in fns.items()})
                              for route, fns in emulator.HANDLERS)
    server = emulator.create_server("localhost", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    import gcsfs

    store = gcsfs.GCSFileSystem(endpoint_url=url, token="anon")  # noqa: S106 - the emulator takes anyone
    yield f"gs://{BUCKET}", store
    gc.collect()  # TensorBoard's GCS writers upload once more when collected: while the emulator still serves
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_prepared_data_and_evaluation_outputs_on_gs_equal_local_ones(bucket, tmp_path):
    root, store = bucket
    from tooln1_jax import assets
    from tooln1_jax.data import loading, prepare
    from tooln1_jax.eval import benchmarks, datasets

    sources = {"xlam": prepare.shipped_samples()["xlam"]}
    prepare.run(sources, str(tmp_path / "data"))
    prepare.run(sources, f"{root}/data")
    assert sorted(p.rsplit("/", 1)[1] for p in store.ls(f"{BUCKET}/data")) == sorted(
        p.name for p in (tmp_path / "data").iterdir())
    tokenizer = assets.load_tokenizer(None)
    for split in ("train", "test"):
        assert loading.load_records(f"{root}/data", split, tokenizer) == loading.load_records(
            str(tmp_path / "data"), split, tokenizer)

    examples = datasets.load("bfcl", ["simple"], limit=3)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"id": e.id, "reply": "no call"}) + "\n" for e in examples))
    benchmarks.score_predictions("bfcl", tmp_path / "p.jsonl", limit=3, out=tmp_path / "eval")
    benchmarks.score_predictions("bfcl", tmp_path / "p.jsonl", limit=3, out=f"{root}/eval")
    for name in ("results.jsonl", "summary.json", "summary.md"):
        assert store.cat(f"{BUCKET}/eval/{name}").decode() == (tmp_path / "eval" / name).read_text()


@pytest.mark.slow
def test_a_grpo_run_on_gs_resumes_into_the_run_it_would_have_been_locally(bucket, tmp_path):
    """Four steps in a local directory equal two on gs:// plus two resumed there: checkpoints (orbax through
    tensorstore), metrics, the log file and the plots all live in the bucket."""
    root, store = bucket
    from test_metrics import read_event_scalars
    from train_helpers import comparable, tiny_config, trainer

    from tooln1_jax import checkpoint

    def run(steps, run_dir, resume=False):
        t = trainer(tiny_config(f"train.steps={steps}", "checkpoint.every=2", "checkpoint.async_save=true"), run_dir,
                    resume=resume)
        history = t.run(progress=False)
        t.close()
        return history

    local = run(4, str(tmp_path / "local"))
    first = run(2, f"{root}/run")
    assert sorted(p.rsplit("/", 1)[1] for p in store.ls(f"{BUCKET}/run/checkpoints")) == ["2"]
    resumed = run(4, f"{root}/run", resume=True)
    assert [comparable(m) for m in first + resumed] == [comparable(m) for m in local]

    _, want = checkpoint.load_model(tmp_path / "local")
    _, got = checkpoint.load_model(f"{root}/run")
    for x, y in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    lines = [comparable(json.loads(line)) for line in store.cat(f"{BUCKET}/run/metrics.jsonl").decode().splitlines()]
    assert lines == [comparable(json.loads(line)) for line in (tmp_path / "local/metrics.jsonl").read_text().splitlines()]
    log = store.cat(f"{BUCKET}/run/run.log").decode()  # both runs' lines, the second's appended
    assert log.count(" grpo: jax ") == 2 and "resumed gs://tooln1-test/run at step 2" in log, log
    assert store.exists(f"{BUCKET}/run/reward.png")
    events = tmp_path / "events"  # one events file per run, copied into the bucket
    events.mkdir()
    for name in store.ls(f"{BUCKET}/run/tensorboard"):
        (events / name.rsplit("/", 1)[1]).write_bytes(store.cat(name))
    assert len(list(events.iterdir())) == 2
    scalars = read_event_scalars(events)
    assert {step for step, _ in scalars} == {1, 2, 3, 4}
    assert [scalars[(step, "loss")] for step in (1, 2, 3, 4)] == pytest.approx([m["loss"] for m in local])


def test_gs_paths_without_gcsfs_say_which_extra_to_install(monkeypatch):
    import importlib.util

    from tooln1_jax import paths

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gcsfs" else real(name, *a))
    with pytest.raises(ImportError, match=r"gs://b/run: .*tooln1-jax\[gcs\]"):
        paths.path("gs://b/run")
    with pytest.raises(ValueError, match="unsupported location ftp://"):
        paths.path("ftp://host/run")
    assert isinstance(paths.path("~/runs/x"), Path) and "~" not in str(paths.path("~/runs/x"))
