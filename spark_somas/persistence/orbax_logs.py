"""Quiets the copies of a failed save that Orbax's background threads print.

A save that fails on the file system (a full disk, a directory made
read-only) is raised once, by name, by
:meth:`~spark_somas.persistence.checkpointing.Checkpointer.wait` or ``close``.
Orbax's writer threads report the same failure again where nothing can catch
it: asyncio logs "<Task|Future|_GatheringFuture> exception was never
retrieved" for each background write, and TensorStore's write callbacks meet
an event loop already closed (``RuntimeError: Event loop is closed``, raised
by asyncio's ``_check_closed`` on a thread with no caller), which Python
prints as unraisable — dozens of tracebacks per failed save.
:func:`quiet_failed_saves` drops exactly those copies for the directories it
is given; every other log record and unraisable exception passes through.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

__all__ = ["quiet_failed_saves"]


class _FailedSaveReports(logging.Filter):
    """Drops asyncio's "… exception was never retrieved" records that name
    one of ``directories``."""

    def __init__(self) -> None:
        super().__init__()
        # replaced, never mutated: Orbax's threads may read it while one is added
        self.directories: frozenset[str] = frozenset()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.partition("\n")[0].endswith(" exception was never retrieved"):
            return True
        return not any(directory in message for directory in self.directories)


class _ClosedLoopReports:
    """A ``sys.unraisablehook`` that drops ``RuntimeError: Event loop is
    closed`` raised in asyncio's ``_check_closed`` and hands every other
    unraisable exception to the hook that was there before."""

    def __init__(self, previous: Callable[[Any], None]) -> None:
        self.previous = previous

    def __call__(self, unraisable: Any) -> None:
        tb = unraisable.exc_traceback
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if not (unraisable.exc_type is RuntimeError and tb is not None
                and tb.tb_frame.f_code.co_name == "_check_closed"
                and str(unraisable.exc_value) == "Event loop is closed"):
            self.previous(unraisable)


#: The one filter; ``addFilter`` adds it to asyncio's logger once.
_FAILED_SAVE_REPORTS = _FailedSaveReports()


def quiet_failed_saves(directory: str) -> None:
    """Drops the thread-side copies of a failed save into ``directory`` (see
    the module's docstring) from now on; the failure itself is still raised
    by the caller that waits for the save."""
    _FAILED_SAVE_REPORTS.directories |= {os.path.abspath(directory)}
    logging.getLogger("asyncio").addFilter(_FAILED_SAVE_REPORTS)
    if not isinstance(sys.unraisablehook, _ClosedLoopReports):
        sys.unraisablehook = _ClosedLoopReports(sys.unraisablehook)
