"""Run metrics: `metrics.jsonl` (one JSON object per logged step), TensorBoard scalars (tensorboardX, no
TensorFlow) and/or a Weights & Biases run (scalars and a table of samples), sample replies in `samples.jsonl`, and
PNG plots. Pure Python + numpy (values may be jax scalars).

Resuming: `MetricsLogger(run_dir, resume_step=k)` first drops the lines with step > k from both files (the steps
the interrupted run logged after its last checkpoint), so the resumed run's files equal an uninterrupted run's.
TensorBoard event files are append-only: after a resume TensorBoard may show those steps twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tooln1_jax import files, paths
from tooln1_jax.files import strict_json

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
TENSORBOARD_DIR = "tensorboard"

logger = logging.getLogger(__name__)


class MetricsLogger:
    """Writes `run_dir/metrics.jsonl` ({"step": step, **metrics} per line, flushed) and, with `log_samples`,
    `run_dir/samples.jsonl`. `tensorboard`: True = required, False = off, None = on when tensorboardX imports.
    `resume_step`: the step of the checkpoint a resumed run starts from (see the module docstring); without it
    the files are appended to, and logging a step below one already in a file is an error."""

    def __init__(self, run_dir: str | os.PathLike, *, tensorboard: bool | None = None, wandb: dict | None = None,
                 resume_step: int | None = None):
        self.run_dir = paths.path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = _StepFile(self.run_dir / METRICS_FILE, resume_step)
        self._samples = _StepFile(self.run_dir / SAMPLES_FILE, resume_step)
        board = _open_tensorboard(self.run_dir / TENSORBOARD_DIR, tensorboard)
        self._wandb = _WandB(self.run_dir, **wandb) if wandb is not None else None
        self._sinks = [sink for sink in (board, self._wandb) if sink is not None]  # each line also goes there

    def log(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Append one line {"step": step, **metrics}; values are scalars (Python, numpy or jax). Returns it."""
        record = {"step": _check_step(step)}
        for key, value in metrics.items():
            if not isinstance(key, str) or key == "step":
                raise ValueError(f"metrics: bad metric name {key!r} (a string other than 'step' is needed)")
            record[key] = _scalar(key, value)
        self._metrics.append(step, record)
        for sink in self._sinks:
            sink.write(step, record)
        return record

    def log_samples(self, step: int, samples: Iterable[Mapping[str, Any]]) -> None:
        """Append one line {"step": step, **sample} per sample (e.g. prompt id, reply, reward)."""
        samples = list(samples)
        for i, sample in enumerate(samples):
            if "step" in sample:
                raise ValueError(f"samples: sample {i} of step {step} has its own 'step' key")
            self._samples.append(step, {"step": _check_step(step), **sample})
        if self._wandb is not None and samples:
            self._wandb.write_samples(step, samples)

    def close(self) -> None:
        self._metrics.close()
        self._samples.close()
        for sink in self._sinks:
            sink.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(run_dir_or_path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (or of `run_dir/metrics.jsonl`); also reads samples.jsonl.

    A last line cut short by an interrupted write is skipped with a warning; any other bad line is an error.
    """
    path = paths.path(run_dir_or_path)
    if path.is_dir():
        path = path / METRICS_FILE
    return [record for _, record in _read_lines(path)]


def plot(run_dir_or_metrics_path: str | os.PathLike, out_png: str | os.PathLike,
         keys: tuple[str, ...] = ("reward/mean", "kl")) -> Path:
    """Plot each metric in `keys` against the step, one panel per key, into a PNG. Returns its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = paths.path(run_dir_or_metrics_path)
    if path.is_dir():
        path = path / METRICS_FILE
    records = read_metrics(path)
    available = sorted({key for record in records for key in record} - {"step"})
    missing = [key for key in keys if key not in available]
    if not keys or missing:
        raise ValueError(f"plot: {path} has no values for {missing or 'no keys given'}; it has {available}")

    fig = Figure(figsize=(7, 2.4 * len(keys)), constrained_layout=True)
    FigureCanvasAgg(fig)  # attaches itself to the figure; no pyplot, no global backend change
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys):
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        bad = [step for step, value in points if not isinstance(value, (int, float))]
        if bad:
            raise ValueError(f"plot: {path}: {key!r} is not a number at step {bad[0]}")
        steps, values = zip(*points)
        ax.plot(steps, values, marker="." if len(points) < 50 else None)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    fig.suptitle(path.parent.name or str(path))
    out_png = paths.path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with out_png.open("wb") as f:
        fig.savefig(f, format="png", dpi=100)
    return out_png


# ---------------------------------------------------------------------------------------------------------------


class _StepFile:
    """An append-only JSONL file of records with non-decreasing "step", truncated to resume_step when opened."""

    def __init__(self, path, resume_step: int | None):
        self.path = path
        self.last_step: int | None = None
        self._file = files.AppendFile(path)
        text = self._file.read()
        if not text:
            return
        lines = _read_lines(path, text)
        kept = [(line, rec) for line, rec in lines if resume_step is None or rec["step"] <= resume_step]
        dropped = len(lines) - len(kept)
        if dropped:
            logger.info("%s: resuming at step %d, dropped %d lines of later steps", path, resume_step, dropped)
        new_text = "".join(line + "\n" for line, _ in kept)
        if new_text != text:  # a torn tail or dropped steps: rewrite atomically
            self._file.replace(new_text)
        self.last_step = kept[-1][1]["step"] if kept else None

    def append(self, step: int, record: Mapping[str, Any]) -> None:
        if self.last_step is not None and step < self.last_step:
            raise ValueError(f"{self.path}: step {step} logged after step {self.last_step}; "
                             "when resuming a run pass resume_step so later lines are dropped first")
        self._file.write(strict_json(record, default=_json_default) + "\n")  # NaN/Infinity -> null
        self._file.flush()
        self.last_step = step

    def close(self) -> None:
        self._file.close()


def _read_lines(path, text: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) pairs of a JSONL file whose records each carry an integer "step"."""
    if text is None:
        text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    torn = lines.pop()  # "" when the file ends with a newline, else a line cut short
    if torn:
        warnings.warn(f"{path}: line {len(lines) + 1} is incomplete (an interrupted write?); ignored", stacklevel=3)
    out = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or type(record.get("step")) is not int:  # JSON gives int, not bool
            raise ValueError(f"{path}:{number}: expected a JSON object with an integer 'step', got {line[:80]!r}")
        out.append((line, record))
    return out


def _check_step(step: Any) -> int:
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"metrics: step must be a non-negative integer, got {step!r}")
    return int(step)


def _scalar(key: str, value: Any) -> int | float | bool:
    """A JSON-ready Python scalar from a Python/numpy/jax scalar; float32 values keep their short repr."""
    if isinstance(value, (bool, int, float)):
        return value
    array = np.asarray(value)
    if array.shape != () or array.dtype.kind not in "biuf":
        raise ValueError(f"metrics: {key!r} must be a numeric scalar, got {type(value).__name__} "
                         f"of shape {array.shape} and dtype {array.dtype}")
    item = array.item()
    if array.dtype.kind == "f" and array.dtype.itemsize < 8 and math.isfinite(item):
        return float(str(array))  # 0.1 (float32) -> 0.1, not 0.10000000149011612
    return item


def _json_default(value: Any) -> Any:
    array = np.asarray(value)
    if array.dtype.kind in "biuf":
        return array.tolist()
    raise TypeError(f"samples: cannot write a {type(value).__name__} as JSON")


class _TensorBoard:
    """Scalars as TensorBoard event files, written by tensorboardX (no TensorFlow). For an object-store run
    directory the events are written to a local folder and copied over at most every MIRROR_SECS and on close
    (tensorboardX's own gs:// writer uploads again whenever it is garbage-collected, even after close)."""

    MIRROR_SECS = 30.0

    def __init__(self, logdir):
        from tensorboardX import SummaryWriter

        self._remote = paths.path(logdir) if paths.is_remote(logdir) else None
        self._local = Path(tempfile.mkdtemp(prefix="tooln1-tensorboard-")) if self._remote else Path(logdir)
        self._writer = SummaryWriter(str(self._local), flush_secs=30)
        self._mirrored_at = 0.0

    def write(self, step: int, record: Mapping[str, Any]) -> None:
        for key, value in record.items():
            if key != "step" and value is not None:
                self._writer.add_scalar(key, float(value), step)
        self._writer.flush()
        if self._remote is not None and time.monotonic() - self._mirrored_at >= self.MIRROR_SECS:
            self._mirror()

    def _mirror(self) -> None:
        self._remote.mkdir(parents=True, exist_ok=True)
        for events in self._local.iterdir():  # a resumed run adds a file of its own, never rewrites an older one
            (self._remote / events.name).write_bytes(events.read_bytes())
        self._mirrored_at = time.monotonic()

    def close(self) -> None:
        self._writer.close()
        if self._remote is not None:
            self._mirror()
            shutil.rmtree(self._local, ignore_errors=True)


def _open_tensorboard(logdir, wanted: bool | None) -> _TensorBoard | None:
    if wanted is False:
        return None
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        if wanted:
            raise ImportError("MetricsLogger(tensorboard=True) needs tensorboardX: pip install tensorboardX") from None
        logger.warning("tensorboardX not installed: TensorBoard logging off (metrics.jsonl only)")
        return None
    return _TensorBoard(logdir)


class _WandB:
    """Scalars and a table of sample replies in a Weights & Biases run; the run id is kept in run_dir/wandb_id so
    a resumed training run continues the same W&B run."""

    def __init__(self, run_dir, project: str, name: str | None = None, config: dict | None = None):
        try:
            import wandb
        except ImportError:
            raise ImportError("train.report_to includes wandb: pip install 'tooln1-jax[wandb]'") from None
        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        self._wandb = wandb
        local_dir = None if paths.is_remote(run_dir) else str(run_dir)  # wandb's own files need a local disk
        self._run = wandb.init(project=project, id=run_id, resume="allow", dir=local_dir, name=name,
                               config=config)

    def write(self, step: int, record: Mapping[str, Any]) -> None:
        self._run.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=step)

    def write_samples(self, step: int, samples: list[Mapping[str, Any]]) -> None:
        columns = list(dict.fromkeys(key for sample in samples for key in sample))
        table = self._wandb.Table(columns=["step", *columns])
        for sample in samples:
            table.add_data(step, *(sample.get(key) for key in columns))
        self._run.log({"samples": table}, step=step)

    def close(self) -> None:
        self._run.finish()
