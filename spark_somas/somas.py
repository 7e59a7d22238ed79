"""The four exponential integrate-and-fire somas as Flax NNX modules.

One forward-Euler step of size dt (ms), with input current I (pA):

    ExpIF:  V' = V + dt/τ_m · ( -(V - E_L) + Δ_T·exp((V - V_T - θ)/Δ_T) - R·w + R·I )
    AdEx:   w' = w + dt/τ_w · ( a·(V - E_L) - w )          (V: before this step)
    spike = V' > V_th + θ   →   V' ← V_r ;  w' ← w' + b
    θ' = θ·exp(-dt/τ_θ) + Δθ·spike                          (simplified AdEx)

w and θ are zero for the models that lack them. Order inside a step:
integrate, detect, reset (Brian2's and NEST's), so spike times agree with
Brian2's ``method='euler'`` to the step. On a refractory step (Brian2's
convention, n = floor(t_ref/dt + 1e-3): after a spike at step k, steps
k+1 … k+n-1) V is held, the input ignored and no spike emitted; θ still
decays. :mod:`spark_somas.numerics` explains how the exponential is tamed.

State lives in :class:`SomaState` Variables, trained fields in ``nnx.Param``,
the other fields in :class:`SomaConstant`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spark_somas import configs
from spark_somas import numerics
from spark_somas import surrogates as surrogates_lib

__all__ = [
    "SomaState",
    "SomaConstant",
    "SomaOutput",
    "exponential_step",
    "iter_somas",
    "ExponentialSoma",
    "RefractoryExponentialSoma",
    "AdaptiveExponentialSoma",
    "SimplifiedAdaptiveExponentialSoma",
]

Array = jax.Array


class SomaState(nnx.Variable):
    """Running neuron state: potential V (mV), adaptation w (pA), refractory
    counter (steps still to skip, int32) and threshold offset θ (mV)."""


class SomaConstant(nnx.Variable):
    """A config field that is not trained: an optimizer never sees it."""


@flax.struct.dataclass
class SomaOutput:
    """What a step (or, stacked time-major, a run) reports.

    ``spikes`` are 0/1 and ``potential`` is V after any reset (mV), both in
    the state dtype. ``adaptation``, ``threshold_offset`` and ``refractory``
    are filled by :func:`spark_somas.simulate` when recorded, else None.
    """

    spikes: Array
    potential: Array
    adaptation: Array | None = None
    threshold_offset: Array | None = None
    refractory: Array | None = None


_TIME_CONSTANTS = ("potential_tau", "adaptation_tau", "threshold_tau")
STATE_UNITS = {"potential": "mV", "adaptation": "pA", "refractory": "steps", "threshold_offset": "mV"}


def refractory_steps(cooldown: Array, dt: float) -> Array:
    """n = floor(t_ref/dt + 1e-3), Brian2's count of refractory steps (int32,
    saturated at 2^30 so that it never wraps)."""
    return jnp.minimum(jnp.floor(cooldown / dt + 1e-3), 2.0**30).astype(jnp.int32)


RESIDUAL = "_residual"


def residual_names(state_names: Sequence[str], dtype: Any) -> tuple[str, ...]:
    """The low words of a compensated (half-precision) state, see
    :mod:`spark_somas.numerics`; none in float32 and wider."""
    if not numerics.is_compensated(dtype):
        return ()
    return tuple(n + RESIDUAL for n in state_names if n != "refractory")


def exponential_step(
    params: Mapping[str, Array],
    state: Mapping[str, Array],
    current: Array,
    *,
    dt: float,
    surrogate: surrogates_lib.Surrogate,
    detach_reset: bool,
) -> tuple[dict[str, Array], Array]:
    """One Euler step of any of the four models; a pure function.

    ``params`` maps config field names to values (mV, ms, GΩ, pA, nS);
    ``state`` holds ``potential`` and, by model, ``adaptation``,
    ``refractory`` and ``threshold_offset`` — which keys are present selects
    the model's terms — plus the low words ``*_residual`` of a compensated
    half-precision state. Returns the new state (same keys and dtypes) and
    the spikes. :mod:`spark_somas.numerics` explains each guard.
    """
    dtype = state["potential"].dtype
    wide = numerics.compute_dtype(dtype)

    def param(name: str) -> Array:
        return params[name].astype(wide)

    def read(name: str) -> Array:
        if name + RESIDUAL in state:
            return numerics.join(state[name], state[name + RESIDUAL], wide)
        return numerics.widen(state[name], wide)

    e_l, v_r, v_th, v_t, delta_t, tau_m, resistance = (param(n) for n in (
        "potential_rest", "potential_reset", "threshold", "rheobase_threshold", "spike_slope",
        "potential_tau", "resistance"))
    rate = dt / tau_m
    v = read("potential")
    theta = read("threshold_offset") if "threshold_offset" in state else 0.0
    # Saturated before and after the product: R·I is finite for I = ±inf (no
    # 0·inf in its gradient) and is rounded on its own, as in Brian2.
    drive = numerics.saturate(resistance * numerics.saturate(numerics.widen(current, wide)))
    if "adaptation" in state:
        w = read("adaptation")
        drive = drive - resistance * w
    runaway = delta_t * numerics.capped_exp((v - v_t - theta) / delta_t, rate * delta_t)
    v_new = v + rate * (-(v - e_l) + runaway + drive)
    s = surrogates_lib.spike(v_new - (v_th + theta), surrogate)
    if "refractory" in state:
        refractory = state["refractory"] > 0
        v_new = jnp.where(refractory, v, v_new)
        s = jnp.where(refractory, 0.0, s)
    s_reset = jax.lax.stop_gradient(s) if detach_reset else s
    new = {"potential": v_new * (1.0 - s_reset) + v_r * s_reset}
    if "adaptation" in state:
        w_new = w + dt / param("adaptation_tau") * (param("adaptation_subthreshold") * (v - e_l) - w)
        new["adaptation"] = w_new + param("adaptation_delta") * s_reset
    if "threshold_offset" in state:
        decay = jnp.exp(-dt / param("threshold_tau"))
        new["threshold_offset"] = theta * decay + param("threshold_delta") * s_reset
    out = {}
    for name, value in new.items():
        if name + RESIDUAL in state:
            out[name], out[name + RESIDUAL] = numerics.split(value, dtype)
        else:
            out[name] = numerics.narrow(value, state[name].dtype)
    if "refractory" in state:
        counter = state["refractory"]
        out["refractory"] = jnp.where(
            s > 0,
            jnp.maximum(refractory_steps(param("cooldown"), dt) - 1, 0),
            jnp.maximum(counter - 1, 0),
        ).astype(counter.dtype)
    return out, s.astype(dtype)


def iter_somas(model: Any) -> Iterator[tuple[tuple, "ExponentialSoma"]]:
    """(path, soma) for every soma in an NNX module tree, ``model`` included."""
    for path, node in nnx.iter_graph(model):
        if isinstance(node, ExponentialSoma):
            yield path, node


def _as_units(units: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(units, (int, np.integer)):
        shape = (units,)
    else:
        try:
            shape = None if isinstance(units, (str, bytes)) else tuple(units)
        except TypeError:
            shape = None
    if shape is None or not all(isinstance(u, (int, np.integer)) and not isinstance(u, bool) and u > 0
                            for u in shape):
        raise ValueError(f"units = {units!r} violates the rule: an int or a tuple of positive ints")
    return tuple(int(u) for u in shape)


def _batch_of(shape: tuple[int, ...], units: tuple[int, ...]) -> tuple[int, ...]:
    return shape[: len(shape) - len(units)]


class ExponentialSoma(nnx.Module):
    """Exponential integrate-and-fire soma (Fourcaud-Trocmé et al. 2003).

    .. math:: τ_m \\dot V = -(V - E_L) + Δ_T e^{(V - V_T)/Δ_T} + R I,
       \\quad V > V_{th} ⇒ V ← V_r

    Args:
      config: the soma's config; None gives the defaults.
      units: neurons, an int or a shape tuple.
      dt: time step (ms).
      trainable: config fields that become per-neuron ``nnx.Param``\\ s.
      dtype: dtype of the state and the outputs.
      param_dtype: dtype of the config fields.
      rngs: needed when a field is an initializer (draws ``rngs.params()``).
      **field_overrides: config fields to replace, e.g. ``potential_tau=20.0``.
    """

    config_class: ClassVar[type[configs.ExponentialSomaConfig]] = configs.ExponentialSomaConfig
    state_names: ClassVar[tuple[str, ...]] = ("potential",)

    def __init__(
        self,
        config: configs.ExponentialSomaConfig | None = None,
        *,
        units: int | Sequence[int],
        dt: float = 0.1,
        trainable: Sequence[str] = (),
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs | None = None,
        **field_overrides: Any,
    ):
        name = type(self).__name__
        config = self.config_class() if config is None else config
        ignored = sorted({f.name for f in dataclasses.fields(config)}
                         - {f.name for f in dataclasses.fields(self.config_class)})
        if not isinstance(config, self.config_class) or ignored:
            raise configs.ConfigError(
                f"{name}(config=...) got a {type(config).__name__}; it takes its own config "
                f"class, {self.config_class.__name__}"
                + (f" ({name} has no use for {ignored})" if ignored else "")
            )
        fields = [f.name for f in config.quantity_fields()]
        known = {f.name for f in dataclasses.fields(config)}
        unknown = sorted(set(field_overrides) - known)
        if unknown:
            raise configs.ConfigError(f"{name} has no config field(s) {unknown}; known: {sorted(known)}")
        if field_overrides:
            config = config.replace(**field_overrides)
        trainable = (trainable,) if isinstance(trainable, str) else tuple(trainable)
        bad = sorted(set(trainable) - set(fields))
        if bad:
            raise configs.ConfigError(
                f"{name}: trainable = {bad} violates the rule: each must be a numeric config "
                f"field, one of {fields}"
            )
        if not (isinstance(dt, (int, float, np.integer, np.floating)) and not isinstance(dt, bool)
                and configs.SMALLEST <= dt <= configs.LARGEST):
            raise ValueError(f"{name}: dt = {dt!r} ms violates the rule: "
                             f"{configs.SMALLEST:g} ≤ dt ≤ {configs.LARGEST:g}")
        for label, dt_ in (("dtype", dtype), ("param_dtype", param_dtype)):
            if not jnp.issubdtype(dt_, jnp.floating):
                raise ValueError(f"{name}: {label} = {dt_!r} violates the rule: a floating dtype")
        self.units = _as_units(units)
        self.dt = float(dt)
        self.trainable = trainable
        self.dtype = jnp.dtype(dtype)
        self.param_dtype = jnp.dtype(param_dtype)
        self.config = config

        values = {n: self._materialize(n, getattr(config, n), n in trainable, rngs) for n in fields}
        # Under a trace (a soma built inside jit) drawn values cannot be read;
        # the config's own values were checked when it was built.
        if config.validated and not any(isinstance(v, jax.core.Tracer) for v in values.values()):
            config.validate({n: np.asarray(v, np.float64) for n, v in values.items()})
        for n, v in values.items():
            meta = {"units": config.field_info(n)["units"]}
            setattr(self, n, nnx.Param(v, **meta) if n in trainable else SomaConstant(v, **meta))
        problem = numerics.resolution_problem(self.dtype, self.dt, {
            n: float(np.max(np.asarray(values[n], np.float64))) for n in _TIME_CONSTANTS
            if n in values and not isinstance(values[n], jax.core.Tracer)})
        if problem:
            raise ValueError(f"{name}: {problem}")
        self.residual_names = residual_names(self.state_names, self.dtype)
        for n in self.state_names + self.residual_names:
            units = STATE_UNITS[n.removesuffix(RESIDUAL)]
            setattr(self, n, SomaState(self._rest_value(n, ()), units=units))

    def _materialize(self, name: str, value: Any, trainable: bool, rngs: nnx.Rngs | None) -> Array:
        if configs.is_initializer(value):
            if rngs is None:
                raise configs.ConfigError(
                    f"{type(self).__name__}: {name} is an initializer; pass rngs=nnx.Rngs(seed)"
                )
            value = value(rngs.params(), self.units, self.param_dtype)
        arr = jnp.asarray(value, self.param_dtype)
        try:
            full = jnp.broadcast_to(arr, self.units)
        except ValueError:
            raise configs.ConfigError(
                f"{type(self).__name__}: {name} has shape {arr.shape}, which does not "
                f"broadcast to units {self.units}"
            ) from None
        return full if trainable else arr

    def _rest_value(self, name: str, batch_shape: tuple[int, ...]) -> Array:
        shape = tuple(batch_shape) + self.units
        if name == "potential" or name == "potential" + RESIDUAL:
            rest = jnp.broadcast_to(self.potential_rest[...], shape).astype(
                numerics.compute_dtype(self.dtype))
            return numerics.split(rest, self.dtype)[name != "potential"]
        if name == "refractory":
            return jnp.zeros(shape, jnp.int32)
        return jnp.zeros(shape, self.dtype)

    def reset(self, batch_shape: Sequence[int] | None = None) -> None:
        """Back to rest (V = E_L, w = 0, no refractoriness, θ = 0), shape
        ``(*units)`` or ``(*batch_shape, *units)``. Keeps the state dtype."""
        batch = () if batch_shape is None else tuple(batch_shape)
        for n in self.state_names + self.residual_names:
            var = getattr(self, n)
            var.set_value(self._rest_value(n, batch).astype(var[...].dtype))

    def neuron_state(self) -> dict[str, Array]:
        """The running state as a dict of arrays (a snapshot), low words of a
        compensated half-precision state included."""
        return {n: getattr(self, n)[...] for n in self.state_names + self.residual_names}

    def parameters(self) -> dict[str, Array]:
        """Every config field's current value (trained or fixed), by name."""
        return {f.name: getattr(self, f.name)[...] for f in self.config.quantity_fields()}

    def broadcast_state(self, current_shape: Sequence[int]) -> tuple[int, ...]:
        """Broadcasts the state to a current's batch shape; returns that batch shape.

        Raises ValueError naming both shapes when they cannot broadcast.
        """
        current_shape = tuple(current_shape)
        n = len(self.units)
        if current_shape[len(current_shape) - n:] != self.units or len(current_shape) < n:
            raise ValueError(
                f"{type(self).__name__}: a current of shape {current_shape} must have shape "
                f"(*units) or (*batch, *units) with units = {self.units}"
            )
        state_shape = tuple(self.potential[...].shape)
        try:
            batch = tuple(np.broadcast_shapes(_batch_of(state_shape, self.units),
                                              _batch_of(current_shape, self.units)))
        except ValueError:
            raise ValueError(
                f"{type(self).__name__}: current of shape {current_shape} cannot broadcast "
                f"with the neuron state of shape {state_shape}"
            ) from None
        if batch + self.units != state_shape:
            for name in self.state_names + self.residual_names:
                var = getattr(self, name)
                var.set_value(jnp.broadcast_to(var[...], batch + self.units))
        return batch

    def __call__(self, current: Array) -> SomaOutput:
        """One step with input ``current`` (pA), shape ``(*units)`` or ``(*batch, *units)``."""
        current = jnp.asarray(current)
        if jnp.issubdtype(current.dtype, jnp.complexfloating):
            raise ValueError(f"{type(self).__name__}: a current of dtype {current.dtype} violates "
                             "the rule: real values (pA)")
        if not jnp.issubdtype(current.dtype, jnp.floating):
            current = current.astype(self.dtype)
        self.broadcast_state(current.shape)
        state = self.neuron_state()
        new, spikes = exponential_step(
            self.parameters(), state, current, dt=self.dt,
            surrogate=self.config.surrogate, detach_reset=self.config.detach_reset,
        )
        for name, value in new.items():
            getattr(self, name)[...] = jnp.broadcast_to(value, state[name].shape)
        return SomaOutput(spikes=jnp.broadcast_to(spikes, state["potential"].shape),
                          potential=self.potential[...])

    def rows(self) -> list[tuple[str, ...]]:
        """(field, symbol, value, units, meaning), with current values and
        trained fields marked."""
        out = []
        for (name, symbol, _, units, doc) in self.config.rows():
            value = getattr(self, name)[...]
            tag = " (trained)" if name in self.trainable else ""
            out.append((name, symbol, configs.format_value(np.asarray(value, np.float64)) + tag,
                        units, doc))
        return out

    def __repr__(self) -> str:
        shape = tuple(self.potential[...].shape)
        head = f"units={self.units}, dt={self.dt} ms, state={shape} {self.dtype.name}"
        body = ", ".join(f"{n}={v} {u}" for n, _, v, u, _ in self.rows())
        return f"{type(self).__name__}({head}, {body}, surrogate={self.config.surrogate!r})"

    def _repr_html_(self) -> str:
        return configs.html_table(
            f"{type(self).__name__}(units={self.units})", self.rows(),
            [("dt", f"{self.dt} ms"), ("state", f"{tuple(self.potential[...].shape)} {self.dtype.name}"),
             ("surrogate", repr(self.config.surrogate))],
        )


class RefractoryExponentialSoma(ExponentialSoma):
    """ExpIF with an absolute refractory period ``cooldown`` (ms), Brian2's
    convention: after a spike at step k, steps k+1 … k+n-1 hold V at V_r,
    ignore the input and cannot spike (n = floor(t_ref/dt + 1e-3)); the
    shortest interspike interval is max(n, 1) steps. The counter counts
    down and saturates at 0, so it never wraps."""

    config_class = configs.RefractoryExponentialSomaConfig
    state_names = ("potential", "refractory")


class AdaptiveExponentialSoma(ExponentialSoma):
    """Adaptive exponential integrate-and-fire (Brette & Gerstner 2005).

    .. math:: τ_m \\dot V = -(V - E_L) + Δ_T e^{(V - V_T)/Δ_T} - R w + R I,
       \\quad τ_w \\dot w = a (V - E_L) - w,
       \\quad V > V_{th} ⇒ V ← V_r,\\ w ← w + b
    """

    config_class = configs.AdaptiveExponentialSomaConfig
    state_names = ("potential", "adaptation")


class SimplifiedAdaptiveExponentialSoma(RefractoryExponentialSoma):
    """Refractory ExpIF with an adaptive threshold offset θ (mV) in place of w.

    A step integrates with V_T + θ, detects against V_th + θ, resets, then
    θ ← θ·exp(-dt/τ_θ) + Δθ·spike; θ decays on refractory steps too.
    """

    config_class = configs.SimplifiedAdaptiveExponentialSomaConfig
    state_names = ("potential", "refractory", "threshold_offset")
