"""The four exponential integrate-and-fire somas as Flax NNX modules.

Each soma class states its own equations, in relaxation form τ_x·dx/dt =
F_x for each integrated variable (``time_constants`` and ``drives``), its
threshold and its reset; one shared pure function, :func:`step`, applies
them: integrate (:mod:`spark_somas.dynamics.integrators`, forward Euler by default),
detect, gate refractoriness, reset. With input current I (pA) held over the
step, units mV, ms, pA, GΩ, nS::

    ExpIF:   τ_m dV/dt = −(V − E_L) + Δ_T·exp((V − V_T)/Δ_T) + R·I
    AdEx:    τ_m dV/dt = −(V − E_L) + Δ_T·exp((V − V_T)/Δ_T) − R·w + R·I
             τ_w dw/dt = a·(V − E_L) − w
    spike = V > V_th   →   V ← V_r ;  AdEx: w ← w + b
    simplified AdEx: V_T and V_th shifted by θ, then θ ← θ·exp(−dt/τ_θ) + Δθ·spike

Order inside a step: integrate, detect, reset (Brian2's and NEST's), so
spike times agree with Brian2's method of the same name to the step. On a
refractory step (Brian2's convention, n = floor(t_ref/dt + 1e-3): after a
spike at step k, steps k+1 … k+n−1) V is held, the input ignored and no
spike emitted; θ still decays. :mod:`spark_somas.dynamics.numerics` explains how the
exponential is tamed and half precision kept faithful.

State lives in :class:`SomaState` Variables, trained fields in ``nnx.Param``,
the other fields in :class:`SomaConstant`.

**The model protocol.** :class:`Soma` is the base of every model and
assumes nothing about the exponential. A model is one subclass that
declares, in its own class body: its config class (a
:class:`~spark_somas.models.configs.SomaConfig` with :func:`~spark_somas.models.configs.quantity`
fields), its ``state_variables`` (:class:`StateVariable`: unit, value at
rest, integrated or event-only, recordable), ``time_constants`` and
``drives`` of the integrated variables, ``spike_threshold``,
``after_spike`` (the reset), ``default_trainable`` fields, ``input_scale``
(the current a network's input gain is measured in) and ``cell_scale`` (the
unit of a relative surrogate's width). Any stiff term is bounded by the
model itself from the :class:`~spark_somas.dynamics.integrators.Stage` its drives
receive (the exponential models cap e^u, :mod:`spark_somas.dynamics.numerics`).
Registered with :func:`spark_somas.models.registry.register_soma`, such a class
simulates, integrates by every method, differentiates, trains in a
network, checkpoints and shards like the four somas here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spark_somas.models import configs
from spark_somas.dynamics import integrators
from spark_somas.dynamics import numerics
from spark_somas.models import surrogates as surrogates_lib
from spark_somas.errors import (
    RuleError, RuleKeyError, RuleTypeError, allocating, require, require_shape, rule_message,
    violation,
)

__all__ = [
    "SomaState",
    "SomaConstant",
    "SomaOutput",
    "StepOptions",
    "SPIKE_PARTS",
    "after_spike",
    "step",
    "iter_somas",
    "path_name",
    "named_leaves",
    "StateVariable",
    "Soma",
    "input_scale",
    "mean_parameters",
    "exponential_term",
    "ExponentialSoma",
    "RefractoryExponentialSoma",
    "AdaptiveExponentialSoma",
    "SimplifiedAdaptiveExponentialSoma",
]

Array = jax.Array


class SomaState(nnx.Variable):
    """Running neuron state, one Variable per :class:`StateVariable` of the
    model (the exponential somas: potential V (mV), adaptation w (pA),
    refractory counter (steps still to skip, int32), threshold offset θ
    (mV)), plus the low words of a compensated half-precision state."""


class SomaConstant(nnx.Variable):
    """A config field that is not trained: an optimizer never sees it."""


@dataclasses.dataclass(frozen=True)
class StateVariable:
    """One state variable of a model, as its class declares it.

    Attributes:
      units: its unit, e.g. ``"mV"``.
      rest: its value at rest: a number, the name of the config field
        that holds it (``"potential_rest"``), or a function of the
        parameters ``p`` (every field by attribute, per neuron, as
        ``time_constants`` gets them) for a rest that depends on several
        fields (Izhikevich's u₀ = b·v₀: ``lambda p: p.b * p.v_rest``).
      integrated: advanced by the integrator (then ``time_constants`` and
        ``drives`` give its τ and F), or event-only (changed by
        ``after_spike`` alone, held over the integration).
      recordable: :func:`spark_somas.simulate` may record it.
      integer: an int32 counter (no half-precision low word).
      takes: config fields, beyond ``rest``, whose value it is set to
        (``("potential_reset",)``): like ``rest`` they must fit the state
        dtype.
      on_spike: which gradient switch governs how a spike s changes it in
        ``after_spike``: ``"reset"`` (``detach_reset``: V ← V_r) or
        ``"adaptation"`` (``detach_adaptation``: w ← w + b·s, θ ← θ + Δθ·s,
        state that outlasts the spike). None: ``"reset"`` for the model's
        membrane variable, ``"adaptation"`` for every other.
    """

    units: str
    rest: str | float | Callable[[Any], Any] = 0.0
    integrated: bool = True
    recordable: bool = True
    integer: bool = False
    takes: tuple[str, ...] = ()
    on_spike: str | None = None


@flax.struct.dataclass
class SomaOutput:
    """What a step (or, stacked over time, a run) reports.

    ``spikes`` are 0/1 and ``potential`` is the membrane variable after any
    reset (mV), both in the state dtype. ``adaptation``,
    ``threshold_offset`` and ``refractory`` are filled by
    :func:`spark_somas.simulate` when recorded, else None; any other
    recorded state variable of a model is in ``extra``. ``out[name]`` reads
    any of them by name.
    """

    spikes: Array
    potential: Array
    adaptation: Array | None = None
    threshold_offset: Array | None = None
    refractory: Array | None = None
    extra: Mapping[str, Array] | None = None

    def __iter__(self) -> Iterator[Array]:
        """Refused: a step's output is read by name, not unpacked by position
        (``spk, mem = soma(x)``, snnTorch's habit), so that recording another
        state variable never shifts what a position means."""
        raise RuleTypeError(violation(
            "unpacking a SomaOutput by position, as in spk, mem = soma(x),",
            "a SomaOutput is read by name: out.spikes and out.potential (out[name] for a "
            "recorded state variable)"))

    def __getitem__(self, name: str) -> Array:
        if name in OUTPUT_FIELDS:
            value = getattr(self, name)
        else:
            value = (self.extra or {}).get(name)
        if value is None:
            raise RuleKeyError(rule_message("SomaOutput[name]", name,
                                            "an output that was recorded"))
        return value


#: What a spike does to a state variable, each part with its own gradient switch.
SPIKE_PARTS = ("reset", "adaptation")


#: The named fields of a :class:`SomaOutput`; ``extra`` holds any other.
OUTPUT_FIELDS = tuple(f.name for f in dataclasses.fields(SomaOutput) if f.name != "extra")


def refractory_steps(cooldown: Array, dt: float) -> Array:
    """n = floor(t_ref/dt + 1e-3), Brian2's count of refractory steps (int32,
    saturated at 2^30 so that it never wraps)."""
    return jnp.minimum(jnp.floor(cooldown / dt + 1e-3), 2.0**30).astype(jnp.int32)


RESIDUAL = "_residual"


def residual_names(variables: Mapping[str, StateVariable], dtype: Any) -> tuple[str, ...]:
    """The low words of a compensated (half-precision) state, see
    :mod:`spark_somas.dynamics.numerics`; none in float32 and wider, none for a counter."""
    if not numerics.is_compensated(dtype):
        return ()
    return tuple(n + RESIDUAL for n, v in variables.items() if not v.integer)


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """What is fixed about a soma's step: dt (ms), the integration method
    (one of :data:`spark_somas.dynamics.integrators.METHODS`), the surrogate of the
    spike's derivative, whether the reset and the adaptation jumps are
    detached from the gradient (:class:`~spark_somas.models.configs.SomaConfig`)
    and the backward pass of the model's guarded nonlinearity (one of
    :data:`spark_somas.dynamics.numerics.EXP_GRADIENTS`; the exponential term of the
    exponential models)."""

    dt: float
    method: str = "euler"
    surrogate: surrogates_lib.Surrogate = surrogates_lib.DEFAULT
    detach_reset: bool = True
    detach_adaptation: bool = False
    exp_gradient: str = "exact"

    def spikes_for(self, part: str, s: Array) -> Array:
        """The spike ``part`` (one of :data:`SPIKE_PARTS`) of ``after_spike``
        sees: ``s``, or ``s`` cut from the gradient when that part is detached."""
        detached = self.detach_reset if part == "reset" else self.detach_adaptation
        return jax.lax.stop_gradient(s) if detached else s


def after_spike(model: type["Soma"], p: Any, x: Mapping[str, Array], s: Array,
                options: StepOptions) -> dict[str, Array]:
    """``model.after_spike`` with each state variable's update seeing the
    spike through its own gradient switch (:attr:`StateVariable.on_spike`).
    Forward, every combination of switches gives the same values bit for
    bit: ``stop_gradient`` is the identity there."""
    seen = {part: options.spikes_for(part, s) for part in SPIKE_PARTS}
    if options.detach_reset == options.detach_adaptation:
        return model.after_spike(p, x, seen["reset"], options.dt)
    by_part = {part: model.after_spike(p, x, spike, options.dt) for part, spike in seen.items()}
    return {name: by_part[model.spike_parts.get(name, "adaptation")][name]
            for name in by_part["reset"]}


def step(
    model: type["Soma"],
    params: Mapping[str, Array],
    state: Mapping[str, Array],
    current: Array,
    options: StepOptions,
    forced: Array | None = None,
) -> tuple[dict[str, Array], Array]:
    """One step of ``model``'s equations; a pure function.

    ``params`` maps config field names to values (mV, ms, GΩ, pA, nS);
    ``state`` holds the model's ``state_names`` plus the low words
    ``*_residual`` of a compensated half-precision state. Integrate, detect,
    gate refractoriness, reset, store. Returns the new state (same keys and
    dtypes) and the spikes (0/1 in the state dtype).

    ``forced`` (0/1, broadcastable to the state) imposes the spikes instead
    of detecting them (teacher forcing, as when fitting a cell's recorded
    spike times): the reset follows ``forced`` and V is held at most at the
    threshold, so that a model lagging behind the cell cannot run away
    before the cell's spike resets it.
    """
    membrane = model.membrane
    dtype = state[membrane].dtype
    wide = numerics.compute_dtype(dtype)
    p = types.SimpleNamespace(**{k: v.astype(wide) for k, v in params.items()})

    def read(name: str) -> Array:
        if name + RESIDUAL in state:
            return numerics.join(state[name], state[name + RESIDUAL], wide)
        return numerics.widen(state[name], wide)

    x = {n: read(n) for n, v in model.state_variables.items() if not v.integer}
    current = numerics.saturate(numerics.widen(current, wide))
    taus = model.time_constants(p)
    if set(taus) != set(model.integrated_names):
        raise RuleTypeError(f"{model.__name__}.time_constants gives {sorted(taus)}; the integrated "
                            f"state variables are {sorted(model.integrated_names)}")
    x_new = {**x, **integrators.advance(
        options.method, lambda y, stage: model.drives(p, y, current, stage, options),
        taus, x, options.dt)}
    threshold = model.spike_threshold(p, x)
    if forced is None:
        scale = model.cell_scale(p) if options.surrogate.relative else None
        s = surrogates_lib.spike(x_new[membrane] - threshold, options.surrogate, scale)
    else:
        s = jnp.broadcast_to(jnp.asarray(forced, wide), x_new[membrane].shape)
        x_new[membrane] = jnp.minimum(x_new[membrane], threshold)
    if model.refractory:
        refractory = state["refractory"] > 0
        x_new[membrane] = jnp.where(refractory, x[membrane], x_new[membrane])
        s = jnp.where(refractory, 0.0, s)
    new = after_spike(model, p, x_new, s, options)
    out = {}
    for name, value in new.items():
        if name + RESIDUAL in state:
            out[name], out[name + RESIDUAL] = numerics.split(value, dtype)
        else:
            out[name] = numerics.narrow(value, state[name].dtype)
    if model.refractory:
        counter = state["refractory"]
        out["refractory"] = jnp.where(
            s > 0,
            jnp.maximum(refractory_steps(p.cooldown, options.dt) - 1, 0),
            jnp.maximum(counter - 1, 0),
        ).astype(counter.dtype)
    return out, s.astype(dtype)


def exponential_term(p: Any, v: Array, v_t: Array, stage: integrators.Stage,
                     options: StepOptions) -> Array:
    """Δ_T·exp((V − V_T)/Δ_T) (mV), the exponential models' guard applied:
    e^u capped where c_V · w_min · Δ_T · e^u would pass ``numerics.EXP_CAP``
    (c_V, w_min from the integrator's ``stage``), its backward pass the
    config's ``exp_gradient``; see :func:`spark_somas.dynamics.numerics.capped_exp`."""
    scale = stage.coefficients["potential"] * stage.smallest_weight * p.spike_slope
    return p.spike_slope * numerics.capped_exp((v - v_t) / p.spike_slope, scale,
                                               options.exp_gradient)


def _membrane(p: Any, v: Array, v_t: Array, drive: Array, stage: integrators.Stage,
              options: StepOptions) -> Array:
    """−(V − E_L) + Δ_T·exp((V − V_T)/Δ_T) + drive."""
    return -(v - p.potential_rest) + exponential_term(p, v, v_t, stage, options) + drive


def _input(p: Any, current: Array) -> Array:
    """R·I (mV): at most 10^6 GΩ · 2^40 pA ≈ 10^18 mV for a saturated current."""
    return p.resistance * current


def mean_parameters(soma: "Soma") -> types.SimpleNamespace:
    """Every field of ``soma`` as its mean over neurons (a Python float), by
    attribute: what a model's ``input_scale`` reads.

    In an abstract build (``nnx.eval_shape``, how a checkpoint's model spec
    is checked before anything of its size is allocated) the fields are
    traced; a field given in the config as numbers is then read from there,
    in the soma's parameter dtype (an initializer's draws have no value yet)."""
    def mean(name: str, value: Any) -> float:
        given = getattr(soma.config, name)
        if isinstance(value, jax.core.Tracer) and not callable(given):
            value = np.asarray(given, soma.param_dtype)
        return float(np.mean(value))

    return types.SimpleNamespace(**{k: mean(k, v) for k, v in soma.parameters().items()})


def input_scale(soma: "Soma") -> float:
    """The current (pA) a network's input gain is measured in, for ``soma``
    (mean over neurons): its class's ``input_scale``; the rheobase for the
    exponential somas. A number even inside an abstract build: it is
    computed from numbers, eagerly."""
    with jax.ensure_compile_time_eval():
        return float(type(soma).input_scale(mean_parameters(soma)))


def iter_somas(model: Any) -> Iterator[tuple[tuple, "ExponentialSoma"]]:
    """(path, soma) for every soma in an NNX module tree, ``model`` included."""
    for path, node in nnx.iter_graph(model):
        if isinstance(node, Soma):
            yield path, node


def path_name(path: Sequence[Any]) -> str:
    """A tree path (key entries, or the plain keys of :func:`iter_somas`) as
    ``"a/b/c"`` ("" for the root): how checkpoints and the constraint
    projection name a soma and its fields."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def named_leaves(tree: Any) -> dict[str, Any]:
    """The leaves of a pytree by their :func:`path_name`: how checkpoints and
    loggers list parameters and state."""
    return {path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _as_units(units: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(units, (int, np.integer)):
        shape = (units,)
    else:
        try:
            shape = None if isinstance(units, (str, bytes)) else tuple(units)
        except TypeError:
            shape = None
    require(shape is not None and all(isinstance(u, (int, np.integer)) and not isinstance(u, bool)
                                      and u > 0 for u in shape),
            "units", units, "an int or a tuple of positive ints", error=RuleError)
    return tuple(int(u) for u in shape)


def _constant(value: Any) -> Array:
    """A fixed field as a JAX array, concrete even while a trace builds the
    soma (``jax.jit``, ``nnx.eval_shape``) when its value is known: code that
    reads a fixed field as a number (a network's rheobase current) then
    works there too. A traced value stays traced."""
    if isinstance(value, jax.core.Tracer):
        return value
    with jax.ensure_compile_time_eval():
        return jnp.asarray(value)


#: The transformations whose body must return its carry in the shape it got.
FIXED_SHAPE_BODIES = ("scan", "fori_loop", "while_body", "while_cond", "cond", "switch")


def _fixed_shape_body() -> str | None:
    """The kind of loop or branch body (one of :data:`FIXED_SHAPE_BODIES`)
    JAX is tracing now, None outside one. JAX exposes no public way to ask;
    where its internals differ this says None, and JAX's own error stands."""
    try:
        from jax._src import core as jax_core
        traced_for = jax_core.trace_ctx.trace.frame.debug_info.traced_for
    except (ImportError, AttributeError):
        return None
    return traced_for if traced_for in FIXED_SHAPE_BODIES else None


#: The keyword that builds a soma or a config without checking its rules.
SKIP_VALIDATION = "__skip_validation__"


def _batch_of(shape: tuple[int, ...], units: tuple[int, ...]) -> tuple[int, ...]:
    return shape[: len(shape) - len(units)]


class Soma(nnx.Module):
    """The base of every soma model: the machinery, no equations.

    A model subclasses it and declares its equations (see the module
    docstring): ``config_class``, ``state_variables``, ``time_constants``,
    ``drives``, ``spike_threshold``, ``after_spike``, ``cell_scale``,
    ``input_scale`` and, if it has any, ``default_trainable``; with
    ``refractory = True`` a ``"refractory"`` counter and a ``cooldown``
    field give Brian2's absolute refractory period. ``membrane`` names the
    variable whose crossing of ``spike_threshold`` is a spike.

    Args:
      config: the soma's config; None gives the defaults.
      units: neurons, an int or a shape tuple.
      dt: time step (ms). The default, 0.1 ms, is Brian2's and resolves the
        spike's upswing (Δ_T = 2 mV of exponential rise: forward Euler
        needs dt ≪ τ_m, here dt/τ_m ≈ 0.01), so a lone soma matches
        Brian2's spike times. A :class:`~spark_somas.training.network.SpikingNetwork`
        builds its somas at its own dt, 1 ms by default (dt/τ_m ≈ 0.1, still
        stable, and a classification window is tens rather than hundreds
        of steps): the same current then spans ten times as many ms per
        step.
      method: integration method, one of ``spark_somas.dynamics.integrators.METHODS``:
        ``"euler"`` (default), ``"rk2"``, ``"rk4"``, ``"exponential_euler"``.
      trainable: config fields that become per-neuron ``nnx.Param``\\ s.
      dtype: dtype of the state and the outputs.
      param_dtype: dtype of the config fields.
      rngs: needed when a field is an initializer (draws ``rngs.params()``).
      **field_overrides: config fields to replace, e.g. ``potential_tau=20.0``;
        ``__skip_validation__=True`` builds the config without checking its
        rules (as the config's own keyword does), the one way to give a
        field a value traced by ``jax.jit``/``nnx.vmap``/…
    """

    config_class: ClassVar[type[configs.SomaConfig]] = configs.SomaConfig
    state_variables: ClassVar[Mapping[str, StateVariable]] = {}
    membrane: ClassVar[str] = "potential"
    refractory: ClassVar[bool] = False
    default_trainable: ClassVar[tuple[str, ...]] = ()
    #: Config fields that make the model adapt; all at 0 it does not (a
    #: network's ``adaptive_fraction`` zeroes them in its plain somas).
    adaptation_fields: ClassVar[tuple[str, ...]] = ()
    #: Derived from ``state_variables`` for each subclass.
    state_names: ClassVar[tuple[str, ...]] = ()
    integrated_names: ClassVar[tuple[str, ...]] = ()
    spike_parts: ClassVar[Mapping[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.state_names = tuple(cls.state_variables)
        cls.integrated_names = tuple(n for n, v in cls.state_variables.items() if v.integrated)
        cls.spike_parts = {n: v.on_spike or ("reset" if n == cls.membrane else "adaptation")
                           for n, v in cls.state_variables.items()}
        if not cls.state_variables:
            return  # an abstract intermediate class
        fields = {f.name for f in cls.config_class.quantity_fields()}
        problems = []
        if cls.membrane not in cls.state_variables:
            problems.append(f"membrane = {cls.membrane!r} is not one of its state_variables")
        for name, var in cls.state_variables.items():
            if var.on_spike not in (None, *SPIKE_PARTS):
                problems.append(f"state variable {name!r} has on_spike = {var.on_spike!r}, not "
                                f"None or one of {SPIKE_PARTS}")
            for field in (var.rest,) * isinstance(var.rest, str) + var.takes:
                if field not in fields:
                    problems.append(f"state variable {name!r} refers to {field!r}, not a "
                                    f"numeric field of {cls.config_class.__name__}")
        if cls.refractory and ("refractory" not in cls.state_variables or "cooldown" not in fields):
            problems.append("refractory = True needs a 'refractory' state variable and a "
                            "'cooldown' config field")
        for attribute in ("default_trainable", "adaptation_fields"):
            bad = sorted(set(getattr(cls, attribute)) - fields)
            if bad:
                problems.append(f"{attribute} {bad} are not numeric config fields")
        if problems:
            raise RuleTypeError(f"{cls.__name__}: " + "; ".join(problems))

    @staticmethod
    def time_constants(p: Any) -> dict[str, Array]:
        """τ_x (ms) of each integrated variable x, from the parameters ``p``."""
        raise NotImplementedError("a soma model defines time_constants")

    @staticmethod
    def drives(p: Any, x: Mapping[str, Array], current: Array, stage: integrators.Stage,
               options: StepOptions) -> dict[str, Array]:
        """F_x of τ_x·dx/dt = F_x for each integrated variable, at state ``x``
        and input ``current`` (pA, held over the step); ``stage`` and
        ``options`` let a model guard its stiff terms."""
        raise NotImplementedError("a soma model defines drives")

    @staticmethod
    def spike_threshold(p: Any, x: Mapping[str, Array]) -> Array:
        """The value of the membrane variable above which it spikes, at the
        step's start state ``x``."""
        raise NotImplementedError("a soma model defines spike_threshold")

    @staticmethod
    def after_spike(p: Any, x: Mapping[str, Array], spike: Array, dt: float) -> dict[str, Array]:
        """The state after the step: the reset where ``spike`` (0/1, a blend
        so that an undetached reset carries the spike's gradient), the
        spike-triggered jumps and any event-only update (every step). Each
        variable's update is differentiated through the spike as its
        :attr:`StateVariable.on_spike` part's switch says: :func:`step`
        calls this once per part when the switches differ and keeps each
        variable from its own part's call."""
        raise NotImplementedError("a soma model defines after_spike")

    @staticmethod
    def cell_scale(p: Any) -> Array:
        """The unit (mV) of a ``relative`` surrogate's width: threshold minus rest."""
        raise NotImplementedError("a soma model defines cell_scale")

    @staticmethod
    def input_scale(p: Any) -> Any:
        """The current (pA) a network's input gain is measured in (the
        rheobase, for a model that has one), from mean parameters ``p``."""
        raise NotImplementedError("a soma model defines input_scale")

    def __init__(
        self,
        config: configs.SomaConfig | None = None,
        *,
        units: int | Sequence[int],
        dt: float = 0.1,
        method: str = "euler",
        trainable: Sequence[str] = (),
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs | None = None,
        **field_overrides: Any,
    ):
        name = type(self).__name__
        require(method in integrators.METHODS, f"{name}: method", method,
                f"one of {integrators.METHODS}", error=RuleError)
        config = self._configured(config, field_overrides)
        fields = [f.name for f in config.quantity_fields()]
        trainable = (trainable,) if isinstance(trainable, str) else tuple(trainable)
        bad = sorted(set(trainable) - set(fields))
        require(not bad, f"{name}: trainable", bad,
                f"each must be a numeric config field, one of {fields}")
        dt = configs.as_number(dt, f"{name}: dt", error=RuleError)
        configs.require(configs.SMALLEST <= dt <= configs.LARGEST, f"{name}: dt", dt,
                        f"{configs.SMALLEST:g} ≤ dt ≤ {configs.LARGEST:g} ms", error=RuleError)
        for label, dt_ in (("dtype", dtype), ("param_dtype", param_dtype)):
            try:
                kind = jnp.dtype(dt_).name
            except TypeError:
                kind = None
            configs.require(kind in configs.FLOAT_DTYPES, f"{name}: {label}", dt_,
                            f"one of {configs.FLOAT_DTYPES}", error=RuleError)
        self.units = _as_units(units)
        self.dt = dt
        self.method = method
        self.trainable = trainable
        self.dtype = jnp.dtype(dtype)
        self.param_dtype = jnp.dtype(param_dtype)
        self.config = config

        stored = self.state_names + residual_names(self.state_variables, self.dtype)
        per_neuron = (len(trainable) * self.param_dtype.itemsize
                      + len(stored) * self.dtype.itemsize)
        memory = functools.partial(allocating, f"{name}: units = {self.units} (its state and "
                                   "trained fields)", per_neuron * math.prod(self.units))
        with memory():  # an initializer draws per neuron
            values = {n: self._materialize(n, getattr(config, n), rngs) for n in fields}
        # Every value held as numbers is checked, inside jax.jit too: only
        # what an initializer draws under a trace (its key traced) has none.
        self.check_parameters({n: v for n, v in values.items()
                               if not isinstance(v, jax.core.Tracer)})
        with memory():  # what is allocated per neuron: the trained fields and the state
            for n, v in values.items():
                meta = {"units": config.field_info(n)["units"]}
                if n in trainable:  # a Param per neuron; a fixed field keeps its own shape
                    v = jnp.broadcast_to(jnp.asarray(v), self.units)
                setattr(self, n, nnx.Param(v, **meta) if n in trainable
                        else SomaConstant(_constant(v), **meta))
            self.residual_names = residual_names(self.state_variables, self.dtype)
            for n in self.stored_names:
                units = self.state_variables[n.removesuffix(RESIDUAL)].units
                setattr(self, n, SomaState(self._rest_value(n, ()), units=units))

    def _configured(self, config: configs.SomaConfig | None,
                    field_overrides: Mapping[str, Any]) -> configs.SomaConfig:
        """``config`` (None: the defaults) with ``field_overrides`` applied;
        ``__skip_validation__=True`` among them builds it unchecked. Refuses
        a config of another class and a field the config class lacks."""
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
        known = {f.name for f in dataclasses.fields(config)} | {SKIP_VALIDATION}
        unknown = sorted(set(field_overrides) - known)
        if unknown:
            configs.refuse_unknown(self.config_class, unknown, soma=name)
        return config.replace(**field_overrides) if field_overrides else config

    def dtype_bounds(self) -> dict[str, tuple[float, float]]:
        """The interval [low, high] each field must lie in for this soma's
        dtypes, beyond the config's rules: E_L and V_r become the stored V,
        so ``|E_L|, |V_r| ≤`` the largest potential the state dtype holds
        (:func:`~spark_somas.dynamics.numerics.bound`); in a compensated half-precision
        state a time constant τ must keep dt/τ resolvable
        (:func:`~spark_somas.dynamics.numerics.resolution_problem`), τ ≤ dt/(m·u) with
        m = ``RESOLUTION_MARGIN`` and u the double word's relative unit."""
        out = {n: (-numerics.bound(self.dtype), numerics.bound(self.dtype))
               for n in self.stored_fields()}
        if numerics.is_compensated(self.dtype):
            unit = 2.0 ** (-2 * (jnp.finfo(self.dtype).nmant + 1))
            for n in self.config_class.time_constant_fields():
                out[n] = (-np.inf, self.dt / (numerics.RESOLUTION_MARGIN * unit))
        fields = {f.name for f in self.config.quantity_fields()}
        return {n: b for n, b in out.items() if n in fields}

    def check_parameters(self, values: Mapping[str, Any]) -> None:
        """Refuses field ``values`` (name -> number or array, as stored in
        ``param_dtype``; fields not given are not checked) that break the
        config's rules — in ``param_dtype``, whose rounding of a bound the
        rule accepts — unless the config was built unvalidated, or this
        soma's :meth:`dtype_bounds`. The constructor checks every value it
        holds as numbers; a checkpoint's restore checks the stored ones.

        Raises:
          ConfigError: a config rule, naming the field, the value and the rule.
          ValueError: a dtype rule, naming the field, the value and the dtype.
        """
        name = type(self).__name__
        values = {n: np.asarray(v, np.float64) for n, v in values.items()
                  if not configs.is_initializer(v)}
        if self.config.validated:
            self.config.validate(values, dtype=self.param_dtype)
        problem = numerics.resolution_problem(self.dtype, self.dt, {
            n: float(np.max(values[n])) for n in self.config_class.time_constant_fields()
            if n in values})
        if problem:
            raise RuleError(f"{name}: {problem}")
        for n in self.stored_fields():
            if n in values and values[n].size:
                worst = values[n].flat[int(np.argmax(np.abs(values[n])))]
                configs.require(
                    abs(worst) <= numerics.bound(self.dtype), f"{name}: {n}", float(worst),
                    f"|{n}| ≤ {numerics.bound(self.dtype):g} mV, the largest potential a "
                    f"{self.dtype.name} state holds; use a wider dtype", error=RuleError)

    def _materialize(self, name: str, value: Any, rngs: nnx.Rngs | None) -> Any:
        """A field's value in ``param_dtype``, its shape broadcastable to the
        units: a NumPy array when the config holds numbers (so that it can be
        checked under a trace too), what the initializer drew otherwise; a
        value traced in the config (built unchecked) stays traced."""
        where = f"{type(self).__name__}: {name}"
        if configs.is_initializer(value):
            if rngs is None:
                raise configs.ConfigError(f"{where} is an initializer; pass rngs=nnx.Rngs(seed)")
            drawn = value(rngs.params(), self.units, self.param_dtype)
            dtype = getattr(drawn, "dtype", None)
            configs.require(dtype is not None and (jnp.issubdtype(dtype, jnp.floating)
                                                   or jnp.issubdtype(dtype, jnp.integer)),
                            where, drawn, "an initializer returns an array of real numbers "
                            "(key, shape, dtype) -> array")
            value = drawn if isinstance(drawn, jax.core.Tracer) else np.asarray(drawn)
        elif not isinstance(value, jax.core.Tracer):
            value = np.asarray(value)
        value = value.astype(self.param_dtype)
        try:
            np.broadcast_shapes(np.shape(value), self.units)
        except ValueError:
            raise configs.ConfigError(
                f"{where} has shape {np.shape(value)}, which does not broadcast to units "
                f"{self.units}") from None
        return value

    def _rest_value(self, name: str, batch_shape: tuple[int, ...]) -> Array:
        shape = tuple(batch_shape) + self.units
        base = name.removesuffix(RESIDUAL)
        var = self.state_variables[base]
        if var.integer:
            return jnp.full(shape, int(var.rest), jnp.int32)
        if callable(var.rest):
            rest = var.rest(types.SimpleNamespace(**self.parameters()))
        else:
            rest = getattr(self, var.rest)[...] if isinstance(var.rest, str) else var.rest
        rest = jnp.broadcast_to(jnp.asarray(rest), shape).astype(numerics.compute_dtype(self.dtype))
        return numerics.split(rest, self.dtype)[name != base]

    @classmethod
    def stored_fields(cls) -> tuple[str, ...]:
        """Config fields whose values become a stored state value (each
        variable's ``rest`` and ``takes``): they must fit the state dtype,
        or the soma would rest or reset elsewhere."""
        names = []
        for var in cls.state_variables.values():
            if not var.integer:
                names += [var.rest] * isinstance(var.rest, str) + list(var.takes)
        return tuple(dict.fromkeys(names))

    def reset(self, batch_shape: Sequence[int] | None = None) -> None:
        """Back to rest (V = E_L, w = 0, no refractoriness, θ = 0), shape
        ``(*units)`` or ``(*batch_shape, *units)``. Keeps the state dtype."""
        batch = () if batch_shape is None else tuple(batch_shape)
        for n in self.stored_names:
            var = getattr(self, n)
            var.set_value(self._rest_value(n, batch).astype(var[...].dtype))

    @property
    def stored_names(self) -> tuple[str, ...]:
        """Every SomaState Variable of this soma: the model's ``state_names``
        and, in half precision, their low words (``residual_names``)."""
        return self.state_names + self.residual_names

    @property
    def state_shape(self) -> tuple[int, ...]:
        """``(*batch, *units)`` of the running state."""
        return tuple(getattr(self, self.membrane).get_value().shape)

    @property
    def options(self) -> StepOptions:
        """The dt, method, surrogate, gradient switches and exponential's
        backward pass that :func:`step` needs beside the parameters and the state."""
        return StepOptions(dt=self.dt, method=self.method, surrogate=self.config.surrogate,
                           detach_reset=self.config.detach_reset,
                           detach_adaptation=self.config.detach_adaptation,
                           exp_gradient=self.config.exp_gradient)

    def neuron_state(self) -> dict[str, Array]:
        """The running state as a dict of arrays (a snapshot), low words of a
        compensated half-precision state included."""
        return {n: getattr(self, n)[...] for n in self.stored_names}

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
            raise RuleError(
                f"{type(self).__name__}: a current of shape {current_shape} must have shape "
                f"(*units) or (*batch, *units) with units = {self.units}"
            )
        state_shape = self.state_shape
        try:  # jnp's, not NumPy's: a batch dimension may be symbolic (jax.export)
            batch = tuple(jnp.broadcast_shapes(_batch_of(state_shape, self.units),
                                               _batch_of(current_shape, self.units)))
        except ValueError:
            raise RuleError(
                f"{type(self).__name__}: current of shape {current_shape} cannot broadcast "
                f"with the neuron state of shape {state_shape}"
            ) from None
        if batch + self.units != state_shape:
            self._require_reshapable(state_shape, current_shape, batch)
            for name in self.stored_names:
                var = getattr(self, name)
                var.set_value(jnp.broadcast_to(var[...], batch + self.units))
        return batch

    def _require_reshapable(self, state_shape: tuple[int, ...], current_shape: tuple[int, ...],
                            batch: tuple[int, ...]) -> None:
        """Refuses to give a traced state a new shape inside a loop or branch
        body (``nnx.scan``, ``jax.lax.scan``, ``fori_loop``, ``while_loop``,
        ``cond``, ``switch``), whose carry must keep its shape: JAX would
        refuse it later, naming neither the soma nor the remedy."""
        body = _fixed_shape_body()
        if body is None or not isinstance(getattr(self, self.membrane)[...], jax.core.Tracer):
            return
        raise RuleError(violation(
            f"{type(self).__name__}: the neuron state of shape {state_shape}, broadcast to a "
            f"current of shape {current_shape} inside a {body} body, which",
            f"a state carried through a loop or a branch keeps its shape; call "
            f"soma.reset(batch_shape) before nnx.scan / jax.lax.scan (here "
            f"soma.reset({batch}))"))

    def __call__(self, current: Array) -> SomaOutput:
        """One step with input ``current`` (pA), shape ``(*units)`` or ``(*batch, *units)``."""
        current = jnp.asarray(current)
        require_shape(not jnp.issubdtype(current.dtype, jnp.complexfloating),
                      f"{type(self).__name__}: a current", current.dtype, "real values (pA)",
                      what="dtype")
        if not jnp.issubdtype(current.dtype, jnp.floating):
            current = current.astype(self.dtype)
        self.broadcast_state(current.shape)
        state = self.neuron_state()
        new, spikes = step(type(self), self.parameters(), state, current, self.options)
        for name, value in new.items():
            getattr(self, name)[...] = jnp.broadcast_to(value, state[name].shape)
        return SomaOutput(spikes=jnp.broadcast_to(spikes, state[self.membrane].shape),
                          potential=getattr(self, self.membrane)[...])

    def rows(self) -> list[tuple[str, ...]]:
        """(field, symbol, value, units, meaning), with current values and
        trained fields marked; a value with no number yet (an abstract soma
        of ``nnx.eval_shape``, a traced one) as its dtype and shape."""
        out = []
        for (name, symbol, _, units, doc) in self.config.rows():
            value = getattr(self, name).get_value()
            if configs.has_number(value):
                value = np.asarray(value, np.float64)
            tag = " (trained)" if name in self.trainable else ""
            out.append((name, symbol, configs.format_value(value) + tag, units, doc))
        return out

    def __repr__(self) -> str:
        shape = self.state_shape
        head = (f"units={self.units}, dt={self.dt} ms, method={self.method}, "
                f"state={shape} {self.dtype.name}")
        body = ", ".join(f"{n}={v} {u}" for n, _, v, u, _ in self.rows())
        return f"{type(self).__name__}({head}, {body}, surrogate={self.config.surrogate!r})"

    def _repr_html_(self) -> str:
        return configs.html_table(
            f"{type(self).__name__}(units={self.units})", self.rows(),
            [("dt", f"{self.dt} ms"), ("method", self.method),
             ("state", f"{self.state_shape} {self.dtype.name}"),
             ("surrogate", repr(self.config.surrogate))],
        )



class ExponentialSoma(Soma):
    """Exponential integrate-and-fire soma (Fourcaud-Trocmé et al. 2003).

    .. math:: τ_m \\dot V = -(V - E_L) + Δ_T e^{(V - V_T)/Δ_T} + R I,
       \\quad V > V_{th} ⇒ V ← V_r

    Constructor arguments: see :class:`Soma`.
    """

    config_class = configs.ExponentialSomaConfig
    state_variables = {
        "potential": StateVariable("mV", rest="potential_rest", takes=("potential_reset",)),
    }
    default_trainable = ("potential_tau", "threshold")

    @staticmethod
    def time_constants(p: Any) -> dict[str, Array]:
        """τ_m (ms) of the one integrated variable, V."""
        return {"potential": p.potential_tau}

    @staticmethod
    def drives(p: Any, x: Mapping[str, Array], current: Array, stage: integrators.Stage,
               options: StepOptions) -> dict[str, Array]:
        """τ_m dV/dt = −(V − E_L) + Δ_T·exp((V − V_T)/Δ_T) + R·I"""
        return {"potential": _membrane(p, x["potential"], p.rheobase_threshold,
                                       _input(p, current), stage, options)}

    @staticmethod
    def spike_threshold(p: Any, x: Mapping[str, Array]) -> Array:
        """A spike when V > V_th."""
        return p.threshold

    @staticmethod
    def cell_scale(p: Any) -> Array:
        """d = V_th − E_L (mV), the unit of a ``relative`` surrogate's width;
        Δ_T where a legal but unusual cell rests within Δ_T of its threshold
        (or above it)."""
        return jnp.maximum(p.threshold - p.potential_rest, p.spike_slope)

    @staticmethod
    def input_scale(p: Any) -> Any:
        """I_rh = (V_T − E_L − Δ_T)/R (pA), the smallest constant current
        that makes an ExpIF neuron fire (Fourcaud-Trocmé et al. 2003)."""
        return (p.rheobase_threshold - p.potential_rest - p.spike_slope) / p.resistance

    @staticmethod
    def after_spike(p: Any, x: Mapping[str, Array], spike: Array, dt: float) -> dict[str, Array]:
        """V ← V_r where spiking (a blend, so that an undetached reset carries
        the spike's gradient)."""
        return {**x, "potential": x["potential"] * (1.0 - spike) + p.potential_reset * spike}

class RefractoryExponentialSoma(ExponentialSoma):
    """ExpIF with an absolute refractory period ``cooldown`` (ms), Brian2's
    convention: after a spike at step k, steps k+1 … k+n-1 hold V at V_r,
    ignore the input and cannot spike (n = floor(t_ref/dt + 1e-3)); the
    shortest interspike interval is max(n, 1) steps. The counter counts
    down and saturates at 0, so it never wraps."""

    config_class = configs.RefractoryExponentialSomaConfig
    state_variables = {**ExponentialSoma.state_variables,
                       "refractory": StateVariable("steps", integrated=False, integer=True)}
    refractory = True


class AdaptiveExponentialSoma(ExponentialSoma):
    """Adaptive exponential integrate-and-fire (Brette & Gerstner 2005).

    .. math:: τ_m \\dot V = -(V - E_L) + Δ_T e^{(V - V_T)/Δ_T} - R w + R I,
       \\quad τ_w \\dot w = a (V - E_L) - w,
       \\quad V > V_{th} ⇒ V ← V_r,\\ w ← w + b
    """

    config_class = configs.AdaptiveExponentialSomaConfig
    state_variables = {**ExponentialSoma.state_variables, "adaptation": StateVariable("pA")}
    default_trainable = ExponentialSoma.default_trainable + (
        "adaptation_tau", "adaptation_delta", "adaptation_subthreshold")
    adaptation_fields = ("adaptation_delta", "adaptation_subthreshold")

    @staticmethod
    def time_constants(p: Any) -> dict[str, Array]:
        """τ_m and τ_w (ms) of the integrated variables V and w."""
        return {"potential": p.potential_tau, "adaptation": p.adaptation_tau}

    @staticmethod
    def drives(p: Any, x: Mapping[str, Array], current: Array, stage: integrators.Stage,
               options: StepOptions) -> dict[str, Array]:
        """τ_m dV/dt = −(V − E_L) + Δ_T·exp((V − V_T)/Δ_T) − R·w + R·I,
        τ_w dw/dt = a·(V − E_L) − w"""
        v, w = x["potential"], x["adaptation"]
        return {
            "potential": _membrane(p, v, p.rheobase_threshold,
                                   _input(p, current) - p.resistance * w, stage, options),
            "adaptation": p.adaptation_subthreshold * (v - p.potential_rest) - w,
        }

    @staticmethod
    def after_spike(p: Any, x: Mapping[str, Array], spike: Array, dt: float) -> dict[str, Array]:
        """V ← V_r, w ← w + b."""
        return {**ExponentialSoma.after_spike(p, x, spike, dt),
                "adaptation": x["adaptation"] + p.adaptation_delta * spike}


class SimplifiedAdaptiveExponentialSoma(RefractoryExponentialSoma):
    """Refractory ExpIF with an adaptive threshold offset θ (mV) in place of w.

    A step integrates with V_T + θ, detects against V_th + θ, resets, then
    θ ← θ·exp(-dt/τ_θ) + Δθ·spike; θ decays on refractory steps too.
    """

    config_class = configs.SimplifiedAdaptiveExponentialSomaConfig
    state_variables = {**RefractoryExponentialSoma.state_variables,
                       "threshold_offset": StateVariable("mV", integrated=False)}
    default_trainable = ExponentialSoma.default_trainable + ("threshold_tau", "threshold_delta")
    adaptation_fields = ("threshold_delta",)

    @staticmethod
    def drives(p: Any, x: Mapping[str, Array], current: Array, stage: integrators.Stage,
               options: StepOptions) -> dict[str, Array]:
        """τ_m dV/dt = −(V − E_L) + Δ_T·exp((V − V_T − θ)/Δ_T) + R·I"""
        return {"potential": _membrane(p, x["potential"], p.rheobase_threshold
                                       + x["threshold_offset"], _input(p, current), stage,
                                       options)}

    @staticmethod
    def spike_threshold(p: Any, x: Mapping[str, Array]) -> Array:
        """A spike when V > V_th + θ."""
        return p.threshold + x["threshold_offset"]

    @staticmethod
    def after_spike(p: Any, x: Mapping[str, Array], spike: Array, dt: float) -> dict[str, Array]:
        """V ← V_r; θ ← θ·exp(−dt/τ_θ) + Δθ·spike, every step."""
        return {**ExponentialSoma.after_spike(p, x, spike, dt),
                "threshold_offset": x["threshold_offset"] * jnp.exp(-dt / p.threshold_tau)
                + p.threshold_delta * spike}
