"""Stopping a run cleanly on SIGTERM / SIGINT (a preempted VM, `kill`, Ctrl-C).

The handler only records the signal; the training loop asks `requested(step)` at safe points (between steps, and
inside a GRPO step before its first update) and then stops: the step in flight is finished or abandoned, a
checkpoint of the last finished step is written and waited for, and the process exits with `EXIT_INTERRUPTED`.
A second Ctrl-C interrupts at once (the default handler is back after the first signal).

Several hosts must stop at the same step: `requested` is then a collective (every host calls it at the same
point). It is true when any host got a signal, or when JAX's preemption service (Cloud TPU maintenance events,
`jax.distributed` with the coordination service) reports a sync point.
"""

from __future__ import annotations

import logging
import signal
import threading

import jax
import numpy as np

log = logging.getLogger(__name__)

# Exit status of a run stopped by a signal after saving its last finished step: continue it with --resume.
# (75 = EX_TEMPFAIL, "try again later"; distinct from a crash (1), bad input (2) and a kill (128 + signal).)
EXIT_INTERRUPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    """Context manager: installs the handlers (main thread only) and restores the previous ones on exit."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        log.warning("%s: stopping after the current step (a second one interrupts at once)",
                    signal.Signals(signum).name)
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    def requested(self, step: int) -> bool:
        """Whether to stop now; on several hosts a collective that gives every host the same answer."""
        local = self.signum is not None
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        flags = np.asarray(multihost_utils.process_allgather(np.array([local], np.int32)))
        stop = bool(flags.any())
        try:
            stop = multihost_utils.reached_preemption_sync_point(step) or stop
        except Exception:  # noqa: BLE001 - no preemption service on this platform (it raises RuntimeError)
            pass
        if stop and self.signum is None:
            self.signum = signal.SIGTERM  # another host was signalled (or the platform preempts us)
        return stop
