"""The refusals and warnings of checkpointing, in one place.

Every refusal is a :class:`CheckpointError`, a ``ValueError`` and a
:class:`~spark_somas.errors.SparkSomasError`; each concrete class also derives
from the builtin a caller would expect (a missing step is a
``FileNotFoundError``, an unwritable directory a ``PermissionError``).
"""

from __future__ import annotations

from spark_somas.errors import SparkSomasError

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointCorruptError",
    "CheckpointMismatchError",
    "CheckpointExistsError",
    "CheckpointNotWritableError",
    "UnrecordedMethodWarning",
    "IncompleteStepWarning",
]


class CheckpointError(SparkSomasError, ValueError):
    """A checkpoint cannot be written or read as asked; the message says why."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint directory, or the requested step in it, does not exist."""


class CheckpointCorruptError(CheckpointError):
    """A step exists but cannot be read: missing files, garbled metadata or arrays."""


class CheckpointMismatchError(CheckpointError):
    """The saved model and the target differ; names the field and both values."""


class CheckpointExistsError(CheckpointError, FileExistsError):
    """The step is already saved; a checkpoint is never overwritten."""


class CheckpointNotWritableError(CheckpointError, PermissionError):
    """The directory cannot be created or written by this process, or a
    save to it failed on the file system."""


class UnrecordedMethodWarning(UserWarning):
    """A checkpoint of release 0.1.0 records no integration method: the
    somas take the one named in the warning, unchecked."""


class IncompleteStepWarning(UserWarning):
    """:meth:`~spark_somas.persistence.checkpointing.Checkpointer.list`
    (``describe``, ``spark-somas checkpoints``) skipped a step whose metadata
    file is missing — a deletion or a write cut short (``kill -9``, a power
    cut), or files removed by hand —; the warning names it. Reading that
    step raises :class:`CheckpointCorruptError`."""
