"""Training loggers that plug into :func:`spark_somas.training.fit`.

``fit`` keeps its history — a dict of equal-length lists, one entry per
epoch (``epoch`` counts completed epochs from 1; ``train_loss``,
``test_accuracy``, ``seconds``, …) — and calls every epoch hook as

    hook(fit, epoch, history)

after every epoch: ``fit`` the run's state (``fit.model``,
``fit.optimizer``), ``epoch`` the 0-based index of the epoch just finished
and ``history`` holding every epoch so far (a resumed run's included) — the
arguments of a callback's ``on_epoch_end``. Any callable of that signature
is a logger, given as ``fit(..., on_epoch_end=logger)``; the ones here:

* :class:`JsonLinesLogger` appends one JSON object per epoch to a file
  (the epoch's entry of every history key), which ``pandas.read_json(path,
  lines=True)`` or ``jq`` read directly.
* :class:`TensorBoardLogger` writes TensorBoard event files with
  tensorboardX (no TensorFlow needed; ``pip install
  "spark_somas[tensorboard]"``): every numeric history key as a scalar at
  step = completed epochs, tagged ``train/loss``, ``test/accuracy``,
  ``seconds``…, and optionally a histogram of every trained parameter
  (weights and per-neuron values such as ``hidden/threshold``).
* :func:`chain` runs several hooks in order (e.g. a checkpoint and a logger).

Other services take three lines; for Weights & Biases::

    import wandb
    run = wandb.init(project="somas")
    def to_wandb(fit, epoch, history):
        run.log(last_entry(history), step=history["epoch"][-1])

    fit(..., on_epoch_end=chain(to_wandb, JsonLinesLogger(path)))

A function of the first release's form ``hook(epoch, model, optimizer,
history)`` still runs (:func:`current_form`), with a ``DeprecationWarning``.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = ["EpochHook", "last_entry", "scalar_tags", "chain", "older_form", "current_form",
           "JsonLinesLogger", "TensorBoardLogger"]

EpochHook = Callable[[Any, int, Mapping[str, Sequence[Any]]], Any]
"""``hook(fit, epoch, history)`` as ``fit`` calls it after each epoch."""

_SPLITS = ("train", "test", "validation")


def _plain(value: Any) -> Any:
    """A JSON-ready Python value: NumPy/JAX scalars become int/float/bool."""
    if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, "__array__"):
        array = np.asarray(value)
        return array.item() if array.ndim == 0 else array.tolist()
    return value


def last_entry(history: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """The latest epoch's entry of every non-empty history key, as plain
    Python values."""
    return {key: _plain(values[-1]) for key, values in history.items() if len(values)}


def _step(epoch: int, history: Mapping[str, Sequence[Any]]) -> int:
    epochs = history.get("epoch")
    return int(epochs[-1]) if epochs is not None and len(epochs) else epoch + 1


def scalar_tags(history: Mapping[str, Sequence[Any]]) -> dict[str, float]:
    """The latest finite numbers of ``history`` under TensorBoard tags: a key
    ``<split>_<metric>`` with split train, test or validation becomes
    ``<split>/<metric>`` (charts grouped by split); other keys keep their
    name. ``epoch`` itself (the step) and non-numeric or non-finite entries
    are left out."""
    tags = {}
    for key, value in last_entry(history).items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            continue
        split, _, metric = key.partition("_")
        tags[f"{split}/{metric}" if split in _SPLITS and metric else key] = float(value)
    return tags


def older_form(hook: Callable) -> bool:
    """Whether ``hook`` has the first release's form (epoch, model,
    optimizer, history): exactly four positional parameters, no ``*args``."""
    try:
        params = inspect.signature(hook).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: the current form
        return False
    kinds = [p.kind for p in params]
    positional = [k for k in kinds if k in (inspect.Parameter.POSITIONAL_ONLY,
                                            inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    return len(positional) == 4 and inspect.Parameter.VAR_POSITIONAL not in kinds


def current_form(hook: Callable) -> EpochHook:
    """``hook`` as a function of ``(fit, epoch, history)``, decided once: a
    hook of the older form is wrapped to get ``(epoch, fit.model,
    fit.optimizer, history)``; any other is returned as it is."""
    if not older_form(hook):
        return hook

    def called_as_before(fit, epoch, history):
        return hook(epoch, fit.model, fit.optimizer, history)

    return called_as_before


def chain(*hooks: Callable | None) -> EpochHook:
    """One epoch hook that calls each of ``hooks`` in order (``None``\\ s
    are skipped) and returns True (stop ``fit``) when any of them did."""
    given = [hook for hook in hooks if hook is not None]
    for hook in given:
        if older_form(hook):
            warnings.warn(f"{hook!r} takes (epoch, model, optimizer, history), the older form "
                          "of an epoch hook: give it (fit, epoch, history) (fit.model, "
                          "fit.optimizer)", DeprecationWarning, stacklevel=2)

    active = [current_form(hook) for hook in given]

    def on_epoch_end(fit, epoch, history):
        stops = [hook(fit, epoch, history) for hook in active]
        return any(stop is True for stop in stops)

    return on_epoch_end


class JsonLinesLogger:
    """Appends ``last_entry(history)`` as one JSON line per epoch to ``path``
    (parent folders are created). The file is opened in append mode at every
    epoch, so a resumed run continues the same file; ``fields`` (e.g. the
    run's name and settings) are written into every line."""

    def __init__(self, path: str | os.PathLike, *, fields: Mapping[str, Any] | None = None):
        self.path = os.fspath(path)
        self.fields = {key: _plain(value) for key, value in (fields or {}).items()}
        json.dumps(self.fields)  # refuse what cannot be written, now rather than after an epoch
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)

    def __call__(self, fit: Any, epoch: int, history: Mapping[str, Sequence[Any]]) -> None:
        record = {**self.fields, **last_entry(history)}
        record.setdefault("epoch", epoch + 1)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")


def _parameter_arrays(model: Any) -> dict[str, np.ndarray]:
    """Every ``nnx.Param`` of ``model`` by its path, named as checkpoints name it."""
    from flax import nnx

    from spark_somas.models.somas import named_leaves

    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {path: np.asarray(leaf) for path, leaf in named_leaves(params).items()}


class TensorBoardLogger:
    """Writes an event file under ``logdir`` for TensorBoard.

    Each call logs :func:`scalar_tags` of the history at step = completed
    epochs (``history["epoch"][-1]``) and flushes, so TensorBoard shows an
    epoch as soon as it ends. With ``histograms=True`` every ``nnx.Param``
    of the model is also logged as a histogram, tagged by its path in the
    model (``input/kernel``, ``hidden/threshold``, …). ``purge_step`` hides
    events of an earlier run at that step and later, for a run resumed
    from a checkpoint (pass ``start_epoch + 1``). Use it as a context
    manager, or call :meth:`close`, to release the file.
    """

    def __init__(self, logdir: str | os.PathLike, *, histograms: bool = False,
                 purge_step: int | None = None, flush_secs: int = 30):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ImportError('TensorBoardLogger needs tensorboardX: pip install '
                              '"spark_somas[tensorboard]"') from None
        self.logdir = os.fspath(logdir)
        self.histograms = histograms
        self.writer = SummaryWriter(self.logdir, purge_step=purge_step, flush_secs=flush_secs)

    def __call__(self, fit: Any, epoch: int, history: Mapping[str, Sequence[Any]]) -> None:
        step = _step(epoch, history)
        for tag, value in scalar_tags(history).items():
            self.writer.add_scalar(tag, value, step)
        if self.histograms:
            for tag, values in _parameter_arrays(fit.model).items():
                if values.size and np.isfinite(values).all():
                    self.writer.add_histogram(tag, values.astype(np.float64), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> "TensorBoardLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
