"""The one time loop: :func:`drive`, and :func:`simulate` for a lone soma.

``drive(module, inputs, step)`` is T calls of ``step(module, x_t)`` fused into
one ``jax.lax.scan`` under ``jax.jit``, for any NNX module whose running
state lives in :class:`~spark_somas.models.protocol.SomaState` Variables — a soma, or
a whole network step (Linear → soma → recurrent Linear → synapse → readout,
:class:`~spark_somas.training.network.SpikingNetwork`). The SomaState Variables are
the scan's carry; every other Variable (weights, constants) is read only. It
starts from the module's state and leaves the final state in it. It
differentiates (BPTT through the surrogate spikes); with ``remat=k`` the
run is cut into segments of k steps whose insides are recomputed on the
backward pass (``jax.checkpoint``), so BPTT memory grows as T/k + k states
rather than T.

With ``backend="fused"`` the same loop runs instead in the Pallas kernels of
:mod:`spark_somas.simulation.kernels` (:func:`~spark_somas.simulation.kernels.run_module`): one
kernel per block of samples runs every step of the module, forward and
backward. ``simulate(soma, currents)`` runs a lone soma through
:func:`drive`, or through the kernels partitioned over its neurons
(:func:`~spark_somas.simulation.kernels.run`).
"""

from __future__ import annotations

import functools
import math
import dataclasses
from typing import Any, Callable, Sequence, TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

from spark_somas.errors import RuleError, require_shape, rule_message
from spark_somas.simulation import layout
from spark_somas.simulation.backends import FusedBackendError, resolve_backend
from spark_somas.models.protocol import Soma, SomaOutput, SomaState

__all__ = ["drive", "simulate", "recordable", "recorded_fields", "output"]

M = TypeVar("M", bound=nnx.Module)


def _call(module: nnx.Module, x: Any) -> Any:
    return module(x)


def drive(
    module: M,
    inputs: Any,
    step: Callable[[M, Any], Any] = _call,
    *,
    remat: bool | int = False,
    unroll: int = 1,
    backend: str = "auto",
) -> Any:
    """Runs ``step(module, x_t)`` for every x_t along the leading (time) axis of ``inputs``.

    Args:
      module: an NNX module whose running state is in ``SomaState``
        Variables, already shaped for the batch (``reset(batch_shape)``):
        the state is the loop's carry and must keep its shape.
      inputs: a pytree of arrays, time-major ``(T, ...)``.
      step: one step; its outputs (a pytree of arrays) are stacked over
        time. Default: ``module(x_t)``. A module-level function or method
        (not a fresh lambda per call) lets the compiled loop be reused.
      remat: False (keep every step for the backward pass), True
        (segments of ⌈√T⌉ steps) or an int k (segments of k steps,
        recomputed on the backward pass).
      unroll: steps per loop iteration, passed to ``lax.scan``.
      backend: ``"scan"``, ``"fused"`` (:func:`~spark_somas.simulation.kernels.run_module`:
        the state, inputs and outputs need a batch axis, after time for
        the inputs; ``unroll`` does not apply) or ``"auto"``
        (:func:`~spark_somas.simulation.backends.resolve_backend`).

    Returns:
      ``step``'s outputs with a leading time axis of length T.

    Raises:
      FusedBackendError: ``backend="fused"`` for a run without that batch axis.
    """
    steps = jax.tree.leaves(inputs)[0].shape[0]
    segment = _segment_length(remat, steps)
    graphdef, state, rest = nnx.split(module, SomaState, ...)
    if resolve_backend(backend) == "fused":
        from spark_somas.simulation import kernels  # Pallas and Triton load for a fused run only

        final, outputs = kernels.run_module(graphdef, state, rest, inputs, step, segment=segment)
    else:
        final, outputs = _scan(graphdef, state, rest, inputs, step, segment, unroll)
    nnx.update(module, final)
    return outputs


@dataclasses.dataclass(frozen=True)
class _Record:
    """A soma step that returns the named fields (hashable: a static argument)."""

    names: tuple[str, ...]

    def __call__(self, soma: Soma, current: jax.Array) -> dict[str, jax.Array]:
        values = {"spikes": soma(current).spikes, **soma.neuron_state()}
        return {k: values[k] for k in self.names}


def recordable(soma: Soma) -> tuple[str, ...]:
    """What ``soma`` can record: ``spikes``, its membrane variable and each
    state variable its class declares ``recordable``."""
    names = ("spikes", soma.membrane) + tuple(
        n for n, v in soma.state_variables.items() if v.recordable)
    return tuple(dict.fromkeys(names))


def recorded_fields(soma: Soma, record: str | Sequence[str]) -> tuple[str, ...]:
    """``record`` as a tuple of field names (one name may be given as a
    string), each recordable for ``soma``; ``ValueError`` naming the others
    and the choices otherwise. What :func:`simulate` and
    :func:`~spark_somas.simulation.sharding.simulate_sharded` accept."""
    record = (record,) if isinstance(record, str) else tuple(record)
    choices = recordable(soma)
    bad = [name for name in record if name not in choices]
    if bad:
        raise RuleError(f"record = {record!r}: {bad} not recordable for "
                        f"{type(soma).__name__}; choose from {choices}")
    return record


def simulate(
    soma: Soma,
    currents: jax.Array,
    *,
    time_major: bool | None = None,
    record: Sequence[str] = ("spikes", "potential"),
    remat: bool | int = False,
    unroll: int = 1,
    backend: str = "auto",
) -> SomaOutput:
    """Runs ``soma`` over ``currents`` (pA), shape ``(T, *batch, *units)``
    (``time_major=True``) or ``(*batch, T, *units)`` (``time_major=False``).

    One step lasts the soma's ``dt`` (0.1 ms by default: see
    :class:`~spark_somas.models.exponential.ExponentialSoma`), so T steps span T·dt ms.
    The run continues from the soma's running state and leaves its final
    state there (a network call, by contrast, starts from rest): call
    ``soma.reset()`` first for a run from rest.

    Args:
      soma: a soma (any registered model); its state is the initial condition and
        receives the final state.
      currents: input current per step.
      time_major: where the time axis is, in ``currents`` and in the
        result: first (True), or just before the units axes (False, as
        ``flax.nnx.RNN(time_major=False)``); see :mod:`spark_somas.simulation.layout`.
        None (default) reads time first, with a
        :class:`~spark_somas.simulation.layout.LayoutWarning` when T would
        then be smaller than the batch (a batch-first array, likely).
      record: which of :func:`recordable` to return stacked over time;
        ``out.name`` and ``out[name]`` read a recorded one, a model's own
        variables included (``out.name`` of one not recorded is None).
      remat: False (keep every step for the backward pass), True (segments
        of ⌈√T⌉ steps) or an int k (segments of k steps, recomputed on the
        backward pass).
      unroll: steps per loop iteration, passed to ``lax.scan``.
      backend: ``"scan"`` (this module's ``lax.scan``), ``"fused"`` (the
        Pallas time-loop kernels of :mod:`spark_somas.simulation.kernels`: same spikes,
        gradients equal to float32 rounding; interpreted, hence slow, off a
        GPU) or ``"auto"``: the scan, until the kernels have been measured
        faster on the platform (``backends.FUSED_BY_DEFAULT``, empty so far).

    Returns:
      A :class:`SomaOutput` whose recorded fields have the layout of
      ``currents``: ``(T, *batch, *units)`` or ``(*batch, T, *units)``.

    Raises:
      ValueError: ``currents`` whose last axes are not the soma's ``units``
        or that have no time axis (the message names the layout expected),
        complex currents, or a field in ``record`` the soma does not have.
    """
    record = recorded_fields(soma, record)
    currents = jnp.asarray(currents)
    time_major = layout.resolve_time_major("currents", currents.shape, soma.units, time_major)
    axis = layout.time_axis("currents", currents.shape, soma.units, time_major)
    require_shape(not jnp.issubdtype(currents.dtype, jnp.complexfloating), "currents",
                  currents.dtype, "real values (pA)", what="dtype", plural=True)
    if not jnp.issubdtype(currents.dtype, jnp.floating):
        currents = currents.astype(soma.dtype)
    currents = layout.to_time_major(currents, axis)
    soma.broadcast_state(currents.shape[1:])
    if resolve_backend(backend) == "fused":
        from spark_somas.simulation import kernels  # Pallas and Triton load for a fused run only

        final, recorded = kernels.run(
            type(soma), soma.parameters(), soma.neuron_state(), currents, soma.options,
            record=record, segment=_segment_length(remat, currents.shape[0]))
        for name, value in final.items():
            getattr(soma, name).set_value(value)
    else:
        recorded = drive(soma, currents, _Record(record), remat=remat, unroll=unroll,
                         backend="scan")
    recorded = layout.from_time_major(recorded, len(soma.units), time_major)
    return output(soma, recorded)


def output(soma: Soma, recorded: dict[str, jax.Array]) -> SomaOutput:
    """Recorded arrays by name as a :class:`SomaOutput`: the membrane
    variable as ``potential``, every other under its own name; the model's
    :meth:`~spark_somas.models.protocol.Soma.output_names` are what it declares."""
    recorded = dict(recorded)
    if soma.membrane in recorded:
        recorded["potential"] = recorded.pop(soma.membrane)
    declared = soma.output_names()
    order = {name: i for i, name in enumerate(declared)}
    return SomaOutput(dict(sorted(recorded.items(), key=lambda kv: order.get(kv[0], len(order)))),
                      declared=declared)


def _segment_length(remat: bool | int, steps: int) -> int | None:
    if remat is False or remat is None:
        return None
    if remat is True:
        return max(1, math.isqrt(max(steps - 1, 0)) + 1)
    if isinstance(remat, int) and remat > 0:
        return remat
    raise RuleError(rule_message("remat", remat, "False, True or a positive int"))


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _scan(graphdef, state, rest, inputs, step, segment, unroll):
    def one(carry, x):
        module = nnx.merge(graphdef, carry, rest)
        y = step(module, x)
        return nnx.state(module, SomaState), y

    def run(carry, xs):
        return jax.lax.scan(one, carry, xs, unroll=unroll)

    steps = jax.tree.leaves(inputs)[0].shape[0]
    if segment is None or segment >= steps:
        if segment is not None:
            run = jax.checkpoint(run)
        return run(state, inputs)
    run = jax.checkpoint(run)
    whole, tail = divmod(steps, segment)
    head = jax.tree.map(lambda x: x[: whole * segment].reshape((whole, segment) + x.shape[1:]),
                        inputs)
    state, ys = jax.lax.scan(run, state, head)
    ys = jax.tree.map(lambda y: y.reshape((whole * segment,) + y.shape[2:]), ys)
    if tail:
        state, ys_tail = run(state, jax.tree.map(lambda x: x[whole * segment:], inputs))
        ys = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), ys, ys_tail)
    return state, ys
