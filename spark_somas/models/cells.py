"""A soma inside Flax's own idioms: an ``nnx.RNN`` cell, an ``nnx.Sequential``
stage, and the Orbax restore template of a module stopped mid-run.

A soma is a stateful one-step module: ``soma(current)`` advances its running
state (``SomaState`` Variables, shape ``(*batch, *units)``) by one step of
``dt`` ms and returns a :class:`~spark_somas.models.somas.SomaOutput`. Three
adapters fit it to what Flax code expects:

* :class:`SomaCell` — the explicit-carry form of ``nnx.RNNCellBase``:
  ``cell(carry, current) -> (carry, spikes)``, the carry a dict of the state
  arrays, at rest from ``initialize_carry``; ``nnx.RNN(SomaCell(soma))``
  runs a whole sequence and gives the spikes :func:`~spark_somas.simulate`
  gives, bit for bit.
* :class:`Spiking` — ``x -> spikes`` (one step), so that
  ``nnx.Sequential(nnx.Linear(...), Spiking(soma), nnx.Linear(...))`` chains;
  ``scale`` turns a dimensionless input into a current in pA.
* :func:`abstract_state` — the ``jax.ShapeDtypeStruct`` template that
  ``orbax.checkpoint.StandardCheckpointer.restore`` needs, with the running
  state shaped for a batch: a module saved mid-run holds ``(*batch, *units)``
  where ``nnx.eval_shape`` of its constructor gives ``(*units)``.

Currents are in pA: a soma fires for a current above its rheobase, a few
hundred pA for the default cells (:func:`~spark_somas.models.somas.input_scale`),
so the order-1 output of an ``nnx.Linear`` needs a scale of that size.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from spark_somas.errors import RuleError, RuleTypeError, require
from spark_somas.models.somas import Soma, step

__all__ = ["SomaCell", "Spiking", "abstract_state"]

Array = jax.Array


def _require_soma(soma: Any) -> None:
    require(isinstance(soma, Soma), "soma", f"a {type(soma).__name__}", "a Soma instance, e.g. "
            "spark_somas.AdaptiveExponentialSoma(units=10)", error=RuleTypeError)


class SomaCell(nnx.RNNCellBase):
    """``soma`` as an explicit-carry cell of ``nnx.RNN``.

    The carry is a dict of the soma's state arrays (the keys of
    ``soma.neuron_state()``: for the AdEx V in mV and w in pA), each of shape
    ``(*batch, *units)``; ``cell(carry, current)`` advances it by one step of
    ``soma.dt`` ms under input ``current`` (pA, shape ``(*batch, *units)``)
    and returns ``(new carry, spikes)``, spikes 0/1 in the soma's dtype.
    The soma's own running state is neither read nor written: the carry is
    the state, so the cell can be scanned over any batch without
    ``soma.reset(batch)``. Its parameters (trained or fixed) are the soma's.

    ``initialize_carry(input_shape)`` is the rest state (each variable at
    its ``rest``: V = E_L, w = 0) for inputs of ``input_shape`` =
    ``(*batch, *units)``. ``nnx.RNN(SomaCell(soma))(x)`` with batch-first
    ``x`` of shape ``(*batch, T, *units)`` (``nnx.RNN``'s default layout)
    returns the spikes ``simulate(soma, x, time_major=False).spikes`` of a
    soma at rest returns.
    """

    def __init__(self, soma: Soma):
        _require_soma(soma)
        self.soma = soma

    @property
    def num_feature_axes(self) -> int:
        """The soma's ``units`` axes, which ``nnx.RNN`` keeps after the time axis."""
        return len(self.soma.units)

    def initialize_carry(self, input_shape: Sequence[int], rngs: Any = None,
                         carry_init: Any = None) -> dict[str, Array]:
        """The rest state for inputs of ``input_shape`` = ``(*batch, *units)``
        (``rngs`` unused: the rest state is not drawn)."""
        shape, units = tuple(input_shape), self.soma.units
        require(shape[len(shape) - len(units):] == units and len(shape) >= len(units),
                "input_shape", shape, f"(*batch, *units) with units = {units}", error=RuleError)
        require(carry_init is None, "carry_init", carry_init, "None: a soma's carry starts at "
                "its rest state (V = E_L), not at an initializer's draw", error=RuleError)
        rest = nnx.clone(self.soma)
        rest.reset(shape[:len(shape) - len(units)])
        return rest.neuron_state()

    def __call__(self, carry: dict[str, Array], inputs: Array) -> tuple[dict[str, Array], Array]:
        """One step: ``(new carry, spikes)`` for input current ``inputs`` (pA)."""
        current = jnp.asarray(inputs)
        if not jnp.issubdtype(current.dtype, jnp.floating):
            current = current.astype(self.soma.dtype)
        new, spikes = step(type(self.soma), self.soma.parameters(), carry, current,
                           self.soma.options)
        shape = carry[self.soma.membrane].shape
        return ({k: jnp.broadcast_to(v, carry[k].shape) for k, v in new.items()},
                jnp.broadcast_to(spikes, shape))


class Spiking(nnx.Module):
    """``x -> spikes``: one step of ``soma`` under the current ``scale · x``
    (pA), a stage of ``nnx.Sequential``.

    ``scale`` is in pA per unit of ``x``: 1.0 (default) takes ``x`` as a
    current in pA; ``input_scale(soma)`` (the soma's rheobase, a few hundred
    pA) makes an input of 1 the current at which the soma starts to fire —
    what the order-1 output of an ``nnx.Linear`` needs. The soma keeps its
    running state between calls, as ``soma(x)`` does: call it once per time
    step, and ``soma.reset(batch)`` (here ``stage.soma.reset(batch)``)
    before a sequence, or before an ``nnx.scan`` whose carry must keep its
    shape. ``stage.soma`` holds the soma (its state, its parameters).
    """

    def __init__(self, soma: Soma, *, scale: float = 1.0):
        _require_soma(soma)
        require(isinstance(scale, (int, float)) and not isinstance(scale, bool)
                and math.isfinite(scale) and scale > 0, "scale", scale, "a finite number > 0 "
                "(pA per unit of input)", error=RuleError)
        self.soma, self.scale = soma, float(scale)

    def __call__(self, x: Array) -> Array:
        """The spikes (0/1, shape ``(*batch, *units)``) of one step under ``scale · x`` pA."""
        return self.soma(self.scale * jnp.asarray(x)).spikes


def _reset_running_state(model: nnx.Module, batch: tuple[int, ...]) -> nnx.Module:
    """Calls ``reset(batch)`` on the outermost modules of ``model`` that have one
    (a network resets its layers, synapses and somas itself)."""
    done: list[tuple] = []
    for path, node in sorted(nnx.iter_graph(model), key=lambda item: len(item[0])):
        if (isinstance(node, nnx.Module) and callable(getattr(node, "reset", None))
                and not any(path[:len(p)] == p for p in done)):
            node.reset(batch)
            done.append(tuple(path))
    return model


def abstract_state(model: nnx.Module | Callable[[], nnx.Module],
                   batch: Sequence[int] | None = None) -> nnx.State:
    """The ``jax.ShapeDtypeStruct`` template of ``model``'s state, what
    ``StandardCheckpointer().restore(path, template)`` needs.

    ``model`` is a module or a function that builds one (it is then traced
    with ``nnx.eval_shape``: nothing of its size is allocated). With
    ``batch``, every ``reset(batch_shape)`` of the model (a soma, a
    :class:`~spark_somas.training.network.SpikingNetwork`, each soma of an
    ``nnx.Sequential``) is called first, so the running state (``SomaState``
    Variables) has the shape ``(*batch, *units)`` of a model saved
    mid-run — after ``net(x)`` on a batch of 3, say, ``batch=(3,)``; None
    keeps the state's shape as the module holds it (a built module already
    run on that batch, or a constructor's rest state). Weights and
    parameters never depend on the batch.

    Restore::

        graphdef, _ = nnx.split(model)
        state = ocp.StandardCheckpointer().restore(path, abstract_state(model, batch=(3,)))
        nnx.update(model, state)   # or nnx.merge(graphdef, state)
    """
    if batch is not None:
        batch = tuple(batch)
        require(all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in batch),
                "batch", batch, "a tuple of ints >= 1 (the batch shape of the saved state)",
                error=RuleError)
    if isinstance(model, nnx.Module):
        build = (lambda: nnx.clone(model)) if batch is None else (
            lambda: _reset_running_state(nnx.clone(model), batch))
    else:
        require(callable(model), "model", model, "an nnx.Module or a function that builds one",
                error=RuleTypeError)
        build = model if batch is None else (lambda: _reset_running_state(model(), batch))
    return nnx.state(nnx.eval_shape(build))
