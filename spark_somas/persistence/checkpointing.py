"""Checkpoint and resume with Orbax: parameters, optimizer state and the running neuron state.

A soma is a deterministic map: one forward-Euler step takes the state
x_t = (V_t [mV], w_t [pA], refractory countdown r_t [steps, int32], θ_t [mV])
and the input I_t [pA] to x_{t+1} = F(x_t, I_t; p) with fixed or trained
parameters p. Saving x_t and p bit for bit, in their own dtypes, and resuming
with the same inputs and the same compiled F therefore continues a run
exactly: the spikes and potentials after a restore are those the
uninterrupted run would have produced. Training adds the optimizer state
(Adam's moments and step count, Kingma & Ba 2015), which the next update
reads just as F reads x_t.

A checkpoint is one step directory of an Orbax ``CheckpointManager`` holding

* ``state``: ``nnx.state(model)`` as a pure dict — every ``nnx.Param``,
  :class:`~spark_somas.models.somas.SomaConstant` and
  :class:`~spark_somas.models.somas.SomaState` (V, w, refractory counters, θ), and
  any other Variable of the module tree (typed PRNG keys as their key data);
* ``optimizer``: ``nnx.state(optimizer)`` when one was given;
* ``metadata``: JSON — for every soma in the tree its class, config
  (``config.to_dict()``), units, dt, integration method, dtype, param_dtype
  and trained fields (release 0.1.0 did not record the method: see :func:`load`);
  the model's registered type and its spec (what :func:`load` rebuilds it
  from); the package, jax, flax and orbax versions; the step's metrics and the
  caller's ``extra``.

Orbax writes a step into ``<step>.orbax-checkpoint-tmp`` and renames it to
``<step>`` when complete (an atomic rename on a POSIX file system), so a
save killed mid-write leaves the earlier steps intact and is never listed.
Retention deletes a step the same way round: one rename moves it into
``.deleted-steps``, whose files are removed after, so a deletion cut short
never leaves a listed step without its metadata; a step found so (written
by an older release) is skipped by :meth:`Checkpointer.list` with an
:class:`IncompleteStepWarning`. One process writes a directory at a time.

Loading never imports or runs code named on disk: :func:`load` rebuilds a
model only from a type registered in this process
(:func:`~spark_somas.models.registry.register_model`; the four somas and
:class:`~spark_somas.training.network.SpikingNetwork` register themselves),
and the metadata is plain JSON read as data. What is read is judged by
:mod:`spark_somas.persistence.compatibility` (metadata, mismatches, the
upgrades of earlier releases).

A :class:`Checkpointer` that may write checks up front that it can create a
file in its directory, and again before every save, so an unwritable
directory is refused before any work depends on it.

Refusals: restoring into a model whose somas differ from the saved ones
(class, units, dt, integration method, dtype, param_dtype, trained fields,
any config field) or
whose arrays differ in path, shape or dtype (a neuron state's batch
shape may differ, its trailing ``units`` may not) raises
:class:`CheckpointMismatchError` naming the field and both values, before any
array is read; a missing directory or step raises
:class:`CheckpointNotFoundError`; an unreadable one, or one whose metadata disagrees with its
arrays, :class:`CheckpointCorruptError`; saving a step that exists
:class:`CheckpointExistsError`; a directory this process cannot write
:class:`CheckpointNotWritableError`. All subclass :class:`CheckpointError`, a
``ValueError``; they are defined in :mod:`spark_somas.persistence.errors` and
importable from here.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers

from spark_somas.dynamics import integrators
from spark_somas.errors import RuleError, require, rule_message, violation
from spark_somas.models import registry
from spark_somas.models import somas
from spark_somas.persistence import compatibility
from spark_somas.persistence.compatibility import brief, soma_paths, stored_form
from spark_somas.persistence.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointExistsError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CheckpointNotWritableError,
    IncompleteStepWarning,
    UnrecordedMethodWarning,
)
from spark_somas.persistence.orbax_logs import quiet_failed_saves

__all__ = [
    "Checkpointer",
    "CheckpointInfo",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointCorruptError",
    "CheckpointMismatchError",
    "CheckpointExistsError",
    "CheckpointNotWritableError",
    "check_writable",
    "UnrecordedMethodWarning",
    "IncompleteStepWarning",
    "load",
    "describe",
    "check_directory",
    "format_listing",
]

FORMAT_VERSION = 1
_ITEMS = ("state", "optimizer", "metadata")
#: Where retention moves a step it deletes (one atomic rename) before the
#: files are removed: a deletion cut short leaves files there, never a step
#: without its metadata among the listed ones.
DELETED_DIR = ".deleted-steps"


def _pure(module: Any) -> dict:
    return nnx.to_pure_dict(nnx.state(module))


def _step_items(path: str) -> set[str]:
    """The items a step directory's writer recorded in its
    ``_CHECKPOINT_METADATA``, else the item directories it holds (none when
    it is gone)."""
    try:
        with open(os.path.join(path, "_CHECKPOINT_METADATA")) as f:
            return set(json.load(f)["item_handlers"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        return {entry.name for entry in os.scandir(path) if entry.is_dir()}
    except OSError:
        return set()


def _abstract(leaf: Any, shape: tuple[int, ...]) -> jax.ShapeDtypeStruct:
    stored = stored_form(leaf)
    sharding = getattr(stored, "sharding", None)
    if sharding is None or tuple(stored.shape) != shape:
        devices = getattr(stored, "devices", None)
        sharding = jax.sharding.SingleDeviceSharding(
            next(iter(devices())) if devices else jax.devices()[0])
    return jax.ShapeDtypeStruct(shape, stored.dtype, sharding=sharding)


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """One saved step: when (UTC, ISO 8601), its metrics, the model it holds
    and the caller's ``extra``."""

    step: int
    time: str
    metrics: dict[str, float]
    model: str
    extra: Any = None


def _jsonable(obj: Any) -> Any:
    """``obj`` with numpy / jax scalars and arrays as Python numbers and lists."""
    if isinstance(obj, Mapping):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, np.generic, jax.Array)):
        return np.asarray(obj).tolist()
    return obj


def _check_step(step: Any) -> int:
    require(not isinstance(step, bool) and isinstance(step, (int, np.integer)) and step >= 0,
            "step", step, "an int >= 0", error=RuleError)
    return int(step)


def check_writable(directory: str, name: str = "checkpoint directory", *,
                    error: type[Exception] = CheckpointNotWritableError) -> None:
    """Creates ``directory`` if need be and a file in it (removed at once);
    raises ``error`` naming ``name`` and the directory when either fails,
    whatever the reason (permissions, a read-only file system, a file in the
    way). The command line checks its output directories with it too."""
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory, prefix=".spark-somas-write-check-"):
            pass
    except OSError as err:
        raise error(violation(
            f"{name} {directory}", f"a directory this process can create and write "
            f"({err.strerror or type(err).__name__})")) from None


def check_directory(directory: str | os.PathLike, name: str = "checkpoint directory") -> str:
    """The absolute path of ``directory`` as a checkpoint directory, or
    :class:`CheckpointError` naming ``name`` when Orbax cannot keep a
    checkpoint there: its array store (TensorStore) reads a backslash as a
    path separator, so the arrays of ``run\\a`` would be written under
    ``run/a`` and nothing would restore."""
    path = os.path.abspath(os.fspath(directory))
    require("\\" not in path, name, path,
            "a path without a backslash (Orbax's array store reads '\\' as a separator "
            "and would write the arrays elsewhere)", error=CheckpointError)
    return path


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("spark_somas", "jax", "jaxlib", "flax", "orbax-checkpoint", "optax"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


class Checkpointer:
    """Numbered checkpoints of a model (and optimizer) in one directory.

    Wraps ``orbax.checkpoint.CheckpointManager``. Saves are asynchronous by
    default: :meth:`save` returns once the arrays are copied off the device,
    and the files are written in a background thread while training goes on;
    :meth:`wait` blocks until they are committed, :meth:`close` (or leaving a
    ``with`` block) waits and releases the manager.

    Args:
      directory: where the step directories live; created unless ``read_only``.
      max_to_keep: keep the newest ``max_to_keep`` steps (None: all).
      best_metric: a metric name, or a function ``metrics -> float``, ranking
        the steps; with it every save must pass that metric.
      best_mode: ``"min"`` (lower is better, e.g. a loss) or ``"max"``.
      keep_best: how many of the best steps to keep besides the newest
        ``max_to_keep`` (both sets survive clean-up); 0: none, the steps are
        still ranked by ``best_metric``. A step saved without one (by a
        Checkpointer without ``best_metric``) is never among the best: only
        ``max_to_keep`` keeps it.
      async_save: write in the background (True) or before returning.
      read_only: only restore and list; nothing in ``directory`` changes.

    Retention moves a step it deletes into ``DIR/.deleted-steps`` by one
    rename, and a writing Checkpointer removes those files once the save is
    committed (and when it opens): a deletion cut short never leaves a
    listed step without its files.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = None,
        best_metric: str | Callable[[Mapping[str, float]], float] | None = None,
        best_mode: str = "min",
        keep_best: int = 1,
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.directory = check_directory(directory)
        # A failed background write is raised by the next wait()/close(), by
        # name; the copies of it that Orbax's threads print are dropped.
        quiet_failed_saves(self.directory)
        require(max_to_keep is None or isinstance(max_to_keep, int) and max_to_keep >= 1,
                "max_to_keep", max_to_keep, "None or an int >= 1", error=RuleError)
        require(best_mode in ("min", "max"), "best_mode", best_mode, "'min' or 'max'",
                error=RuleError)
        require(isinstance(keep_best, int) and not isinstance(keep_best, bool) and keep_best >= 0,
                "keep_best", keep_best, "an int >= 0", error=RuleError)
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointNotFoundError(f"checkpoint directory {self.directory} does not exist")
        if not read_only:
            check_writable(self.directory)
        self.best_metric = best_metric
        self.read_only = read_only
        best_fn = None
        if best_metric is not None:
            best_fn = best_metric if callable(best_metric) else (lambda m: m[best_metric])
        policies = [checkpoint_managers.LatestN(n=max_to_keep)]
        if best_fn is not None:
            policies.append(checkpoint_managers.BestN(
                get_metric_fn=best_fn, reverse=best_mode == "min", n=keep_best,
                # a step saved without metrics (no best_metric then) is never
                # among the best: only max_to_keep keeps it
                keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            best_fn=best_fn,
            best_mode=best_mode,
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            create=not read_only,
            # A writer removes what a killed save left behind. (Orbax's own
            # read_only mode logs a warning per option; this class guards saves.)
            cleanup_tmp_directories=not read_only,
            todelete_subdir=None if read_only else DELETED_DIR,
        )
        handlers = {"state": ocp.StandardCheckpointHandler(),
                    "optimizer": ocp.StandardCheckpointHandler(),
                    "metadata": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, item_names=_ITEMS,
                                              item_handlers=handlers, options=options)
        self._remove_deleted()

    def _remove_deleted(self) -> None:
        """Removes the files of the steps retention deleted (each moved to
        :data:`DELETED_DIR` whole, by one rename), when this Checkpointer
        writes and no save is pending: a removal cut short here leaves
        nothing that is listed as a step."""
        if not self.read_only:
            shutil.rmtree(os.path.join(self.directory, DELETED_DIR), ignore_errors=True)

    # -- lifecycle

    def wait(self) -> None:
        """Blocks until every pending save is committed (and the files of
        the steps its retention deleted are removed).

        Raises:
          CheckpointNotWritableError: a pending save failed on the file system
            (its step is not committed; earlier steps are intact).
        """
        try:
            self._manager.wait_until_finished()
        except Exception as err:  # the writer raises OSError, or TensorStore's ValueError
            raise self._not_written(err) from err
        self._remove_deleted()

    def close(self) -> None:
        """Waits for pending saves, then releases the manager (also when a
        save failed, whose error it then raises as :meth:`wait` does)."""
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- steps

    def all_steps(self) -> list[int]:
        """Saved steps, ascending; a save still being written by this
        Checkpointer is included (other processes see it once committed)."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest step, or None when there is none."""
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The best step by ``best_metric`` (the newest without one)."""
        return self._manager.best_step()

    def _resolve(self, step: int | None) -> int:
        if step is not None:
            step = _check_step(step)
        self.wait()  # reads see this Checkpointer's own pending saves committed
        steps = self.all_steps()
        if not steps:
            raise CheckpointNotFoundError(f"no checkpoints in {self.directory}")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise CheckpointNotFoundError(f"no checkpoint for step {step} in {self.directory}; "
                                          f"steps: {steps}")
        return step

    # -- save

    def save(self, step: int, model: nnx.Module, optimizer: nnx.Optimizer | None = None, *,
             metrics: Mapping[str, float] | None = None, extra: Any = None) -> None:
        """Saves ``model`` (every Variable: parameters, constants, neuron state)
        and ``optimizer``'s state as ``step``; returns before the write ends
        when asynchronous.

        Args:
          step: a non-negative int not yet saved here.
          metrics: name -> number, listed with the step and used by ``best_metric``.
          extra: anything JSON-serialisable (numpy / jax numbers and arrays are
            converted) to keep alongside, e.g. a data position or a history.

        Raises:
          CheckpointExistsError: ``step`` is already saved.
          CheckpointNotWritableError: the directory can no longer be written
            (checked before anything is handed to the writer).
          ValueError: a bad step, metric or ``extra``.
        """
        step = _check_step(step)
        if self.read_only:
            raise CheckpointError(f"this Checkpointer of {self.directory} is read_only")
        metrics = self._check_metrics(metrics)
        model_type = registry.type_of(model)
        meta = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
            "model": {
                "class": f"{type(model).__module__}.{type(model).__qualname__}",
                "type": model_type.name if model_type else None,
                "spec": model_type.spec(model) if model_type else None,
            },
            "somas": {path: registry.soma_spec(s) for path, s in soma_paths(model).items()},
            "optimizer": optimizer is not None,
            "metrics": metrics,
            "extra": _jsonable(extra),
        }
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as err:
            raise RuleError(violation(f"extra = {brief(str(extra))} (or the model spec)",
                                      f"JSON-serialisable ({err})")) from None
        state = _pure(model)
        self._check_rules(step, model, state)
        check_writable(self.directory)
        items = {"state": ocp.args.StandardSave(jax.tree.map(stored_form, state)),
                 "metadata": ocp.args.JsonSave(meta)}
        if optimizer is not None:
            items["optimizer"] = ocp.args.StandardSave(jax.tree.map(stored_form, _pure(optimizer)))
        self.wait()  # the previous save committed, and what its retention deleted removed
        try:
            self._manager.save(step, args=ocp.args.Composite(**items),
                               metrics=metrics if self.best_metric is not None else None, force=True)
        except ocp.checkpoint_manager.StepAlreadyExistsError:
            raise CheckpointExistsError(
                f"step {step} is already saved in {self.directory}; checkpoints are never "
                f"overwritten (steps: {self.all_steps()})") from None
        except Exception as err:  # a synchronous write failed (or an earlier async one)
            raise self._not_written(err) from err

    def _check_rules(self, step: int, model: nnx.Module, state: Mapping[str, Any]) -> None:
        """Refuses, before anything is written, a model whose somas hold
        values their rules refuse (trained outside the constraint
        projection, V_th moved below V_T): :meth:`restore` and :func:`load`
        check the same rules and would refuse the step."""
        problem = compatibility.rule_problem(model, state)
        if problem:
            path, err = problem
            raise RuleError(
                f"cannot save step {step} to {self.directory}: {compatibility.soma_called(path)} holds values that "
                f"restore and load would refuse: {err}; train with "
                "spark_somas.training.make_optimizer, or chain "
                "spark_somas.training.constraints.neuron_constraints(model) last in your Optax "
                "transformation, to keep trained neuron parameters inside their rules")

    def _not_written(self, err: Exception) -> CheckpointNotWritableError:
        """A failed write, whatever the layer that reports it (an OSError, or
        TensorStore's ``ValueError: RESOURCE_EXHAUSTED …`` for a full disk),
        in one line: its step is not committed; earlier steps are intact."""
        text = str(err)
        reason = text.splitlines()[0] if text else type(err).__name__
        reason = reason if len(reason) <= 300 else reason[:100] + " … " + reason[-197:]
        # TensorStore puts the file system's errno somewhere in a long message
        # (sometimes before a JSON spec): name it in words, whatever was cut.
        code = re.search(r"os_error_code='?(\d+)", text)
        if code and os.strerror(int(code.group(1))) not in reason:
            reason += f"; {os.strerror(int(code.group(1)))}"
        return CheckpointNotWritableError(
            f"a save to {self.directory} failed on the file system and was not committed; "
            f"earlier steps are intact ({reason})")

    def _check_metrics(self, metrics: Mapping[str, float] | None) -> dict[str, float]:
        out = {}
        for name, value in dict(metrics or {}).items():
            try:
                out[str(name)] = float(value)
            except (TypeError, ValueError):
                raise RuleError(rule_message(f"metrics[{name!r}]", value, "a number")) from None
        if isinstance(self.best_metric, str):
            value = out.get(self.best_metric)
            require(value is not None and math.isfinite(value), "metrics", out,
                    f"must hold a finite best_metric {self.best_metric!r} (it ranks the steps)",
                    error=RuleError)
        return out

    # -- read

    def metadata(self, step: int | None = None) -> dict[str, Any]:
        """The JSON metadata of ``step`` (default: the newest), a dict:

        * ``format_version`` (int), ``step`` (int), ``time`` (ISO 8601) and
          ``versions`` (the package and its dependencies that wrote it);
        * ``model``: ``class``, ``type`` and ``spec``, what rebuilds the model
          (a soma's config, units, dt, method, dtypes; a network's config);
        * ``somas``: per soma path, the same spec of each soma;
        * ``optimizer``: whether optimizer state was saved;
        * ``metrics``: the numbers given to :meth:`save` (``test_accuracy``…);
        * ``extra``: what :meth:`save` was given as ``extra`` — for a run of
          :func:`~spark_somas.training.runs.train`, ``{"history": …, "run": …}``:
          the history to pass back to ``fit(history=...)`` and the
          :class:`~spark_somas.training.runs.RunConfig` as a dict.
        """
        step = self._resolve(step)
        try:
            meta = self._manager.restore(
                step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))["metadata"]
        except Exception as err:  # orbax raises many kinds on unreadable files
            raise self._unreadable_metadata(step, err) from err
        if (not isinstance(meta, dict) or not {"format_version", "somas", "model"} <= set(meta)
                or not isinstance(meta["somas"], dict) or not isinstance(meta["model"], dict)
                or not isinstance(meta["format_version"], int)):
            raise self._corrupt(step, "metadata", "not spark_somas checkpoint metadata")
        if meta["format_version"] > FORMAT_VERSION:
            raise CheckpointError(f"step {step} in {self.directory} has format version "
                                  f"{meta['format_version']}; this spark_somas reads up to "
                                  f"{FORMAT_VERSION}")
        problem = compatibility.metadata_problem(meta)
        if problem:
            raise self._corrupt(step, "metadata", problem)
        return meta

    def _corrupt(self, step: int, item: str, err: Any) -> CheckpointCorruptError:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        return CheckpointCorruptError(f"checkpoint step {step} in {self.directory} is corrupted "
                                      f"or incomplete: cannot read its {item} ({reason})")

    def _incomplete(self, step: int) -> bool:
        """Whether ``step``'s metadata file is missing (its directory may be
        gone too): what a deletion or a write cut short leaves."""
        return not os.path.isfile(os.path.join(self.directory, str(step), "metadata", "metadata"))

    def _unreadable_metadata(self, step: int, err: Exception) -> CheckpointError:
        """Why the metadata of ``step`` cannot be read: the step was written
        by another program (Orbax used directly: none of the items
        :meth:`save` writes), or it is incomplete or damaged
        (:class:`CheckpointCorruptError`)."""
        items = _step_items(os.path.join(self.directory, str(step)))
        if items and not items & set(_ITEMS):
            return CheckpointError(
                f"step {step} in {self.directory} is not a spark_somas checkpoint: it holds the "
                f"items {sorted(items)}, not the {list(_ITEMS)} that Checkpointer.save writes "
                "(it was written by Orbax directly or another program; read it with Orbax)")
        return self._corrupt(step, "metadata", err)

    def list(self) -> list[CheckpointInfo]:
        """Every step with its time, metrics, model and ``extra``. A step
        whose metadata file is missing (a deletion or write cut short) is
        skipped with an :class:`IncompleteStepWarning` naming it, so that one
        such step does not hide the others; any other damage raises."""
        out = []
        for step in self.all_steps():
            try:
                meta = self.metadata(step)
            except CheckpointCorruptError as err:
                if not self._incomplete(step):
                    raise
                warnings.warn(IncompleteStepWarning(f"{err}; step {step} is skipped"),
                              stacklevel=2)
                continue
            model = meta["model"]
            out.append(CheckpointInfo(step, meta["time"], meta.get("metrics") or {},
                                      model.get("type") or model["class"], meta.get("extra")))
        return out

    def restore(self, model: nnx.Module, optimizer: nnx.Optimizer | None = None,
                step: int | None = None) -> int:
        """Restores ``step`` (default: the newest) into ``model`` and
        ``optimizer`` in place; returns the step.

        The neuron state (every ``SomaState``: the somas', and a network's
        synaptic currents, previous spikes and readout potential) takes the
        saved batch shape. Somas (their integration method included), array
        paths, shapes and dtypes are compared with the checkpoint first; on
        any difference nothing is changed. A checkpoint of release 0.1.0
        records no integration method: it is restored into the model's own
        with a :class:`UnrecordedMethodWarning`.

        Raises:
          CheckpointNotFoundError: no such directory or step.
          CheckpointMismatchError: the model (or optimizer) differs from the saved one.
          CheckpointCorruptError: the step's files cannot be read.
        """
        step = self._resolve(step)
        meta = self.metadata(step)
        unrecorded = compatibility.unrecorded_methods(meta["somas"])
        if unrecorded:
            have = soma_paths(model)
            methods = sorted({have[p].method for p in unrecorded if p in have})
            warnings.warn(UnrecordedMethodWarning(compatibility.unrecorded_method_warning(
                step, self.directory, meta, unrecorded,
                f"it is restored into the model's method {', '.join(methods) or '-'} unchecked; "
                "it should be the one the saved run used")), stacklevel=2)
        problems = compatibility.soma_mismatches(meta["somas"], model)
        if optimizer is not None and not meta.get("optimizer"):
            problems.append("optimizer: the checkpoint has no optimizer state")
        if problems:
            raise CheckpointMismatchError(self._refusal(step, problems))
        return self._restore(model, optimizer, step, self._array_metadata(step))

    def _array_metadata(self, step: int) -> dict[str, dict[str, Any]]:
        """The shape and dtype of every stored array of ``step``, by item
        (``state``, and ``optimizer`` when saved) and path: one read of the
        step's array metadata, which every check and the restore share."""
        try:
            items = self._manager.item_metadata(step)
            return {name: somas.named_leaves(items[name].tree) for name in ("state", "optimizer")
                    if name == "state" or items.get(name) is not None}
        except Exception as err:  # orbax raises many kinds on unreadable files
            raise self._corrupt(step, "array metadata", err) from err

    def _restore(self, model: nnx.Module, optimizer: nnx.Optimizer | None, step: int,
                 stored: Mapping[str, Mapping[str, Any]]) -> int:
        """Restores ``step`` into ``model`` (and ``optimizer``), whose somas
        agree with the metadata, after comparing their arrays with
        ``stored`` (:meth:`_array_metadata`) and the stored values with the
        somas' rules; on any difference nothing is changed."""
        modules = {"state": model}
        if optimizer is not None:
            modules["optimizer"] = optimizer
        if not set(modules) <= set(stored):
            raise self._corrupt(step, "array metadata", "the metadata records optimizer "
                                "state, but the step holds no optimizer arrays")
        loose = compatibility.state_units(model)
        targets, args, problems = {}, {}, []
        for name, module in modules.items():
            targets[name] = _pure(module)
            problems += compatibility.array_mismatches(
                name, stored[name], somas.named_leaves(targets[name]),
                loose if name == "state" else {})
        if problems:
            raise CheckpointMismatchError(self._refusal(step, problems))
        for name, pure in targets.items():
            shapes = stored[name]
            abstract = jax.tree_util.tree_map_with_path(
                lambda p, leaf: _abstract(leaf, tuple(shapes[somas.path_name(p)].shape)), pure)
            args[name] = ocp.args.StandardRestore(abstract)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as err:
            raise self._corrupt(step, "arrays", err) from err
        problem = compatibility.rule_problem(model, restored["state"])
        if problem:  # an untrusted checkpoint may hold any numbers: the soma's rules decide
            raise CheckpointCorruptError(
                f"checkpoint step {step} in {self.directory} holds values that break the "
                f"rules of {compatibility.soma_called(problem[0])}, so nothing is restored: {problem[1]}")
        for name, module in modules.items():
            values = jax.tree.map(
                lambda like, arr: jax.random.wrap_key_data(arr, impl=jax.random.key_impl(like))
                if compatibility.is_key(like) else arr, targets[name], restored[name])
            state = nnx.state(module)
            nnx.replace_by_pure_dict(state, values)
            nnx.update(module, state)
        return step

    def _refusal(self, step: int, problems: list[str]) -> str:
        return (f"cannot restore step {step} of {self.directory} into this model: "
                + "; ".join(problems))


def load(directory: str | os.PathLike, step: int | None = None, *,
         method: str | None = None) -> nnx.Module:
    """The model saved in ``directory`` at ``step`` (default: the newest),
    rebuilt from the metadata alone and restored: a soma, or any model type
    registered with :func:`~spark_somas.models.registry.register_model`.

    The step's metadata and its array metadata are each read once: the
    somas' units are checked against the stored potentials, the model is
    built abstractly and its arrays compared with the stored ones, then
    built for real and restored (:mod:`spark_somas.persistence.compatibility`
    judges each step).

    Each soma is rebuilt with the integration method its metadata records.
    Release 0.1.0 did not record it: its somas are rebuilt with ``method``
    when given, else with forward Euler (that release's default) and an
    :class:`UnrecordedMethodWarning` that says how to choose another.
    ``method`` for a checkpoint that records its somas' methods must agree
    with them (else :class:`CheckpointMismatchError`).
    """
    if method is not None:
        require(method in integrators.METHODS, "method", method,
                f"None or one of {integrators.METHODS}", error=RuleError)
    with Checkpointer(directory, read_only=True) as ckpt:
        step = ckpt._resolve(step)
        meta = ckpt.metadata(step)
        stored = ckpt._array_metadata(step)
        problem = compatibility.units_problem(meta["somas"], stored["state"])
        if problem:
            raise ckpt._corrupt(step, "metadata", problem)

        def check_shapes(abstract: nnx.Module) -> None:
            problems = compatibility.array_mismatches(
                "state", stored["state"], somas.named_leaves(_pure(abstract)),
                compatibility.state_units(abstract))
            if problems:
                raise ckpt._corrupt(step, "metadata", "its model spec disagrees with the "
                                    "stored arrays: " + "; ".join(problems[:5]))

        model = compatibility.rebuild_model(meta["model"], check_shapes)
        unrecorded = compatibility.unrecorded_methods(meta["somas"])
        built = soma_paths(model)
        for path, soma in built.items():
            if path in unrecorded and method is not None:
                soma.method = method
            elif method is not None and method != soma.method:
                raise CheckpointMismatchError(
                    f"cannot load step {step} of {ckpt.directory} with method = {method!r}: "
                    f"its {compatibility.soma_called(path)} records method {soma.method!r}")
        if unrecorded and method is None:
            methods = sorted({built[p].method for p in unrecorded if p in built})
            warnings.warn(UnrecordedMethodWarning(compatibility.unrecorded_method_warning(
                step, ckpt.directory, meta, unrecorded,
                f"loaded with method {', '.join(methods)} ({registry.LEGACY_METHOD!r} is that "
                "release's default); if the run used another, pass it: "
                "load(directory, method='rk4')")), stacklevel=2)
        problems = compatibility.soma_mismatches(meta["somas"], model)
        if problems:
            raise CheckpointMismatchError(ckpt._refusal(step, problems))
        ckpt._restore(model, None, step, stored)
    return model


def describe(directory: str | os.PathLike) -> list[CheckpointInfo]:
    """The steps saved in ``directory``, oldest first, read-only."""
    with Checkpointer(directory, read_only=True) as ckpt:
        return ckpt.list()


def format_listing(infos: Sequence[CheckpointInfo]) -> str:
    """A plain-text table of :func:`describe`'s rows: step, time, model, metrics."""
    if not infos:
        return "no checkpoints"
    rows = [("step", "time (UTC)", "model", "metrics")] + [
        (str(i.step), i.time, i.model,
         ", ".join(f"{k}={v:.6g}" for k, v in sorted(i.metrics.items())) or "-")
        for i in infos
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    return "\n".join("  ".join(r[c].ljust(widths[c]) for c in range(3)) + "  " + r[3] for r in rows)
