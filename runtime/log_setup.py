"""The ``solidx`` library logger: one stderr handler, set up once per process (on import of
``solidx.runtime``, and by the ``solidx`` command), at the level ``SOLIDX_LOG_LEVEL`` names.

It never clobbers a user's logging: nothing is set up when the ``solidx`` logger already has a
level or handlers or the root logger has handlers (``logging.basicConfig`` before the import),
and the handler stays silent while the root logger has handlers of its own (a set-up made
after the import: the records reach those through propagation instead). The level stays
``SOLIDX_LOG_LEVEL``'s unless you set the ``solidx`` logger's.
"""
from __future__ import annotations

import logging
import sys

from solidx.runtime import envs

LOGGER_NAME = "solidx"
FORMAT = "%(levelname)s %(name)s: %(message)s"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` unless the root logger has handlers."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return  # the user's own handlers print it (propagation)
        self.stream = sys.stderr
        super().emit(record)


def log_level() -> int:
    """The level ``SOLIDX_LOG_LEVEL`` names; ValueError naming the variable when it is none."""
    name = str(envs.SOLIDX_LOG_LEVEL).strip().upper()
    if name not in LEVELS:
        raise ValueError(
            f"SOLIDX_LOG_LEVEL={name!r} is not a log level (one of {', '.join(LEVELS)})"
        )
    return logging.getLevelName(name)


def setup_logging(strict: bool = True) -> None:
    """Give the ``solidx`` logger its handler and level, once. A bad ``SOLIDX_LOG_LEVEL`` raises
    ValueError when ``strict``, else logs a warning and uses INFO."""
    logger = logging.getLogger(LOGGER_NAME)
    try:
        level, problem = log_level(), None
    except ValueError as exc:
        if strict:
            raise
        level, problem = logging.INFO, f"{exc}; using INFO"
    if any(isinstance(h, _StderrHandler) for h in logger.handlers):
        return
    if logger.handlers or logger.level != logging.NOTSET or logging.getLogger().handlers:
        return  # the user configured logging: theirs decides
    logger.setLevel(level)
    logger.addHandler(_StderrHandler())
    if problem:
        logger.warning(problem)
