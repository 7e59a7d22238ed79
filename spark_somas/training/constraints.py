"""Trained neuron parameters kept inside their config rules, by the optimizer.

The config rules (:mod:`spark_somas.models.configs`) define, for each trained field
and the other fields' current values, a feasible interval
(:func:`~spark_somas.models.configs.feasible_interval`): the representable range
``|x| ≤ 10^6`` (positive fields ≥ 10^-6), V_th > max(V_T, V_r) — strict: the
next representable value — τ > 0, Δθ ≥ 0. Training adds one bound of its
own: time constants (τ_m, τ_w, τ_θ) stay ≥ dt, so the forward-Euler leak
factor 1 − dt/τ is non-negative. The soma's dtype rules
(:meth:`~spark_somas.models.somas.ExponentialSoma.dtype_bounds`: E_L and V_r
within what the state dtype holds; in half precision τ small enough for
dt/τ to stay resolvable) bound the fields too, so training never moves a
soma where its constructor would refuse it.

:func:`neuron_constraints` is an Optax transformation that projects after
the update, in the style of ``optax.keep_params_nonnegative``: chained last
(``optax.chain(optax.adam(lr), neuron_constraints(model))``), it rewrites
each trained neuron field's update u into u' with p + u' = clip(p + u, low,
high) — to the rounding of the addition, and always inside [low, high] as
the optimizer rounds it; a non-finite p + u keeps the previous value p
(projected in turn). The train step is then the standard Flax NNX step,
``optimizer.update(model, grads)``, and no parameter outside the rules ever
exists, whatever the learning rate. Fields trained on both sides of one rule
(V_th and V_T) are projected in turn, each against the other's projected
value.

**Bounds from the model as it is now.** low and high depend on the soma's fixed
(untrained) fields — V_th's lower bound is max(V_T, V_r) when only V_th is
trained — and those change after the optimizer is built: a checkpoint
restore writes the saved values into the model (per-neuron values drawn at
random differ from run to run), and a user may edit a field. So the fixed
fields are never copied when the optimizer is built: each update reads them
from the model. :class:`NeuronOptimizer` (what
:func:`~spark_somas.training.loop.make_optimizer` builds) is an ``nnx.Optimizer``
whose ``update(model, grads)`` hands the model's current fixed fields to the
transformation as an Optax extra argument, :data:`FIXED_FIELDS`. Inside a
compiled step (``nnx.jit``, the scanned epoch) that model is the traced one,
so the fixed fields are inputs of the compiled program like the weights, not
constants frozen into it at its first trace: an edit or a restore between
two calls of the same compiled step takes effect at the next update.

They are not kept in the optimizer state either: a copy there would be a
second record of the model's fields, which an edit or a restore of the model
alone would leave stale, and would change the optimizer's checkpoint layout
(checkpoints written before would no longer restore). The model is the one
record; the transformation's state stays ``optax.EmptyState``.

Without the extra argument (a plain ``nnx.Optimizer``, or the transformation
called directly) the fixed fields are read from the model
:func:`neuron_constraints` was given, when ``update`` runs: current when
eager, but inside a compiled function those of the moment it was traced.
There, build a :class:`NeuronOptimizer`, or pass
``**{FIXED_FIELDS: fixed_neuron_fields(model)}`` to ``update`` yourself.

**Finite or nothing.** :func:`skip_non_finite` wraps a transformation so
that an update is applied only when the gradient *and* the update it
produced are finite; otherwise the update is zero and the wrapped state is
kept, however many batches in a row. ``optax.apply_if_finite`` checks the
gradient only, and after ``max_consecutive_errors`` lets a non-finite update
through; a learning-rate schedule that overflows, or Adam's moments fed a
huge but finite gradient, then write inf or NaN into every weight.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from spark_somas.models.configs import feasible_interval
from spark_somas.errors import RuleError
from spark_somas.models.somas import Soma, iter_somas, path_name

__all__ = [
    "neuron_constraints",
    "skip_non_finite",
    "NeuronOptimizer",
    "FIXED_FIELDS",
    "fixed_neuron_fields",
    "constrain_neurons",
    "trained_neuron_values",
]

Array = jax.Array

FIXED_FIELDS = "neuron_fixed_fields"
"""The name of the Optax extra argument of :func:`neuron_constraints`'s
``update``: the somas' fixed fields, as :func:`fixed_neuron_fields` returns."""


def fixed_neuron_fields(model: nnx.Module) -> dict[str, dict[str, Array]]:
    """The current fixed (untrained) fields of every soma of ``model`` that
    trains some field: {soma path ``"a/0/b"`` ("" for ``model`` itself):
    {field: array}}. Inside a traced function, of a traced model, the arrays
    are traced."""
    return {path_name(path): {n: v for n, v in soma.parameters().items()
                              if n not in soma.trainable}
            for path, soma in iter_somas(model) if soma.trainable}


class _Bounds(NamedTuple):
    """What the projection of one soma needs that never changes: where its
    Params sit in the model, its config class, dt, trained fields in order,
    and the dtype's bounds of those fields (the fixed fields' values are
    passed to :meth:`project`)."""

    path: tuple
    config_class: type
    dt: float
    trainable: tuple[str, ...]
    dtype_bounds: tuple[tuple[str, Array, Array], ...] = ()

    @classmethod
    def of(cls, path: tuple, soma: Soma) -> "_Bounds":
        """The soma's dtype bounds (float64 numbers) are rounded to the
        field's dtype here, once, on the host; a bound that rounding took
        outside its interval moves one step back in, so that every value of
        the interval obeys the rule."""
        limits = []
        for name, (low, high) in sorted(soma.dtype_bounds().items()):
            if name not in soma.trainable:
                continue
            dtype = jnp.dtype(getattr(soma, name)[...].dtype)
            rounded = []
            for bound, inward in ((low, np.inf), (high, -np.inf)):
                b = np.asarray(bound, np.float64).astype(dtype)
                if np.isfinite(bound) and (float(b) < bound if inward > 0 else float(b) > bound):
                    b = np.nextafter(b, np.asarray(inward, dtype))
                rounded.append(jnp.asarray(b))
            limits.append((name, *rounded))
        return cls(tuple(path), type(soma.config), soma.dt, tuple(soma.trainable), tuple(limits))

    def project(self, values: Mapping[str, Array], fixed: Mapping[str, Array],
                previous: Mapping[str, Array] | None = None,
                base: Mapping[str, Array] | None = None) -> dict[str, Array]:
        """The trained fields' candidate ``values`` moved into their feasible
        intervals, the other fields at ``fixed``; a non-finite candidate takes
        its ``previous`` value when given, else ±inf become ±10^6 and NaN 0.

        With ``base`` (the parameters an optimizer adds the result to),
        returns instead the updates u whose sums base + u, as
        ``optax.apply_updates`` rounds them, lie in the intervals, nearest the
        projected values (:func:`_update_onto`); a field's interval is then
        bounded by the other fields' sums, the values the model will hold."""
        # Every candidate made finite first, so that no field is bounded by
        # another's NaN or inf.
        if previous is not None:
            values = {n: jnp.where(jnp.isfinite(v), v, previous[n]) for n, v in values.items()}
        values = {n: jnp.nan_to_num(v, nan=0.0) for n, v in values.items()}
        current = dict(fixed) | values
        out = {}
        for name in self.trainable:
            value = values[name]
            lo, hi = feasible_interval(self.config_class, name, current, value.dtype)
            if name in self.config_class.time_constant_fields():
                lo = jnp.maximum(lo, jnp.asarray(self.dt, value.dtype))
            for field, low, high in self.dtype_bounds:
                if field == name:
                    lo, hi = jnp.maximum(lo, low), jnp.minimum(hi, high)
            target = jnp.clip(value, lo, hi).astype(value.dtype)
            if base is None:
                out[name] = current[name] = target
            else:
                out[name] = _update_onto(base[name], target, lo, hi)
                current[name] = (base[name] + out[name]).astype(value.dtype)
        return out


def _update_onto(param: Array, target: Array, lo: Array, hi: Array) -> Array:
    """An update u with ``param + u`` (rounded, as ``optax.apply_updates``
    adds) in [lo, hi] and nearest ``target`` (itself in [lo, hi]).

    u = target − param, then one compensation step u ← u + (target −
    (param + u)). That alone can miss by one ulp of u when param and target
    are far apart (|u| > |target|: the sums reachable from param are then
    spaced by ulp(u), coarser than the grid around target), which would put
    a value clipped onto a strict bound (V_th at the float just above V_T)
    on the bound itself. So u then moves by one ulp towards the interval
    when the sum falls outside it. The sum ends at most two ulps (of the
    larger of |u| and |target|) from target."""
    u = target - param
    u = u + (target - (param + u))
    for _ in range(2):  # one nudge suffices; the second is a margin
        total = param + u
        u = jnp.where(total < lo, jnp.nextafter(u, jnp.asarray(jnp.inf, u.dtype)),
                      jnp.where(total > hi, jnp.nextafter(u, jnp.asarray(-jnp.inf, u.dtype)), u))
    return u


def neuron_constraints(model: nnx.Module) -> optax.GradientTransformationExtraArgs:
    """An Optax transformation keeping ``model``'s trained soma fields legal.

    Chain it last, after the optimizer proper. ``params`` (which
    ``nnx.Optimizer`` passes) must be ``model``'s ``nnx.Param`` state, or the
    part of it an optimizer's ``wrt`` filter selects; leaves that are not
    trained soma fields pass through untouched, and trained soma fields
    outside that part are not the optimizer's to keep. Where the somas
    sit, their config classes, dt and trained fields are read once, here;
    their fixed fields at every update: from the extra argument
    :data:`FIXED_FIELDS` (``update(updates, state, params,
    neuron_fixed_fields=...)``, which :class:`NeuronOptimizer` passes), else
    from ``model`` as it is when ``update`` runs. The state is
    ``optax.EmptyState``.
    """
    plans = [_Bounds.of(path, soma) for path, soma in iter_somas(model) if soma.trainable]

    def init_fn(params: optax.Params) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: optax.Updates, state: optax.EmptyState,
                  params: optax.Params | None = None,
                  **extra_args: Any) -> tuple[optax.Updates, optax.EmptyState]:
        if params is None:
            raise RuleError("neuron_constraints: update() needs params (nnx.Optimizer "
                             "passes them)")
        fixed = extra_args.get(FIXED_FIELDS)
        if fixed is None:
            fixed = fixed_neuron_fields(model)
        leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
        index = {path_name(path): i for i, (path, _) in enumerate(leaves)}
        flat_updates = [u for _, u in leaves]
        flat_params = jax.tree_util.tree_leaves(params)
        for plan in plans:
            where = path_name(plan.path)
            if where not in fixed:
                raise RuleError(f"neuron_constraints: {FIXED_FIELDS} has no soma {where!r} "
                                 f"(it has {sorted(fixed)}); pass fixed_neuron_fields(model)")
            slots = {n: index[key] for n in plan.trainable
                     if (key := path_name(plan.path + (n,))) in index}
            if not slots:  # frozen: outside the optimizer's wrt
                continue
            old = {n: flat_params[i] for n, i in slots.items()}
            new = {n: (old[n] + flat_updates[i]).astype(old[n].dtype) for n, i in slots.items()}
            for n, u in plan.project(new, fixed[where], old, base=old).items():
                flat_updates[slots[n]] = u
        return jax.tree_util.tree_unflatten(treedef, flat_updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def skip_non_finite(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``inner``, applied only when its input (the gradient) and its output
    (the update) are both finite; else a zero update, ``inner``'s state
    unchanged. Its state is ``optax.ApplyIfFiniteState`` (``last_finite``,
    ``notfinite_count`` in a row, ``total_notfinite``, ``inner_state``), laid
    out as ``optax.apply_if_finite``'s, so checkpoints of either restore into
    the other."""
    inner = optax.with_extra_args_support(inner)

    def init(params: Any) -> optax.ApplyIfFiniteState:
        return optax.ApplyIfFiniteState(
            notfinite_count=jnp.zeros([], jnp.int32), last_finite=jnp.array(True, jnp.bool_),
            total_notfinite=jnp.zeros([], jnp.int32), inner_state=inner.init(params))

    def update(updates, state, params=None, **extra):
        new, inner_state = inner.update(updates, state.inner_state, params, **extra)
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(leaf))
                                    for leaf in jax.tree.leaves((updates, new))] or [True]))
        keep = lambda a, b: jnp.where(finite, a, b)  # noqa: E731
        new = jax.tree.map(lambda u: keep(u, jnp.zeros_like(u)), new)
        inner_state = jax.tree.map(keep, inner_state, state.inner_state)
        bad = (~finite).astype(jnp.int32)
        return new, optax.ApplyIfFiniteState(
            notfinite_count=(state.notfinite_count + bad) * bad, last_finite=finite,
            total_notfinite=state.total_notfinite + bad, inner_state=inner_state)

    return optax.GradientTransformationExtraArgs(init, update)


class NeuronOptimizer(nnx.Optimizer):
    """An ``nnx.Optimizer`` whose :meth:`update` hands the model's current
    fixed soma fields to :func:`neuron_constraints` (the extra argument
    :data:`FIXED_FIELDS`), so that the projection of each update obeys the
    rules against the model as it is then, in compiled steps too. Built like
    ``nnx.Optimizer``; its ``tx`` should chain ``neuron_constraints(model)``
    last (:func:`~spark_somas.training.loop.make_optimizer` does). Its state, and so
    its checkpoints, are those of ``nnx.Optimizer``."""

    def update(self, model: nnx.Module, grads: Any, /, **kwargs: Any) -> optax.Updates:
        """``nnx.Optimizer.update`` with ``neuron_fixed_fields`` =
        :func:`fixed_neuron_fields` (``model``) unless given."""
        kwargs.setdefault(FIXED_FIELDS, fixed_neuron_fields(model))
        return super().update(model, grads, **kwargs)


def constrain_neurons(model: nnx.Module, previous: Mapping[tuple, Array] | None = None) -> None:
    """Projects every trained soma field of ``model`` into its rules, in
    place, as :func:`neuron_constraints` does after an update, against the
    fixed fields' current values. ``previous`` maps (soma path, field) to the
    value a non-finite entry takes, as :func:`trained_neuron_values` returns."""
    fixed = fixed_neuron_fields(model)
    for path, soma in iter_somas(model):
        if not soma.trainable:
            continue
        before = None if previous is None else {n: previous[(path, n)] for n in soma.trainable}
        values = {n: getattr(soma, n)[...] for n in soma.trainable}
        bounds = _Bounds.of(path, soma)
        for name, value in bounds.project(values, fixed[path_name(path)], before).items():
            getattr(soma, name)[...] = value


def trained_neuron_values(model: nnx.Module) -> dict[tuple, Array]:
    """Every trained soma field of ``model``: {(soma path, field): array}."""
    return {(path, name): getattr(soma, name)[...]
            for path, soma in iter_somas(model) for name in soma.trainable}
