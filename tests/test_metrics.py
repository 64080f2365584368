"""metrics.jsonl / samples.jsonl writing and resuming, the TensorBoard switch, and plots."""

import json
import logging
import struct
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.image import imread

from tooln1_jax.train import metrics
from tooln1_jax.train.metrics import MetricsLogger


def fake_step(step):
    """What a training step might log: Python, numpy and jax scalars."""
    return {"reward/mean": np.float32(step / 10), "kl": jnp.float32(step * 1e-3), "tokens": np.int64(100 + step),
            "lr": 1e-6}


def run(run_dir, steps, resume_step=None):
    with MetricsLogger(run_dir, tensorboard=False, resume_step=resume_step) as log:
        for step in steps:
            log.log(step, fake_step(step))
            log.log_samples(step, [{"id": f"p{step}", "reply": "<think>..</think>", "reward": np.float32(1.0)}])


def test_lines_are_json_objects_with_python_scalars(tmp_path):
    run(tmp_path, [1, 2])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"step": 1, "reward/mean": 0.1, "kl": 0.001, "tokens": 101, "lr": 1e-6}
    assert metrics.read_metrics(tmp_path) == [json.loads(line) for line in lines]
    samples = metrics.read_metrics(tmp_path / "samples.jsonl")
    assert samples == [{"step": s, "id": f"p{s}", "reply": "<think>..</think>", "reward": 1.0} for s in (1, 2)]


def test_resumed_run_files_equal_an_uninterrupted_run(tmp_path):
    run(tmp_path / "straight", range(1, 7))
    # interrupted after logging step 5, last checkpoint at step 3: the resumed run repeats 4 and 5
    run(tmp_path / "resumed", range(1, 6))
    run(tmp_path / "resumed", range(4, 7), resume_step=3)
    for name in ("metrics.jsonl", "samples.jsonl"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()


def test_appending_without_resume_keeps_lines_and_refuses_going_back(tmp_path):
    run(tmp_path, [1, 2])
    run(tmp_path, [3])
    assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [1, 2, 3]
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        with pytest.raises(ValueError, match="step 1 logged after step 3.*resume_step"):
            log.log(1, {"kl": 0.0})


def test_torn_last_line_is_dropped_with_a_warning_and_bad_lines_are_errors(tmp_path):
    run(tmp_path, [1, 2])
    path = tmp_path / "metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 3, "kl": 0.0')  # a crash mid-write
    with pytest.warns(UserWarning, match="line 3 is incomplete"):
        run(tmp_path, [3])
    assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [1, 2, 3]

    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not valid JSON"):
        metrics.read_metrics(path)
    path.write_text('{"step": 1}\n{"kl": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: expected a JSON object with an integer 'step'"):
        MetricsLogger(tmp_path, tensorboard=False)


def test_bad_values_are_errors_naming_the_key(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        with pytest.raises(ValueError, match="'loss' must be a numeric scalar.*shape \\(3,\\)"):
            log.log(1, {"loss": np.zeros(3)})
        with pytest.raises(ValueError, match="step must be a non-negative integer"):
            log.log(1.5, {"loss": 0.0})
        with pytest.raises(ValueError, match="bad metric name 'step'"):
            log.log(1, {"step": 2})
    assert not (tmp_path / "metrics.jsonl").exists()


def read_event_scalars(logdir) -> dict:
    """{(step, tag): value} from TensorBoard event files, read by hand: TFRecord framing (length u64, its crc,
    data, data crc) around Event protocol buffers."""
    from tensorboardX.proto import event_pb2

    seen = {}
    for path in logdir.iterdir():
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                seen[(event.step, value.tag)] = value.simple_value
    return seen


def test_tensorboard_scalars_without_tensorflow(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=True) as log:
        for step in (1, 2):
            log.log(step, fake_step(step))
    seen = read_event_scalars(tmp_path / "tensorboard")
    assert seen[(2, "reward/mean")] == pytest.approx(0.2) and seen[(1, "tokens")] == 101
    assert {step for step, _ in seen} == {1, 2}


def test_tensorboard_switch(tmp_path, caplog, monkeypatch):
    with MetricsLogger(tmp_path / "off", tensorboard=False) as log:
        log.log(1, fake_step(1))
    assert not (tmp_path / "off" / "tensorboard").exists()
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    with caplog.at_level(logging.WARNING, logger="tooln1_jax.train.metrics"):
        MetricsLogger(tmp_path, tensorboard=None).close()
    assert len(caplog.records) == 1 and "tensorboardX not installed" in caplog.records[0].getMessage()
    with pytest.raises(ImportError, match="pip install tensorboardX"):
        MetricsLogger(tmp_path, tensorboard=True)


def test_plot_writes_a_png_with_one_panel_per_key(tmp_path):
    run(tmp_path, range(1, 11))
    out = metrics.plot(tmp_path, tmp_path / "plots" / "reward.png")
    image = imread(out)
    assert image.shape[:2] == (2 * 240, 700)  # figsize (7, 2.4 per key) at 100 dpi
    assert (image[..., :3] < 0.9).any()  # something was drawn
    one = imread(metrics.plot(tmp_path / "metrics.jsonl", tmp_path / "kl.png", keys=("kl",)))
    assert one.shape[:2] == (240, 700)
    with pytest.raises(ValueError, match=r"no values for \['entropy'\]; it has \['kl', 'lr', 'reward/mean'"):
        metrics.plot(tmp_path, tmp_path / "x.png", keys=("kl", "entropy"))


def test_non_finite_values_are_written_as_null(tmp_path):
    import json as json_lib

    from tooln1_jax.train.metrics import MetricsLogger, read_metrics

    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(1, {"loss": float("nan"), "kl": np.float32("inf"), "reward/mean": 0.5})
        logger.log_samples(1, [{"reward": float("-inf"), "reply": "x"}])
    for name in ("metrics.jsonl", "samples.jsonl"):
        for line in (tmp_path / name).read_text().splitlines():
            json_lib.loads(line, parse_constant=lambda c: pytest.fail(f"{c} written to {name}"))
    assert read_metrics(tmp_path) == [{"step": 1, "loss": None, "kl": None, "reward/mean": 0.5}]
