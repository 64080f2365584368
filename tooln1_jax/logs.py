"""The one logging set-up of the command-line entry points (and the format run.log files use)."""

from __future__ import annotations

import logging
import sys
import time

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging() -> None:
    """INFO to stderr in LOG_FORMAT; orbax's per-file INFO lines (logged through absl) are kept out."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("absl").setLevel(logging.WARNING)


PROGRESS_INTERVAL_S = 30.0


class LoggedProgress:
    """tqdm's `update` / `set_postfix` / `close` interface that writes an INFO line (count, elapsed, estimated time left
    and the postfix) at most every `interval_s` seconds and at the end: progress a log file can show. `initial` is
    where a resumed count starts; the time left is estimated from the units done since."""

    def __init__(self, total: int, desc: str, unit: str, interval_s: float = PROGRESS_INTERVAL_S, initial: int = 0):
        self.total, self.desc, self.unit, self.interval_s = total, desc, unit, interval_s
        self.n = self._initial = initial
        self._postfix = ""
        self._start = self._last = time.monotonic()
        self._log = logging.getLogger("tooln1_jax.progress")

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval_s or self.n >= self.total:
            self._last = now
            self._write(now)

    def set_postfix(self, values: dict) -> None:
        """Shown after the counts on the next line written (tqdm's set_postfix with a dict)."""
        self._postfix = ", ".join(f"{key} {value}" for key, value in values.items())

    def _write(self, now: float) -> None:
        elapsed = now - self._start
        done = self.n - self._initial
        left = elapsed / done * (self.total - self.n) if done else float("nan")
        self._log.info("%s: %d/%d %ss, %.0f s elapsed, ~%.0f s left%s", self.desc, self.n, self.total, self.unit,
                       elapsed, left, f" ({self._postfix})" if self._postfix else "")

    def close(self) -> None:
        pass

    def __enter__(self) -> "LoggedProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _in_notebook_kernel() -> bool:
    """True inside a Jupyter kernel (its IPython shell has a kernel); importing ipykernel alone, as a notebook runner
    in the same process does, is not enough."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and getattr(shell, "kernel", None) is not None


def progress(total: int, desc: str, unit: str, file=None, initial: int = 0, disable: bool = False):
    """A progress bar over `total` units (counting from `initial`): tqdm's on a terminal or in a notebook; elsewhere
    (stderr redirected to a log file, where tqdm would write carriage-return redraws) a LoggedProgress. `disable`
    gives a bar that shows nothing (other hosts than the main one, progress turned off)."""
    from tqdm.auto import tqdm

    stream = file or sys.stderr
    if disable or _in_notebook_kernel() or (hasattr(stream, "isatty") and stream.isatty()):
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=file, disable=disable)
    return LoggedProgress(total, desc, unit, initial=initial)
