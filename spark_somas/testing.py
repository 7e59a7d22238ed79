"""A testing kit for soma models: what the package's own tests use, for a
model of your own.

* :func:`legal_params` — a `Hypothesis <https://hypothesis.readthedocs.io>`_
  strategy that draws legal parameter sets from a config's declared rules
  alone (no field name is known to it), the corners of the legal space
  included.
* :func:`check_model` — one call that runs a registered model through every
  capability the package promises it: simulation, every integration
  method, gradients, a recurrent network, a checkpoint round trip, and
  property checks over its legal parameter space.

Hypothesis is a test extra (``pip install spark_somas[test]``), imported
only when a strategy is built.

Units: potential mV, time ms, current pA, resistance GΩ, conductance nS.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from typing import Any, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spark_somas.dynamics import integrators
from spark_somas.errors import (RuleError, RuleTypeError, SparkSomasError, require,
                                rule_message)
from spark_somas.models import configs, registry
from spark_somas.models.protocol import as_units
from spark_somas.models.somas import Soma, input_scale, step
from spark_somas.simulation.driver import simulate

__all__ = ["legal_params", "legal_intervals", "amplification", "assert_finite_gradients",
           "check_model", "OVERFLOWING_GAIN"]

#: The dtypes a drawn parameter set may be stored in.
PARAM_DTYPES = ("bfloat16", "float32", "float64")


def _hypothesis() -> Any:
    """The ``hypothesis`` package, or an ImportError that says how to get it."""
    try:
        import hypothesis
        import hypothesis.strategies  # noqa: F401  (the submodule, loaded)
    except ImportError as err:
        raise ImportError("spark_somas.testing draws parameter sets with Hypothesis, a test "
                          "extra: pip install spark_somas[test]") from err
    return hypothesis


def _rounded(x: Any, dtype: np.dtype) -> np.ndarray:
    """``x`` rounded to ``dtype`` (to nearest), as float64."""
    with np.errstate(over="ignore"):
        return np.asarray(x, np.float64).astype(dtype).astype(np.float64)


def _next(x: Any, dtype: np.dtype, direction: float) -> np.ndarray:
    """The value of ``dtype`` next to ``x`` (representable in it) towards
    ``direction`` (±inf), as float64."""
    x = np.asarray(x, np.float64).astype(dtype)
    with np.errstate(over="ignore"):
        return np.nextafter(x, np.asarray(direction, dtype)).astype(np.float64)


def _at_least(bound: float, dtype: np.dtype) -> float:
    """The smallest value of ``dtype`` ≥ ``bound``."""
    r = _rounded(bound, dtype)
    return float(_next(r, dtype, np.inf) if r < bound else r)


def _at_most(bound: float, dtype: np.dtype) -> float:
    """The largest value of ``dtype`` ≤ ``bound``."""
    r = _rounded(bound, dtype)
    return float(_next(r, dtype, -np.inf) if r > bound else r)


def legal_intervals(config_class: type, dtype: Any = jnp.float32,
                    bounds: Mapping[str, tuple[float, float]] | None = None,
                    ) -> dict[str, tuple[float, float]]:
    """[low, high] of each numeric field of ``config_class``: the values of
    ``dtype`` its own rules allow and that leave room for every field whose
    rule names it (``potential_reset < threshold``: threshold above the
    lowest legal V_r). ``bounds`` (field -> (low, high)) narrows fields
    further, e.g. a soma's :meth:`~spark_somas.models.somas.Soma.dtype_bounds`.

    Raises:
      ValueError: a field left with no legal value, named.
    """
    dtype = np.dtype(jnp.dtype(dtype))
    rules = configs.declared_rules(config_class)
    top = _at_most(min(configs.LARGEST, float(jnp.finfo(dtype).max)), dtype)
    low = {n: -top for n in rules}
    high = {n: top for n in rules}
    for name, rule in rules.items():
        if rule.op == "finite" or isinstance(rule.bound, str):
            continue
        if rule.op == ">=":
            low[name] = max(low[name], _at_least(rule.bound, dtype))
        elif rule.op == ">":
            low[name] = max(low[name], float(_next(_at_most(rule.bound, dtype), dtype, np.inf)))
        elif rule.op == "<":
            high[name] = min(high[name], float(_next(_at_least(rule.bound, dtype), dtype,
                                                     -np.inf)))
    for name, (lo, hi) in (bounds or {}).items():
        if name in rules:
            low[name] = max(low[name], _at_least(lo, dtype) if np.isfinite(lo) else lo)
            high[name] = min(high[name], _at_most(hi, dtype) if np.isfinite(hi) else hi)
    # Dependents first: a field's room is known before the field it names.
    for name in reversed(configs.rule_order(config_class)):
        rule = rules[name]
        if not isinstance(rule.bound, str):
            continue
        other = rule.bound
        if rule.op == "<":
            low[other] = max(low[other], float(_next(low[name], dtype, np.inf)))
        elif rule.op == ">":
            high[other] = min(high[other], float(_next(high[name], dtype, -np.inf)))
        elif rule.op == ">=":
            high[other] = min(high[other], high[name])
    for name in rules:
        if not low[name] <= high[name]:
            raise RuleError(rule_message(
                f"legal_params({config_class.__name__}): {name}", f"[{low[name]:g}, "
                f"{high[name]:g}] in {dtype.name}", "a field has a legal value: its rule, the "
                "rules that name it and the bounds given must leave room"))
    return {n: (low[n], high[n]) for n in rules}


def legal_params(config_class: type, *, units: int | Sequence[int] = 8,
                 dtype: Any = jnp.float32,
                 bounds: Mapping[str, tuple[float, float]] | None = None) -> Any:
    """A Hypothesis strategy of legal parameter sets of ``config_class``:
    field name -> a float64 array of shape ``units`` (one value per neuron;
    ``units=()`` gives one value per field), every value representable in
    ``dtype`` (the soma's ``param_dtype``) and every rule of the config
    obeyed there and in float64 (``ConfigClass(**values)`` and
    ``Soma(units=units, param_dtype=dtype, **values)`` accept it).

    Only the declared rules are read (:func:`~spark_somas.models.configs.quantity`,
    :class:`~spark_somas.models.configs.Rule`): the fields are drawn in
    dependency order (:func:`~spark_somas.models.configs.rule_order`), a
    field bounded by another after it; each field, per neuron, at a corner
    of its legal interval (±10^6, 10^-6, a bound, equality at the edge of a
    non-strict rule and the nearest value beyond a strict one's), near its
    default (a bounded field at about the defaults' distance from its
    bound), or anywhere in the representable range. ``bounds`` (field ->
    (low, high)) narrows fields beyond their rules: pass a soma's
    :meth:`~spark_somas.models.somas.Soma.dtype_bounds` to draw sets that a
    half-precision state also accepts.

    Raises:
      ImportError: Hypothesis is not installed.
      TypeError: ``config_class`` is not a config class.
      ValueError: a field has no legal value within ``bounds``.
    """
    hypothesis = _hypothesis()
    st = hypothesis.strategies
    require(isinstance(config_class, type) and issubclass(config_class, configs.SomaConfig),
            "legal_params: config_class", config_class,
            "a subclass of spark_somas.models.configs.SomaConfig", error=RuleTypeError)
    shape = as_units(units, "legal_params: units")
    require(jnp.dtype(dtype).name in PARAM_DTYPES, "legal_params: dtype", dtype,
            f"one of {PARAM_DTYPES} (a parameter dtype that holds ±10^6)", error=RuleError)
    dtype = np.dtype(jnp.dtype(dtype))
    rules = configs.declared_rules(config_class)
    intervals = legal_intervals(config_class, dtype, bounds)
    defaults = {f.name: _typical_value(f.default) for f in config_class.quantity_fields()}

    def between(lo: float, hi: float, log: bool) -> Any:
        if lo == hi:
            return st.just(lo)
        if log and lo > 0:
            return st.floats(math.log10(lo), math.log10(hi)).map(lambda e: 10.0 ** e)
        return st.floats(lo, hi)

    def inner(name: str, lo: float, hi: float, base: float | None, near: bool) -> Any:
        """Values of ``name`` in [lo, hi] (clipped later), near its default or anywhere."""
        rule = rules[name]
        if base is not None:  # a distance from the field the rule names
            sign = -1.0 if rule.op == "<" else 1.0
            typical = abs(defaults[name] - defaults[rule.bound]) or 1.0
            gap = (between(max(typical / 10, configs.SMALLEST), typical * 10, log=True) if near
                   else between(configs.SMALLEST, 2 * configs.LARGEST, log=True))
            return gap.map(lambda g: base + sign * g)
        default = min(max(defaults[name], lo), hi)
        if near and lo > 0:
            return between(max(lo, default / 10), min(hi, max(default * 10, lo * 10)), log=True)
        if near:
            spread = abs(default) + 10.0
            return between(max(lo, default - spread), min(hi, default + spread), log=False)
        return between(lo, hi, log=lo > 0)

    @st.composite
    def draw_set(draw: Any) -> dict[str, np.ndarray]:
        values: dict[str, np.ndarray] = {}
        for name in configs.rule_order(config_class):
            rule = rules[name]
            lo = np.full(shape, intervals[name][0])
            hi = np.full(shape, intervals[name][1])
            base = None
            if isinstance(rule.bound, str):
                base = values[rule.bound]
                if rule.op == "<":
                    hi = np.minimum(hi, _next(base, dtype, -np.inf))
                elif rule.op == ">":
                    lo = np.maximum(lo, _next(base, dtype, np.inf))
                else:
                    lo = np.maximum(lo, base)
            near = draw(st.booleans())  # this field near its default, or anywhere
            drawn = []
            for i in np.ndindex(shape):
                b = None if base is None else float(base[i])
                choices = inner(name, float(lo[i]), float(hi[i]), b, near)
                corner = st.sampled_from([float(lo[i]), float(hi[i])])
                drawn.append(draw(st.one_of(corner, choices, choices)))
            # Rounded to the dtype, then kept within the interval, whose ends it holds.
            values[name] = np.clip(_rounded(np.reshape(drawn, shape), dtype), lo, hi)
        return {n: values[n] for n in rules}

    return draw_set()


def _typical_value(default: Any) -> float:
    """A field's default as one number (its mean; 0 for an initializer)."""
    if configs.is_initializer(default):
        return 0.0
    return float(np.mean(np.asarray(default, np.float64)))


def _described(params: Mapping[str, Any] | None) -> str:
    if not params:
        return ""
    shown = {n: np.asarray(v).tolist() for n, v in params.items()}
    return f" with parameters {shown}"


@contextlib.contextmanager
def _capability(model: type, what: str, params: Mapping[str, Any] | None = None,
                **context: Any) -> Iterator[None]:
    """Turns any failure inside into an AssertionError naming the model, the
    capability, the parameter set and the context (method, dtype, dt)."""
    try:
        yield
    except Exception as err:
        where = "".join(f", {k} = {v}" for k, v in context.items())
        raise AssertionError(f"check_model({model.__name__}): {what} failed{where}"
                             f"{_described(params)}: {type(err).__name__}: {err}") from err


def _assert_finite(tree: Any, what: str) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        values = np.asarray(leaf, np.float64)
        bad = ~np.isfinite(values)
        assert not bad.any(), (f"{what} {jax.tree_util.keystr(path)} is not finite at "
                               f"{np.argwhere(bad)[:3].tolist()}")


def _assert_spikes(spikes: Any) -> None:
    values = set(np.unique(np.asarray(spikes, np.float64)).tolist())
    assert values <= {0.0, 1.0}, f"spikes take values {sorted(values)}, not only 0 and 1"


def _loss(soma: Soma, x: jax.Array) -> tuple[jax.Array, Any]:
    """Spike count plus mean potential: a loss through both outputs."""
    rec = simulate(soma, x)
    return (jnp.sum(rec.spikes.astype(jnp.float32))
            + jnp.mean(rec.potential.astype(jnp.float32))), rec


# ∂_loss/∂(soma, x) and the run, as one compiled program (eager, the forward and
# backward passes would compile operation by operation).
_gradients = nnx.jit(nnx.grad(_loss, argnums=(0, 1), has_aux=True))


def _drive(soma: Soma, steps: int, seed: int) -> np.ndarray:
    """(steps, *units) currents around 2× the model's input scale (pA)."""
    scale = abs(input_scale(soma)) or 1.0
    rng = np.random.default_rng(seed)
    return (2.0 * scale * (1.0 + 0.5 * rng.standard_normal((steps,) + soma.units))).astype(
        np.float32)


#: log10 of the gain beyond which a run may carry a gradient past float32's
#: range (3.4·10^38) by its own dynamics, with room for the loss's factors.
OVERFLOWING_GAIN = 30.0


def amplification(soma: Soma, currents: Any) -> float:
    """log10 of the largest gain a run of ``soma`` over ``currents`` (pA,
    time-major) can give a gradient travelling back through it: the
    largest product, over any stretch of consecutive steps, of the ∞-norm
    of one step's Jacobian ∂x_{t+1}/∂x_t with respect to the state (the
    surrogate's derivative and the gradient switches included, in
    float32, along the run's own trajectory). The soma's state is left as
    it was.

    An upper bound: where it exceeds :data:`OVERFLOWING_GAIN` the true
    gradient of a loss of the run may exceed float32 and come out inf or
    NaN, as the forward-Euler map beyond dt > τ (abs(1 − dt/τ) per step) or a
    spike that feeds back on its own threshold (the adaptive LIF's
    abs(e^(−dt/τ_a) − β·σ') per step) do. 0 for a model with a state variable
    that is not recordable (the trajectory is unknown).
    """
    model = type(soma)
    names = tuple(n for n, v in model.state_variables.items() if not v.integer)
    if not all(v.recordable for v in model.state_variables.values()):
        return 0.0
    probe = nnx.clone(soma)
    start = {n: jnp.asarray(v, jnp.float32 if n in names else v.dtype)
             for n, v in probe.neuron_state().items() if n in model.state_names}
    rec = simulate(probe, currents, record=("spikes",) + model.state_names)
    trajectory = {n: jnp.concatenate([jnp.broadcast_to(start[n], rec[n].shape[1:])[None],
                                      jnp.asarray(rec[n][:-1], start[n].dtype)])
                  for n in model.state_names}
    params = {k: jnp.asarray(v, jnp.float32) for k, v in soma.parameters().items()}
    currents = jnp.asarray(currents, jnp.float32)
    shape = trajectory[model.membrane].shape[1:]

    def advance(params: dict, flat: jax.Array, current: jax.Array, counters: dict) -> jax.Array:
        state = {n: v.reshape(shape) for n, v in zip(names, jnp.split(flat, len(names)))}
        new, _ = step(model, params, {**state, **counters}, current, soma.options)
        return jnp.concatenate([new[n].ravel() for n in names])

    flat = jnp.concatenate([trajectory[n].reshape(len(currents), -1) for n in names], axis=1)
    counters = {n: trajectory[n] for n in model.state_names if n not in names}
    # Jitted: one compiled program instead of one per operation of the step's Jacobian.
    jacobians = jax.jit(jax.vmap(jax.jacrev(advance, argnums=1), in_axes=(None, 0, 0, 0)))(
        params, flat, jnp.broadcast_to(currents, (len(currents),) + shape), counters)
    gains = np.log10(np.maximum(np.asarray(jnp.max(jnp.sum(jnp.abs(jacobians), -1), -1),
                                           np.float64), 1e-300))
    best = running = 0.0  # the largest sum over a stretch of steps (Kadane)
    for g in np.nan_to_num(gains, nan=np.inf):
        running = max(0.0, running + g)
        best = max(best, running)
    return float(best)


def assert_finite_gradients(soma: Soma, currents: Any, grads: Mapping[str, Any],
                            params: Mapping[str, Any] | None = None) -> None:
    """Asserts that ``grads`` (name -> pytree) of a loss of ``soma``'s run
    over ``currents`` are finite wherever the run is one whose gradient
    can be represented: the step is stable — dt ≤ every time constant
    (beyond, the explicit map's true gradient grows as abs(1 − dt/τ)^T), or
    the exponential Euler — and the run's :func:`amplification` stays below
    :data:`OVERFLOWING_GAIN`. ``soma`` is at the state the run started
    from (it is not changed).

    Raises:
      AssertionError: a non-finite gradient of a representable run.
    """
    taus = [float(np.min(params[n] if params else soma.parameters()[n]))
            for n in type(soma).config_class.time_constant_fields()]
    if soma.method != "exponential_euler" and soma.dt > min(taus, default=np.inf):
        return
    try:
        _assert_finite(grads, "gradient")
    except AssertionError as err:
        gain = amplification(soma, currents)
        if gain <= OVERFLOWING_GAIN:
            raise AssertionError(f"{err}, though the run amplifies a gradient by at most "
                                 f"10^{gain:.1f}") from None


def check_model(model: type[Soma], *, units: int = 3, steps: int = 20, dt: float = 0.1,
                examples: int = 8, methods: Sequence[str] = integrators.METHODS,
                dtypes: Sequence[Any] = (jnp.float32, jnp.bfloat16, jnp.float16),
                dts: Sequence[float] = (0.1, 1.0)) -> None:
    """Runs soma class ``model`` through every capability the package
    promises a registered model, each one checked:

    * ``simulate``: its defaults over ``steps`` steps of a current around
      twice its ``input_scale`` (pA): spikes 0/1, potential finite, both in
      the state dtype, shaped ``(steps, *units)``;
    * ``state shapes``: the state is ``(*units)`` at rest, takes a batch
      ``(2, *units)`` from a batched current, and ``reset(batch_shape)``
      gives ``(*batch_shape, *units)`` in the state dtype;
    * every integration method of ``methods`` (:data:`~spark_somas.dynamics.integrators.METHODS`):
      finite and 0/1 spikes;
    * ``gradient``: ``jax.grad`` of spikes and potential with respect to the
      input and the ``default_trainable`` fields, finite;
    * ``network``: a recurrent :class:`~spark_somas.training.network.SpikingNetwork`
      of the model with trainable neurons, finite logits and gradients;
    * ``checkpoint``: saved mid-run and loaded (in a temporary directory),
      it continues exactly as an uninterrupted run; the class must be
      registered (:func:`~spark_somas.models.registry.register_soma`);
    * ``legal space``: ``examples`` Hypothesis examples (derandomised, no
      shrinking), each a parameter set of :func:`legal_params` with a
      method, a state dtype of ``dtypes``, a dt of ``dts`` and an input
      (ordinary, ±10^6 to 10^30 pA, the dtype's largest, an isolated ±inf):
      forward values finite, spikes 0/1, outputs and state in the state
      dtype; gradients (input, and every field unless float16) finite
      wherever the run's gradient is representable
      (:func:`assert_finite_gradients`).

    Raises:
      AssertionError: naming the capability that failed, with the method,
        dtype, dt and parameter set where one was drawn.
      ImportError: Hypothesis is not installed.
    """
    require(isinstance(model, type) and issubclass(model, Soma) and bool(model.state_variables),
            "check_model: model", model, "a soma class (a Soma subclass that declares its "
            "state_variables)", error=RuleTypeError)
    shape = as_units(units, "check_model: units")
    for name, value in (("steps", steps), ("examples", examples)):
        require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"check_model: {name}", value, "a positive int", error=RuleError)
    bad = sorted(set(methods) - set(integrators.METHODS))
    require(bool(methods) and not bad, "check_model: methods", list(methods),
            f"a non-empty selection of {integrators.METHODS}", error=RuleError)
    with _capability(model, "construction with the defaults"):
        soma = model(units=shape, dt=dt)
    _check_simulate(model, soma, steps)
    for method in methods:
        with _capability(model, "simulate", method=method):
            soma = model(units=shape, dt=dt, method=method)
            rec = simulate(soma, _drive(soma, steps, 1))
            _assert_finite((rec.spikes, rec.potential, soma.neuron_state()), "forward")
            _assert_spikes(rec.spikes)
    with _capability(model, "gradient", trainable=model.default_trainable):
        soma = model(units=shape, dt=dt, trainable=model.default_trainable)
        x = jnp.asarray(_drive(soma, steps, 2))
        (grad_soma, grad_x), _ = _gradients(soma, x)
        _assert_finite(grad_x, "d/dI")
        _assert_finite(nnx.state(grad_soma, nnx.Param), "d/dparam")
    _check_network(model, steps)
    _check_checkpoint(model, shape, dt, steps)
    _check_legal_space(model, shape, steps, examples, methods, dtypes, dts)


def _check_simulate(model: type[Soma], soma: Soma, steps: int) -> None:
    with _capability(model, "simulate"):
        rec = simulate(soma, _drive(soma, steps, 0))
        assert rec.spikes.shape == rec.potential.shape == (steps,) + soma.units, (
            f"outputs shaped {rec.spikes.shape}, {rec.potential.shape}, not "
            f"{(steps,) + soma.units}")
        assert rec.spikes.dtype == rec.potential.dtype == soma.dtype, (
            f"outputs in {rec.spikes.dtype}, {rec.potential.dtype}, not the state's {soma.dtype}")
        _assert_finite((rec.spikes, rec.potential), "forward")
        _assert_spikes(rec.spikes)
    with _capability(model, "state shapes"):
        soma.reset()
        assert soma.state_shape == soma.units, f"state at rest {soma.state_shape}"
        simulate(soma, np.broadcast_to(_drive(soma, 3, 0)[:, None], (3, 2) + soma.units))
        assert soma.state_shape == (2,) + soma.units, f"state after a batch {soma.state_shape}"
        soma.reset((4,))
        assert soma.state_shape == (4,) + soma.units, f"state after reset((4,)) {soma.state_shape}"
        for name, value in soma.neuron_state().items():
            assert value.shape == (4,) + soma.units, f"{name} shaped {value.shape}"
            integer = model.state_variables[name.removesuffix("_residual")].integer
            assert integer or value.dtype == soma.dtype, f"{name} in {value.dtype}"


def _check_network(model: type[Soma], steps: int) -> None:
    from spark_somas.training.network import SpikingNetwork

    with _capability(model, "network (recurrent, trainable neurons)"):
        net = SpikingNetwork(3, 4, 2, soma=model, recurrent=True, trainable_neurons=True,
                             rngs=nnx.Rngs(0))
        x = jnp.asarray(np.random.default_rng(0).uniform(0.0, 1.0, (steps, 2, 3)), jnp.float32)

        def loss(net: SpikingNetwork) -> tuple[jax.Array, Any]:
            out = net(x)
            return jnp.sum(out.logits) + sum(jnp.sum(s) for s in out.layer_spikes), out

        grads, out = nnx.grad(loss, has_aux=True)(net)
        _assert_finite(out.logits, "logits")
        for spikes in out.layer_spikes:
            _assert_spikes(spikes)
        _assert_finite(nnx.state(grads, nnx.Param), "d/dparam")


def _check_checkpoint(model: type[Soma], shape: tuple[int, ...], dt: float, steps: int) -> None:
    from spark_somas.persistence.checkpointing import Checkpointer, load

    with _capability(model, "checkpoint round trip"):
        try:
            registered = registry.soma_class(model.__name__) is model
        except SparkSomasError:  # no class of that name
            registered = False
        assert registered, ("the class is not registered under its name: call "
                            "spark_somas.models.registry.register_soma first")
        soma = model(units=shape, dt=dt)
        x = _drive(soma, 2 * steps, 3)
        first = simulate(soma, x[:steps])
        with tempfile.TemporaryDirectory() as directory:
            with Checkpointer(directory, async_save=False) as ckpt:
                ckpt.save(steps, soma)
            resumed = load(directory)
        assert type(resumed) is model, f"loaded a {type(resumed).__name__}"
        rest = simulate(resumed, x[steps:])
        whole = simulate(model(units=shape, dt=dt), x)
        np.testing.assert_array_equal(np.concatenate([first.spikes, rest.spikes]), whole.spikes)
        np.testing.assert_array_equal(np.concatenate([first.potential, rest.potential]),
                                      whole.potential)


def _currents(st: Any, steps: int, shape: tuple[int, ...], dtype: Any, scale: float) -> Any:
    """(steps, *shape) input currents (pA) of one kind: ordinary, huge, the
    dtype's largest, or ordinary with one ±inf."""
    top = float(jnp.finfo(dtype).max)

    def make(kind: str, seed: int, huge: float, sign: float) -> np.ndarray:
        rng = np.random.default_rng(seed)
        size = (steps,) + shape
        if kind == "ordinary":
            return 2.0 * scale * (1.0 + rng.standard_normal(size))
        if kind in ("huge", "dtype max"):
            amplitude = min(huge, top) if kind == "huge" else top
            return amplitude * rng.choice([-1.0, 1.0], size)
        x = 2.0 * scale * (1.0 + rng.standard_normal(size))
        x.flat[int(rng.integers(x.size))] = sign * np.inf
        return x

    return st.builds(make, st.sampled_from(["ordinary", "huge", "dtype max", "isolated inf"]),
                     st.integers(0, 2**16), st.sampled_from([1e6, 1e12, 1e30]),
                     st.sampled_from([1.0, -1.0]))


def _check_legal_space(model: type[Soma], shape: tuple[int, ...], steps: int, examples: int,
                       methods: Sequence[str], dtypes: Sequence[Any],
                       dts: Sequence[float]) -> None:
    hypothesis = _hypothesis()
    st = hypothesis.strategies
    fields = tuple(f.name for f in model.config_class.quantity_fields())
    scale = abs(input_scale(model(units=1))) or 1.0

    @hypothesis.settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                         phases=(hypothesis.Phase.explicit, hypothesis.Phase.generate),
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(data=st.data())
    def legal_space(data: Any) -> None:
        method = data.draw(st.sampled_from(list(methods)), "method")
        dtype = jnp.dtype(data.draw(st.sampled_from(list(dtypes)), "dtype"))
        dt = data.draw(st.sampled_from(list(dts)), "dt")
        reference = model(units=1, dt=dt, dtype=dtype, __skip_validation__=True)
        params = data.draw(legal_params(model.config_class, units=shape,
                                        bounds=reference.dtype_bounds()), "params")
        x = jnp.asarray(data.draw(_currents(st, steps, shape, dtype, scale), "currents"), dtype)
        with _capability(model, "legal space", params, method=method, dtype=dtype.name, dt=dt):
            soma = model(units=shape, dt=dt, dtype=dtype, method=method, trainable=fields,
                         **params)
            (grad_soma, grad_x), rec = _gradients(soma, x)
            _assert_finite((rec.spikes, rec.potential, soma.neuron_state()), "forward")
            _assert_spikes(rec.spikes)
            assert rec.spikes.dtype == rec.potential.dtype == dtype, "outputs changed dtype"
            for name, value in soma.neuron_state().items():
                integer = model.state_variables[name.removesuffix("_residual")].integer
                assert integer or value.dtype == dtype, f"state {name} in {value.dtype}"
            grads = {"d/dI": grad_x}
            if dtype != jnp.float16:  # a float16 parameter gradient may exceed the format
                grads["d/dparam"] = nnx.state(grad_soma, nnx.Param)
            assert_finite_gradients(model(units=shape, dt=dt, method=method, **params), x,
                                    grads, params)

    legal_space()
