"""Keeping trained neuron parameters inside their config rules."""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from spark_somas.configs import LARGEST
from spark_somas.somas import ExponentialSoma, iter_somas

__all__ = ["constrain_neurons", "trained_neuron_values"]

Array = jax.Array


def _feasible_interval(soma: ExponentialSoma, name: str) -> tuple[Array, Array]:
    """(low, high) bounds for trained field ``name`` from every config rule
    that involves it, with the other fields at their current values; strict
    inequalities move the bound to the next representable value."""
    values = soma.parameters()
    dtype = values[name].dtype
    lo, hi = jnp.asarray(-LARGEST, dtype), jnp.asarray(LARGEST, dtype)

    def bound(b):
        return jnp.asarray(values[b] if isinstance(b, str) else b, dtype)

    for f in soma.config.quantity_fields():
        rule = f.metadata["rule"]
        if f.name == name and rule.op in (">", ">="):
            b = bound(rule.bound)
            lo = jnp.maximum(lo, jnp.nextafter(b, jnp.inf) if rule.op == ">" else b)
        elif f.name == name and rule.op == "<":
            hi = jnp.minimum(hi, jnp.nextafter(bound(rule.bound), -jnp.inf))
        elif rule.bound == name and rule.op == "<":  # other < name
            lo = jnp.maximum(lo, jnp.nextafter(bound(f.name), jnp.inf))
        elif rule.bound == name and rule.op in (">", ">="):  # other > name
            hi = jnp.minimum(hi, jnp.nextafter(bound(f.name), -jnp.inf) if rule.op == ">"
                             else bound(f.name))
    if name.endswith("_tau"):
        lo = jnp.maximum(lo, jnp.asarray(soma.dt, dtype))
    return lo, hi


def constrain_neurons(model: nnx.Module, previous: Mapping[tuple, Array] | None = None) -> None:
    """Projects every trained soma field of ``model`` back into its rules, in place.

    Each value is clipped to its feasible interval (see the module docstring).
    A non-finite value takes its ``previous`` one (a dict from (soma path,
    field) to array, as :func:`trained_neuron_values` returns) when given;
    without it, ±inf become the dtype's largest finite values and NaN 0
    before clipping. Either way every rule holds afterwards. Run after every
    optimizer update; fields trained on both sides of a rule (V_th and V_T)
    are projected in turn, each against the other's projected value.
    """
    for path, soma in iter_somas(model):
        for name in soma.trainable:
            var = getattr(soma, name)
            value = var[...]
            if previous is not None:
                value = jnp.where(jnp.isfinite(value), value, previous[(path, name)])
            lo, hi = _feasible_interval(soma, name)
            var[...] = jnp.clip(jnp.nan_to_num(value, nan=0.0), lo, hi).astype(value.dtype)


def trained_neuron_values(model: nnx.Module) -> dict[tuple, Array]:
    """Every trained soma field of ``model``: {(soma path, field): array}."""
    return {(path, name): getattr(soma, name)[...]
            for path, soma in iter_somas(model) for name in soma.trainable}
