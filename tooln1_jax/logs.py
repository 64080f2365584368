"""The one logging set-up of the command-line entry points (and the format run.log files use)."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging() -> None:
    """INFO to stderr in LOG_FORMAT; orbax's per-file INFO lines (logged through absl) are kept out."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("absl").setLevel(logging.WARNING)
