"""Trained neuron parameters kept inside their config rules, by the optimizer.

The config rules (:mod:`spark_somas.configs`) define, for each trained field
and the other fields' current values, a feasible interval
(:func:`~spark_somas.configs.feasible_interval`): the representable range
``|x| ≤ 10^6`` (positive fields ≥ 10^-6), V_th > max(V_T, V_r) — strict: the
next representable value — τ > 0, Δθ ≥ 0. Training adds one bound of its
own: time constants (τ_m, τ_w, τ_θ) stay ≥ dt, so the forward-Euler leak
factor 1 − dt/τ is non-negative.

:func:`neuron_constraints` is an Optax transformation that projects after
the update, in the style of ``optax.keep_params_nonnegative``: chained last
(``optax.chain(optax.adam(lr), neuron_constraints(model))``), it rewrites
each trained neuron field's update u into u' with p + u' = clip(p + u, low,
high); a non-finite p + u keeps the previous value p. The train step is then
the standard Flax NNX step, ``optimizer.update(model, grads)``, and no
parameter outside the rules ever exists, whatever the learning rate. Fields
trained on both sides of one rule (V_th and V_T) are projected in turn, each
against the other's projected value.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from spark_somas.configs import feasible_interval
from spark_somas.somas import ExponentialSoma, iter_somas

__all__ = ["neuron_constraints", "constrain_neurons", "trained_neuron_values"]

Array = jax.Array


def _key(path: Iterable[Any]) -> str:
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


class _Bounds(NamedTuple):
    """What the projection of one soma needs, read once: where its Params
    sit in the model, its config class, dt, trained fields in order, and
    the fixed fields' values (NumPy: constants of the compiled step)."""

    path: tuple
    config_class: type
    dt: float
    trainable: tuple[str, ...]
    fixed: dict[str, np.ndarray]

    @classmethod
    def of(cls, path: tuple, soma: ExponentialSoma) -> "_Bounds":
        fixed = {n: np.asarray(v) for n, v in soma.parameters().items() if n not in soma.trainable}
        return cls(tuple(path), type(soma.config), soma.dt, tuple(soma.trainable), fixed)

    def project(self, values: Mapping[str, Array],
                previous: Mapping[str, Array] | None = None) -> dict[str, Array]:
        """The trained fields' candidate ``values`` moved into their feasible
        intervals; a non-finite candidate takes its ``previous`` value when
        given, else ±inf become ±10^6 and NaN 0."""
        current = dict(self.fixed) | dict(values)
        out = {}
        for name in self.trainable:
            value = values[name]
            if previous is not None:
                value = jnp.where(jnp.isfinite(value), value, previous[name])
            lo, hi = feasible_interval(self.config_class, name, current, value.dtype)
            if name.endswith("_tau"):
                lo = jnp.maximum(lo, jnp.asarray(self.dt, value.dtype))
            out[name] = current[name] = jnp.clip(jnp.nan_to_num(value, nan=0.0), lo, hi).astype(
                value.dtype)
        return out


def _update_onto(param: Array, target: Array) -> Array:
    """An update u with ``param + u`` equal to ``target``, to the rounding of
    the addition ``optax.apply_updates`` performs (one compensation step)."""
    u = target - param
    return u + (target - (param + u))


def neuron_constraints(model: nnx.Module) -> optax.GradientTransformation:
    """An Optax transformation keeping ``model``'s trained soma fields legal.

    Chain it last, after the optimizer proper. ``params`` (which
    ``nnx.Optimizer`` passes) must be ``model``'s ``nnx.Param`` state; leaves
    that are not trained soma fields pass through untouched. The somas'
    fixed fields and dt are read once, here.
    """
    plans = [_Bounds.of(path, soma) for path, soma in iter_somas(model) if soma.trainable]

    def init_fn(params: optax.Params) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: optax.Updates, state: optax.EmptyState,
                  params: optax.Params | None = None) -> tuple[optax.Updates, optax.EmptyState]:
        if params is None:
            raise ValueError("neuron_constraints: update() needs params (nnx.Optimizer "
                             "passes them)")
        leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
        index = {_key(path): i for i, (path, _) in enumerate(leaves)}
        flat_updates = [u for _, u in leaves]
        flat_params = jax.tree_util.tree_leaves(params)
        for plan in plans:
            slots = {n: index[_key(plan.path + (n,))] for n in plan.trainable}
            old = {n: flat_params[i] for n, i in slots.items()}
            new = {n: (old[n] + flat_updates[i]).astype(old[n].dtype) for n, i in slots.items()}
            for n, target in plan.project(new, old).items():
                flat_updates[slots[n]] = _update_onto(old[n], target)
        return jax.tree_util.tree_unflatten(treedef, flat_updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def constrain_neurons(model: nnx.Module, previous: Mapping[tuple, Array] | None = None) -> None:
    """Projects every trained soma field of ``model`` into its rules, in
    place, as :func:`neuron_constraints` does after an update. ``previous``
    maps (soma path, field) to the value a non-finite entry takes, as
    :func:`trained_neuron_values` returns."""
    for path, soma in iter_somas(model):
        before = None if previous is None else {n: previous[(path, n)] for n in soma.trainable}
        values = {n: getattr(soma, n)[...] for n in soma.trainable}
        for name, value in _Bounds.of(path, soma).project(values, before).items():
            getattr(soma, name)[...] = value


def trained_neuron_values(model: nnx.Module) -> dict[tuple, Array]:
    """Every trained soma field of ``model``: {(soma path, field): array}."""
    return {(path, name): getattr(soma, name)[...]
            for path, soma in iter_somas(model) for name in soma.trainable}
