"""Run directories, checkpoints, prepared data and evaluation outputs on gs://, offline: a local GCS emulator
(gcp-storage-emulator) stands in for Cloud Storage, reached through the same clients a real bucket uses (gcsfs
for files, tensorstore's gcs driver for orbax's arrays, google-cloud-storage for TensorBoard events).

Each gs:// result is compared with the same work done on a local directory."""

import http.server
import json
import logging
import os
import socket
import types
from pathlib import Path

import pytest


pytest.importorskip("gcsfs", reason="gs:// needs the [gcs] extra (installed by [dev])")
emulator = pytest.importorskip("gcp_storage_emulator.server", reason="the offline GCS emulator is a [dev] dependency")

BUCKET = "tooln1-test"


class _Server(http.server.ThreadingHTTPServer):
    """The emulator's server, one thread per connection: its own single-threaded one serves one kept-alive
    client at a time, and a run has three (gcsfs, tensorstore, TensorBoard's google-cloud-storage)."""

    daemon_threads = True

    def handle_error(self, request, client_address):  # clients hanging up at exit are not errors here
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bucket():
    """gs://BUCKET, served by an in-memory emulator for this module; a client lists its objects."""
    port = _free_port()
    url = f"http://localhost:{port}"
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
                                            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")}
    os.environ.update(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
                      GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")  # no zonal-bucket probe (a real-GCS-only API)
    logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
    emulator.server = types.SimpleNamespace(HTTPServer=_Server)  # the name APIThread.run builds its server from
    server = emulator.create_server("localhost", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    import gcsfs

    store = gcsfs.GCSFileSystem(endpoint_url=url, token="anon")  # noqa: S106 - the emulator takes anyone
    yield f"gs://{BUCKET}", store
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.mark.slow  # about 160 s on 2 cores
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
