"""The console log of every command: ``[alignkit] message`` lines on stderr, through the ``alignkit`` logger."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("alignkit")


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each record (a caller that redirects or replaces stderr after
    logging was set up, as pytest's capture does, never leaves the handler on a closed stream)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_console_logging(level: int = logging.INFO) -> None:
    if not logger.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("[alignkit] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
