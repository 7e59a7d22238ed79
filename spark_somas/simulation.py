"""Compiled time loops over a soma: :func:`simulate`.

``simulate(soma, currents)`` is T calls of ``soma(current)`` fused into one
``jax.lax.scan`` under ``jax.jit``: it starts from the soma's state and
leaves the final state in it. It differentiates (BPTT through the surrogate
spikes) and can rematerialize: with ``remat=k`` the run is cut into segments
of k steps whose insides are recomputed on the backward pass
(``jax.checkpoint``), so BPTT memory grows as T/k + k states rather than T.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from spark_somas import kernels
from spark_somas.somas import ExponentialSoma, SomaOutput, SomaState

__all__ = ["simulate", "RECORDABLE"]

RECORDABLE = ("spikes", "potential", "adaptation", "threshold_offset", "refractory")


def simulate(
    soma: ExponentialSoma,
    currents: jax.Array,
    *,
    record: Sequence[str] = ("spikes", "potential"),
    remat: bool | int = False,
    unroll: int = 1,
    backend: str = "auto",
) -> SomaOutput:
    """Runs ``soma`` over time-major ``currents`` (pA), shape ``(T, *batch, *units)``.

    Args:
      soma: any of the four somas; its state is the initial condition and
        receives the final state.
      currents: input current per step.
      record: which of ``RECORDABLE`` to return stacked over time; fields not
        recorded are None in the result.
      remat: False (keep every step for the backward pass), True (segments
        of ⌈√T⌉ steps) or an int k (segments of k steps, recomputed on the
        backward pass).
      unroll: steps per loop iteration, passed to ``lax.scan``.
      backend: ``"scan"`` (this module's ``lax.scan``), ``"fused"`` (the
        Pallas time-loop kernels of :mod:`spark_somas.kernels`: same spikes,
        gradients equal to float32 rounding; interpreted, hence slow, off a
        GPU) or ``"auto"``: fused on a GPU, scan elsewhere.

    Returns:
      A :class:`SomaOutput` whose recorded fields have shape ``(T, *batch, *units)``.
    """
    bad = sorted(set(record) - set(RECORDABLE))
    missing = sorted(set(record) - {"spikes", "potential"} - set(soma.state_names))
    if bad or missing:
        raise ValueError(
            f"record = {tuple(record)!r}: {bad or missing} not recordable for "
            f"{type(soma).__name__}; choose from {('spikes', 'potential') + soma.state_names}"
        )
    currents = jnp.asarray(currents)
    if currents.ndim < 1:
        raise ValueError(f"currents of shape {currents.shape} need a leading time axis")
    if not jnp.issubdtype(currents.dtype, jnp.floating):
        currents = currents.astype(soma.dtype)
    soma.broadcast_state(currents.shape[1:])
    steps = currents.shape[0]
    segment = _segment_length(remat, steps)
    if kernels.resolve_backend(backend) == "fused":
        final, recorded = kernels.run(
            soma.parameters(), soma.neuron_state(), currents, dt=soma.dt,
            surrogate=soma.config.surrogate, detach_reset=soma.config.detach_reset,
            record=tuple(record), segment=segment)
        for name, value in final.items():
            getattr(soma, name).set_value(value)
        return SomaOutput(**{k: recorded.get(k) for k in RECORDABLE})
    graphdef, state, rest = nnx.split(soma, SomaState, ...)
    final, recorded = _run(graphdef, state, rest, currents, tuple(record), segment, unroll)
    nnx.update(soma, final)
    return SomaOutput(**{k: recorded.get(k) for k in RECORDABLE})


def _segment_length(remat: bool | int, steps: int) -> int | None:
    if remat is False or remat is None:
        return None
    if remat is True:
        return max(1, math.isqrt(max(steps - 1, 0)) + 1)
    if isinstance(remat, int) and remat > 0:
        return remat
    raise ValueError(f"remat = {remat!r} violates the rule: False, True or a positive int")


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _run(graphdef, state, rest, currents, record, segment, unroll):
    def step(carry, current):
        soma = nnx.merge(graphdef, carry, rest)
        out = soma(current)
        values = {"spikes": out.spikes, **soma.neuron_state()}
        return nnx.state(soma, SomaState), {k: values[k] for k in record}

    def run(carry, xs):
        # Each step is recomputed on the backward pass from its saved state
        # and input: the guards then cost arithmetic, not stored residuals.
        return jax.lax.scan(jax.checkpoint(step), carry, xs, unroll=unroll)

    if segment is None or segment >= currents.shape[0]:
        if segment is not None:
            run = jax.checkpoint(run)
        return run(state, currents)
    run = jax.checkpoint(run)
    whole, tail = divmod(currents.shape[0], segment)
    head = currents[: whole * segment].reshape((whole, segment) + currents.shape[1:])
    state, ys = jax.lax.scan(run, state, head)
    ys = jax.tree.map(lambda y: y.reshape((whole * segment,) + y.shape[2:]), ys)
    if tail:
        state, ys_tail = run(state, currents[whole * segment:])
        ys = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), ys, ys_tail)
    return state, ys
