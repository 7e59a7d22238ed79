"""Where a network's gradient reaches: measurements of the BPTT paths.

A loss read at the end of a trial (the recall period of the cue task)
reaches an input seconds earlier only through state that lasts that long —
for the exponential somas, the adaptation w or the threshold offset θ,
whose jumps at each spike (w ← w + b·s, θ ← θ + Δθ·s) carry ∂L/∂s back
when ``detach_adaptation`` is False. These functions measure it:

* :func:`input_gradient_by_step` — ‖∂L/∂x_t‖ for every step t: how far back
  the gradient reaches (the "gradient norm vs steps back" of a delay task);
* :func:`input_weight_gradients` — ‖∂L/∂W_in[f, :]‖ for every input channel
  f of the first hidden layer: whether channels active only before a delay
  (the cues) get a gradient at all.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from spark_somas.training.network import SpikingNetwork
from spark_somas.training.objectives import Objective

__all__ = ["input_gradient_by_step", "input_weight_gradients"]

Array = jax.Array


@functools.partial(nnx.jit, static_argnames=("objective",))
def input_gradient_by_step(model: SpikingNetwork, x: Array, labels: Array, *,
                           objective: Objective = Objective()) -> Array:
    """‖∂L/∂x_t‖₂ over batch and features for each step t, shape (T,).

    ``x`` is the network's time-major input (T, B, F) (spikes as 0/1
    floats, or currents), ``labels`` (B,) the classes, L the ``objective``
    on the network run from rest. The model's state is left as it was.
    One compiled program per shape and objective."""
    running = jax.tree.map(lambda v: v, nnx.state(model))

    def loss(model: SpikingNetwork, inputs: Array) -> Array:
        return objective(model, model(inputs), labels)

    grads = nnx.grad(loss, argnums=1)(model, jnp.asarray(x, jnp.float32))
    nnx.update(model, running)
    return jnp.sqrt(jnp.sum(jnp.square(grads), axis=tuple(range(1, grads.ndim))))


@functools.partial(nnx.jit, static_argnames=("objective",))
def input_weight_gradients(model: SpikingNetwork, x: Array, labels: Array, *,
                           objective: Objective = Objective()) -> Array:
    """‖∂L/∂W_in[f, :]‖₂ of the first hidden layer's input weights, for
    each input channel f, shape (F,); ``x``, ``labels`` and the state left
    as in :func:`input_gradient_by_step`."""
    def loss(model: SpikingNetwork) -> Array:
        return objective(model, model(jnp.asarray(x, jnp.float32)), labels)

    running = jax.tree.map(lambda v: v, nnx.state(model))
    grads = nnx.grad(loss)(model)
    nnx.update(model, running)
    kernel = grads["layers"][0]["input"]["kernel"][...]
    return jnp.sqrt(jnp.sum(jnp.square(kernel), axis=1))
