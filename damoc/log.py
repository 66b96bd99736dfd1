"""Logging and progress bars, with one verbosity switch for the whole CLI (--quiet / --verbose)."""

from __future__ import annotations

import logging
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")
logger = logging.getLogger("damoc")
_quiet = False


def configure(verbosity: int = 0) -> None:
    """verbosity: -1 quiet (warnings only, no progress bars), 0 normal, 1 verbose (debug)."""
    global _quiet
    _quiet = verbosity < 0
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if verbosity > 0 else "%(message)s"
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def quiet() -> bool:
    return _quiet


def progress(iterable: Iterable[T] | None = None, *, desc: str, total: int | None = None, unit: str = "it"):
    """A tqdm progress bar on stderr, off under --quiet. Used by every stage that can take seconds."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=_quiet, file=sys.stderr,
                mininterval=0.5, delay=2.0, leave=False, dynamic_ncols=True)
