"""Hooks of :func:`spark_somas.training.loop.fit`: the :class:`Callback` protocol and the callbacks it runs.

``fit`` trains epoch after epoch; everything around that loop — the
progress bar, checkpoints, logging, stopping early — is a callback. Each
callback's hooks are called in the order of the list::

    on_fit_start(fit)                          once, before the first step
    on_batch_end(fit, epoch, index, metrics)   after each training batch run from Python
    on_epoch_end(fit, epoch, history) -> stop  after each epoch, trained, evaluated, recorded
    on_fit_end(fit)                            once, at the end, also when an error ends fit

``fit`` is the run's :class:`FitState` (model, optimizer, epochs,
batches per epoch, history); ``epoch`` the 0-based index of the epoch;
``metrics``
one batch's metrics (arrays on the device: ``loss``, ``accuracy``,
``rate_hz``, gradient norms, ``skipped``). An epoch on the device
(``fit(epoch_on_device=True)``) runs its batches in one program and calls
no ``on_batch_end``. ``on_epoch_end`` returning True stops ``fit`` after
that epoch, once every callback has seen it. A loss that is not finite
raises before any ``on_epoch_end`` of that epoch (so no checkpoint of it
is written); ``on_fit_end`` still runs, for every callback, so it must
cope with an ``on_fit_start`` that never ran.

**One convention.** Every epoch hook takes ``(fit, epoch, history)``: a
callback's ``on_epoch_end`` and the function ``fit(..., on_epoch_end=f)``
alike (``f`` returning True stops ``fit``, as a callback does). Epochs are
counted one way: ``epoch`` is the 0-based index of an epoch, as in
``range(epochs)``, ``start_epoch``, ``epoch_order`` and ``batch_key``; the
number of epochs done after it is ``epoch + 1``, which is what
``history["epoch"]`` records (1, 2, …), the step a :class:`Checkpoint`
saves and the ``start_epoch`` that resumes after it. A function of the
older form ``f(epoch, model, optimizer, history)`` (four parameters, the
first release's) given as
``on_epoch_end`` still runs, with a ``DeprecationWarning``.

``fit(..., callbacks=None)`` runs :func:`default_callbacks`: a
:class:`ProgressBar` (``progress=True``) and ``on_epoch_end`` when given.
A list replaces the defaults (``on_epoch_end``, when given, still runs
last); to add to them, pass ``[*default_callbacks(), MyCallback()]``.

To stop ``fit`` from outside — a signal handler, another thread — set the
``threading.Event`` of a :class:`StopOnRequest` (last in the list): ``fit``
ends at its next safe point, with every hook's work of the epochs before
whole, instead of an exception raised wherever the request arrives.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import warnings
from typing import Any, Callable, Mapping, Sequence

from spark_somas.errors import RuleError, RuleTypeError, require
from spark_somas.persistence.loggers import current_form, older_form

__all__ = ["FitState", "Callback", "EpochEnd", "ProgressBar", "Logger", "Checkpoint",
           "EarlyStopping", "StopOnRequest", "default_callbacks", "resolve_callbacks",
           "epoch_end_callback"]


@dataclasses.dataclass
class FitState:
    """What a :func:`~spark_somas.training.loop.fit` call shows its callbacks.

    Attributes:
      model, optimizer: what is trained (updated in place).
      epochs: this call trains epochs ``start_epoch`` … ``epochs − 1``.
      start_epoch: the first epoch of this call (> 0 for a resumed run).
      steps_per_epoch: training batches per epoch.
      epoch_on_device: whether each epoch runs as one compiled program.
      history: the dict ``fit`` returns, one entry per epoch appended
        before ``on_epoch_end`` (a resumed run's earlier epochs included).
      eval_split: the name of the split evaluated after each epoch,
        ``"test"`` or ``"validation"``: the history's ``<eval_split>_accuracy``.
    """

    model: Any
    optimizer: Any
    epochs: int
    start_epoch: int
    steps_per_epoch: int
    epoch_on_device: bool
    history: dict[str, list]
    eval_split: str = "test"


class Callback:
    """Base class of ``fit``'s callbacks: every hook does nothing; override
    the ones you need (see the module's docstring for when each runs)."""

    def on_fit_start(self, fit: FitState) -> None:
        """Before the first step."""

    def on_batch_end(self, fit: FitState, epoch: int, index: int,
                     metrics: Mapping[str, Any]) -> None:
        """After training batch ``index`` of ``epoch`` (the Python loop only)."""

    def on_epoch_end(self, fit: FitState, epoch: int,
                     history: Mapping[str, Sequence[Any]]) -> bool | None:
        """After ``epoch``; return True to stop ``fit`` after it."""
        return None

    def on_fit_end(self, fit: FitState) -> None:
        """At the end of ``fit``, however it ends."""


class EpochEnd(Callback):
    """Calls ``hook(fit, epoch, history)`` after every epoch, as
    ``fit(..., on_epoch_end=hook)`` does: the arguments of
    :meth:`Callback.on_epoch_end`, whose return value it passes on (True
    stops ``fit``). A logger of :mod:`spark_somas.persistence.loggers` (JSON
    lines, TensorBoard, a :func:`~spark_somas.persistence.loggers.chain` of
    several) is such a hook; ``close=True`` calls ``hook.close()`` when
    ``fit`` ends (a TensorBoard writer's file). A hook of the older form
    ``hook(epoch, model, optimizer, history)`` is called as such."""

    def __init__(self, hook: Callable[[FitState, int, Mapping[str, Sequence[Any]]], Any], *,
                 close: bool = False):
        require(callable(hook), "hook", hook, "a callable (fit, epoch, history)",
                error=RuleTypeError)
        self.hook, self.closes = hook, close
        self.call = current_form(hook)

    def on_epoch_end(self, fit: FitState, epoch: int, history: Mapping[str, Sequence[Any]]):
        return self.call(fit, epoch, history)

    def on_fit_end(self, fit: FitState) -> None:
        if self.closes:
            self.hook.close()


Logger = EpochEnd  # the first release's name of a logger's callback


def epoch_end_callback(hook: Callable) -> Callback:
    """The callback of ``fit(..., on_epoch_end=hook)``: an :class:`EpochEnd`
    for ``hook(fit, epoch, history)``, with a ``DeprecationWarning`` for a
    hook of the older form ``hook(epoch, model, optimizer, history)``."""
    require(callable(hook), "on_epoch_end", hook, "a callable (fit, epoch, history)",
            error=RuleTypeError)
    if older_form(hook):
        warnings.warn(
            "fit(on_epoch_end=f) with f(epoch, model, optimizer, history) is deprecated: give an "
            "f(fit, epoch, history) (fit.model, fit.optimizer; the arguments of "
            "Callback.on_epoch_end)", DeprecationWarning, stacklevel=4)
    return EpochEnd(hook)


class ProgressBar(Callback):
    """A tqdm bar of training steps (the Python loop) or of epochs (on the
    device) showing loss, accuracy and the hidden mean rate, refreshed every
    ``every`` steps and after each epoch (with the test accuracy).
    ``tqdm.auto`` (a notebook bar in Jupyter) is imported only when a bar
    is drawn: the import alone warns in a kernel without ipywidgets."""

    def __init__(self, every: int = 10):
        require(isinstance(every, int) and not isinstance(every, bool) and every >= 1, "every",
                every, "an int >= 1", error=RuleError)
        self.every, self.bar = every, None

    def on_fit_start(self, fit: FitState) -> None:
        from tqdm.auto import tqdm

        per_epoch = 1 if fit.epoch_on_device else fit.steps_per_epoch
        # A resumed run's bar counts the whole run, the epochs done before included.
        self.bar = tqdm(total=fit.epochs * per_epoch, initial=fit.start_epoch * per_epoch,
                        unit="epoch" if fit.epoch_on_device else "step", dynamic_ncols=True)

    def on_batch_end(self, fit: FitState, epoch: int, index: int,
                     metrics: Mapping[str, Any]) -> None:
        self.bar.update(1)
        if index % self.every == 0 or index == fit.steps_per_epoch - 1:
            self.bar.set_postfix(epoch=epoch + 1, loss=f"{float(metrics['loss']):.3f}",
                                 acc=f"{float(metrics['accuracy']):.3f}",
                                 rate=f"{float(metrics['rate_hz']):.1f}Hz", refresh=False)

    def on_epoch_end(self, fit: FitState, epoch: int, history: Mapping[str, Sequence[Any]]):
        if fit.epoch_on_device:
            self.bar.update(1)
        short = {"test": "test_acc", "validation": "val_acc"}[fit.eval_split]
        held = {short: f"{history[f'{fit.eval_split}_accuracy'][-1]:.3f}"}
        self.bar.set_postfix(epoch=epoch + 1, loss=f"{history['train_loss'][-1]:.3f}",
                             acc=f"{history['train_accuracy'][-1]:.3f}", **held,
                             rate=f"{history['train_rate_hz'][-1]:.1f}Hz")

    def on_fit_end(self, fit: FitState) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Checkpoint(Callback):
    """Saves after every epoch ``e`` (0-based) step ``e + 1`` of a
    :class:`~spark_somas.persistence.checkpointing.Checkpointer`: model, optimizer, the
    epoch's ``metrics`` (default: the accuracy and loss of the split ``fit``
    evaluates, ``test_*`` or ``validation_*``, its ``eval_split``) and ``extra =
    {"history": history, **extra}`` — what ``spark-somas train
    --checkpoint-dir`` writes.

    ``target`` is a Checkpointer (kept open: its owner closes it) or a
    directory, for which one is opened when ``fit`` starts and closed (its
    pending save committed) when it ends, keeping the newest ``keep_last``
    steps (0 or None: every one) and the ``keep_best`` steps best by
    ``best_metric`` (default: that split's accuracy; ``best_mode`` "max" or
    "min"; 0: none kept for it).
    """

    def __init__(self, target: Any, *, keep_last: int | None = 3, keep_best: int = 1,
                 best_metric: str | None = None, best_mode: str = "max",
                 metrics: Sequence[str] | None = None,
                 extra: Mapping[str, Any] | None = None):
        for name, value in (("keep_last", keep_last), ("keep_best", keep_best)):
            require(value is None or isinstance(value, int) and not isinstance(value, bool)
                    and value >= 0, name, value, "None or an int >= 0", error=RuleError)
        require("history" not in (extra or {}), "extra", extra, "no 'history' key (the "
                "callback saves the run's history under it)", error=RuleError)
        self.target, self.extra = target, dict(extra or {})
        self.given = {"best_metric": best_metric, "metrics": metrics}
        # best_metric ranks every step, with keep_best 0 too: a later run of the
        # same directory that keeps the best can rank the steps saved here
        self.options = {"max_to_keep": keep_last or None, "best_mode": best_mode,
                        "keep_best": keep_best or 0}
        self._name_metrics("test")
        self.checkpointer, self._owned = None, False

    def _name_metrics(self, split: str) -> None:
        """The metrics saved and ranked: those given, else ``split``'s."""
        given = self.given
        self.metrics = tuple(given["metrics"] or (f"{split}_accuracy", f"{split}_loss"))
        self.options["best_metric"] = given["best_metric"] or f"{split}_accuracy"

    def open(self) -> Any:
        """The Checkpointer (opened for a directory on the first call)."""
        from spark_somas.persistence.checkpointing import Checkpointer

        if self.checkpointer is None:
            self._owned = not isinstance(self.target, Checkpointer)
            self.checkpointer = (Checkpointer(self.target, **self.options) if self._owned
                                 else self.target)
        return self.checkpointer

    def close(self) -> None:
        """Commits the pending save and closes the Checkpointer this callback
        opened (one it was given stays open); a later ``fit`` opens it again."""
        if self._owned and self.checkpointer is not None:
            self.checkpointer.close()
        if self._owned:
            self.checkpointer = None

    def on_fit_start(self, fit: FitState) -> None:
        if self.checkpointer is None:
            self._name_metrics(fit.eval_split)
        self.open()

    def on_epoch_end(self, fit: FitState, epoch: int, history: Mapping[str, Sequence[Any]]):
        self.checkpointer.save(epoch + 1, fit.model, fit.optimizer,
                               metrics={k: history[k][-1] for k in self.metrics},
                               extra={"history": history, **self.extra})

    def on_fit_end(self, fit: FitState) -> None:
        self.close()


class EarlyStopping(Callback):
    """Stops ``fit`` once ``history[monitor]`` has not improved by more than
    ``min_delta`` for ``patience`` epochs in a row.

    It reads the whole history, a resumed run's earlier epochs included, so
    a run resumed from a checkpoint stops where the uninterrupted run
    would. ``mode`` "min" (a loss) or "max" (an accuracy); default: "max"
    when ``monitor`` names an accuracy, else "min". A NaN entry is no
    improvement. ``stopped_epoch`` is the epoch (0-based) it stopped after.
    """

    def __init__(self, monitor: str = "test_loss", *, patience: int = 3, mode: str | None = None,
                 min_delta: float = 0.0):
        mode = mode or ("max" if "accuracy" in monitor else "min")
        require(mode in ("min", "max"), "mode", mode, "'min' or 'max'", error=RuleError)
        require(isinstance(patience, int) and not isinstance(patience, bool) and patience >= 1,
                "patience", patience, "an int >= 1", error=RuleError)
        require(isinstance(min_delta, (int, float)) and math.isfinite(min_delta)
                and min_delta >= 0, "min_delta", min_delta, ">= 0 and finite", error=RuleError)
        self.monitor, self.patience, self.mode, self.min_delta = monitor, patience, mode, min_delta
        self.stopped_epoch: int | None = None

    def epochs_without_improvement(self, values: Sequence[float]) -> int:
        """How many of the last ``values`` came after the best one."""
        sign = 1.0 if self.mode == "min" else -1.0
        best, since = math.inf, 0
        for value in values:
            score = sign * float(value)
            if math.isfinite(score) and score < best - self.min_delta:
                best, since = score, 0
            else:
                since += 1
        return since

    def on_epoch_end(self, fit: FitState, epoch: int, history: Mapping[str, Sequence[Any]]):
        require(self.monitor in history, "monitor", self.monitor,
                f"a history key, one of {sorted(history)}", error=RuleError)
        if self.epochs_without_improvement(history[self.monitor]) >= self.patience:
            self.stopped_epoch = epoch
            return True
        return None


class StopOnRequest(Callback):
    """Ends ``fit`` at the first safe point after ``requested`` is set,
    by raising ``stop()`` (a ``BaseException`` such as ``KeyboardInterrupt``,
    so that no handler of ordinary errors takes it for one).

    The safe points are where nothing is half done: before the first
    step, after a training batch (the Python loop), and after an epoch once
    every callback before this one has seen it — a :class:`Checkpoint`'s
    save of it handed to the writer, which ``on_fit_end`` then commits. The
    last epoch is not stopped after: nothing is left to skip. Whoever sets
    ``requested`` (a signal handler, another thread) only sets it; nothing
    is raised inside the code that happened to run at that moment (a save,
    the deletion of an old step, a garbage-collection callback of JAX).
    Put it last in the list, so that every other callback sees each epoch.
    """

    def __init__(self, requested: threading.Event, stop: Callable[[], BaseException]):
        require(isinstance(requested, threading.Event), "requested", requested,
                "a threading.Event", error=RuleTypeError)
        require(callable(stop), "stop", stop, "a callable returning the exception to raise",
                error=RuleTypeError)
        self.requested, self.stop = requested, stop

    def _check(self) -> None:
        if self.requested.is_set():
            raise self.stop()

    def on_fit_start(self, fit: FitState) -> None:
        self._check()

    def on_batch_end(self, fit: FitState, epoch: int, index: int,
                     metrics: Mapping[str, Any]) -> None:
        self._check()

    def on_epoch_end(self, fit: FitState, epoch: int, history: Mapping[str, Sequence[Any]]):
        if epoch < fit.epochs - 1:
            self._check()
        return None


def default_callbacks(progress: bool = True, on_epoch_end: Callable | None = None
                      ) -> list[Callback]:
    """The callbacks ``fit(callbacks=None)`` runs: a :class:`ProgressBar`
    when ``progress``, then ``on_epoch_end`` if given
    (:func:`epoch_end_callback`)."""
    return ([ProgressBar()] if progress else []) + (
        [epoch_end_callback(on_epoch_end)] if on_epoch_end is not None else [])


def resolve_callbacks(callbacks: Sequence[Callback] | None, *, progress: bool = True,
                      on_epoch_end: Callable | None = None) -> list[Callback]:
    """``fit``'s callbacks: :func:`default_callbacks` for None; else
    ``callbacks`` (each a :class:`Callback`), followed by ``on_epoch_end``
    when given (:func:`epoch_end_callback`)."""
    if callbacks is None:
        callbacks = default_callbacks(progress)
    callbacks = list(callbacks)
    for callback in callbacks:
        require(isinstance(callback, Callback), "callbacks", callback,
                "Callback instances (an on_epoch_end function or a logger goes in "
                "EpochEnd(function))",
                error=RuleTypeError)
    return callbacks + ([epoch_end_callback(on_epoch_end)] if on_epoch_end is not None else [])
