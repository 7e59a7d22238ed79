"""The model protocol: what a soma is, and the one step every model takes.

:class:`Soma` is the base of every model and assumes nothing about any
family's equations. A model is one subclass that declares, in its own class
body: its config class (a :class:`~spark_somas.models.configs.SomaConfig`
with :func:`~spark_somas.models.configs.quantity` fields), its
``state_variables`` (:class:`StateVariable`: unit, value at rest,
integrated, event-only or an integer counter, recordable), ``time_constants``
and ``drives`` of the integrated variables, ``spike_threshold``,
``after_spike`` (the reset), ``default_trainable`` fields, ``input_scale``
(the current a network's input gain is measured in) and ``cell_scale`` (the
unit of a relative surrogate's width). A model whose update is sometimes
withheld (a refractory period) also declares ``gate`` and, for its integer
counters, ``update_counters``; the base class withholds nothing.

:func:`step` applies those declarations, knowing no variable's name: with
input current I (pA) held over the step, it integrates every integrated
variable x of τ_x·dx/dt = F_x (:mod:`spark_somas.dynamics.integrators`,
forward Euler by default), detects the spike s = [x_m > threshold] of the
membrane variable x_m through the surrogate, lets the model's ``gate``
withhold what it withholds, applies ``after_spike`` (each variable's update
seeing s through its own gradient switch) and stores the state in its dtype
(:mod:`spark_somas.dynamics.numerics`: wide arithmetic, saturation,
compensated half precision). Order inside a step: integrate, detect, gate,
reset (Brian2's and NEST's), so spike times agree with Brian2's method of
the same name to the step.

State lives in :class:`SomaState` Variables, trained fields in
``nnx.Param``, the other fields in :class:`SomaConstant`. Any stiff term is
bounded by the model itself from the
:class:`~spark_somas.dynamics.integrators.Evaluation` its drives receive.
Registered with :func:`spark_somas.models.registry.register_soma`, a model
simulates, integrates by every method, differentiates, trains in a network,
checkpoints and shards like the four exponential somas of
:mod:`spark_somas.models.exponential`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import warnings
from typing import Any, Callable, ClassVar, Mapping, Sequence

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
    "StateVariable",
    "Soma",
    "input_scale",
    "mean_parameters",
]

Array = jax.Array


class SomaState(nnx.Variable):
    """Running neuron state, one Variable per :class:`StateVariable` of the
    model (the AdEx: potential V (mV) and adaptation w (pA)), plus the low
    words of a compensated half-precision state."""


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
      integer: an int32 counter, updated by the model's
        ``update_counters`` alone (no half-precision low word).
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


@jax.tree_util.register_pytree_node_class
class SomaOutput:
    """What a step (or, stacked over time, a run) reports: arrays by name.

    ``spikes`` are 0/1 and ``potential`` is the membrane variable after any
    reset (mV), both in the state dtype; any other recorded state variable
    is under its own name. ``out[name]`` and ``out.name`` read an output;
    ``out.name`` of an output the model declares (``declared``: what it can
    record, :meth:`Soma.output_names`) but that was not recorded is None.
    ``keys()``, ``values()``, ``items()``, ``in`` and ``dict(out)`` work as
    on a mapping; it is a pytree whose leaves are the recorded arrays.
    """

    __slots__ = ("_values", "_declared")

    def __init__(self, values: Mapping[str, Array | None] | None = None, /, *,
                 declared: Sequence[str] = (), **named: Array | None):
        given = {**(values or {}), **named}
        self._values = {k: v for k, v in given.items() if v is not None}
        self._declared = tuple(dict.fromkeys((*declared, *given)))

    def tree_flatten(self) -> tuple[tuple[Any, ...], tuple[tuple[str, ...], tuple[str, ...]]]:
        return tuple(self._values.values()), (tuple(self._values), self._declared)

    @classmethod
    def tree_unflatten(cls, aux: tuple[tuple[str, ...], tuple[str, ...]],
                       children: Sequence[Any]) -> "SomaOutput":
        out = object.__new__(cls)
        names, out._declared = aux
        out._values = dict(zip(names, children))
        return out

    def __iter__(self):
        """Refused: a step's output is read by name, not unpacked by position
        (``spk, mem = soma(x)``, snnTorch's habit), so that recording another
        state variable never shifts what a position means."""
        raise RuleTypeError(violation(
            "unpacking a SomaOutput by position, as in spk, mem = soma(x),",
            "a SomaOutput is read by name: out.spikes and out.potential (out[name] for a "
            "recorded state variable)"))

    def __getitem__(self, name: str) -> Array:
        if name not in self._values:
            raise RuleKeyError(rule_message("SomaOutput[name]", name,
                                            "an output that was recorded"))
        return self._values[name]

    def __getattr__(self, name: str) -> Array | None:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._values:
            return self._values[name]
        if name in self._declared:
            return None
        raise AttributeError(f"SomaOutput has no output {name!r}: it holds "
                             f"{tuple(self._values)}, of {self._declared}")

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> tuple[str, ...]:
        """The recorded outputs' names."""
        return tuple(self._values)

    def values(self) -> tuple[Array, ...]:
        return tuple(self._values.values())

    def items(self) -> tuple[tuple[str, Array], ...]:
        return tuple(self._values.items())

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name, default)

    @property
    def declared(self) -> tuple[str, ...]:
        """Every output the model can report, recorded or not."""
        return self._declared

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={getattr(v, 'shape', v)}" for k, v in self._values.items())
        return f"SomaOutput({body})"


#: What a spike does to a state variable, each part with its own gradient switch.
SPIKE_PARTS = ("reset", "adaptation")

RESIDUAL = "_residual"


def low_words(variables: Mapping[str, StateVariable], dtype: Any) -> tuple[str, ...]:
    """The names of the low words of a compensated (half-precision) state, see
    :mod:`spark_somas.dynamics.numerics`; none in float32 and wider, none for a counter."""
    if not numerics.is_compensated(dtype):
        return ()
    return tuple(n + RESIDUAL for n, v in variables.items() if not v.integer)


class _Renamed:
    """A name a release used for what another name now gives: reading it
    still works, with a ``DeprecationWarning`` that names the replacement."""

    def __init__(self, new: str, read: Callable[[type, Any], Any], *,
                 per_instance: bool = False):
        self.renamed_to, self.read, self.per_instance = new, read, per_instance

    def __set_name__(self, owner: type, name: str) -> None:
        self.old = name

    def __get__(self, instance: Any, owner: type) -> Any:
        if self.per_instance and instance is None:
            return self
        warnings.warn(f"{owner.__name__}.{self.old} is deprecated; {self.renamed_to}",
                      DeprecationWarning, stacklevel=2)
        return self.read(owner, instance)


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """What is fixed about a soma's step: dt (ms), the integration method
    (a :class:`~spark_somas.dynamics.integrators.Method`; one of the names of
    :data:`spark_somas.dynamics.integrators.METHODS` is looked up once, here),
    the surrogate of the spike's derivative, whether the reset and the
    adaptation jumps are detached from the gradient
    (:class:`~spark_somas.models.configs.SomaConfig`), and ``settings``: the
    model's own step settings, (name, value) pairs of its config's fields
    that are neither numbers nor the protocol's (the exponential somas'
    ``exp_gradient``), which the model's drives read with :meth:`setting`."""

    dt: float
    method: integrators.Method = integrators.INTEGRATORS["euler"]
    surrogate: surrogates_lib.Surrogate = surrogates_lib.DEFAULT
    detach_reset: bool = True
    detach_adaptation: bool = False
    settings: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", integrators.method(self.method))

    def setting(self, name: str, default: Any) -> Any:
        """The model's own setting ``name``, ``default`` when not given."""
        return dict(self.settings).get(name, default)

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


def _read(model: type["Soma"], state: Mapping[str, Array],
          wide: Any) -> tuple[dict[str, Array], dict[str, Array]]:
    """The real-valued state in the compute dtype ``wide`` (a compensated
    state's two words joined) and the integer counters as stored."""
    def read(name: str) -> Array:
        if name + RESIDUAL in state:
            return numerics.join(state[name], state[name + RESIDUAL], wide)
        return numerics.widen(state[name], wide)

    x = {n: read(n) for n, v in model.state_variables.items() if not v.integer}
    counters = {n: state[n] for n, v in model.state_variables.items() if v.integer}
    return x, counters


def _integrate(model: type["Soma"], p: Any, x: dict[str, Array], current: Array,
               options: StepOptions) -> dict[str, Array]:
    """``x`` with its integrated variables advanced by one step of the method."""
    taus = model.time_constants(p)
    integrated = sorted(n for n, v in model.state_variables.items() if v.integrated)
    if sorted(taus) != integrated:
        raise RuleTypeError(f"{model.__name__}.time_constants gives {sorted(taus)}; the integrated "
                            f"state variables are {integrated}")
    return {**x, **integrators.advance(
        options.method, lambda y, evaluation: model.drives(p, y, current, evaluation, options),
        taus, x, options.dt)}


def _detect(model: type["Soma"], p: Any, x: Mapping[str, Array], x_new: dict[str, Array],
            options: StepOptions, forced: Array | None) -> tuple[dict[str, Array], Array]:
    """The spikes: the surrogate of x_m − threshold (threshold at the step's
    start state ``x``), or ``forced`` with x_m held at most at the threshold."""
    membrane = model.membrane
    threshold = model.spike_threshold(p, x)
    if forced is None:
        scale = model.cell_scale(p) if options.surrogate.relative else None
        return x_new, surrogates_lib.spike(x_new[membrane] - threshold, options.surrogate, scale)
    s = jnp.broadcast_to(forced, x_new[membrane].shape)
    return {**x_new, membrane: jnp.minimum(x_new[membrane], threshold)}, s


def _store(new: Mapping[str, Array], state: Mapping[str, Array]) -> dict[str, Array]:
    """The real-valued state back in the state dtype (two words where compensated)."""
    out = {}
    for name, value in new.items():
        if name + RESIDUAL in state:
            out[name], out[name + RESIDUAL] = numerics.split(value, state[name].dtype)
    single = [name for name in new if name + RESIDUAL not in state]
    out.update(zip(single, numerics.narrow_all([new[n] for n in single],
                                               [state[n].dtype for n in single])))
    return out


def _counted(model: type["Soma"], p: Any, counters: Mapping[str, Array], s: Array,
             dt: float) -> dict[str, Array]:
    """The integer counters after the step, as ``update_counters`` gives them."""
    new = model.update_counters(p, counters, s, dt)
    if set(new) != set(counters):
        raise RuleTypeError(f"{model.__name__}.update_counters gives {sorted(new)}; the integer "
                            f"state variables are {sorted(counters)}")
    return {n: value.astype(counters[n].dtype) for n, value in new.items()}


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
    ``*_residual`` of a compensated half-precision state. Integrate,
    detect, gate (the model's ``gate``), reset (``after_spike``), store,
    count (``update_counters``). Returns the new state (same keys and
    dtypes) and the spikes (0/1 in the state dtype).

    ``forced`` (0/1, broadcastable to the state) imposes the spikes instead
    of detecting them (teacher forcing, as when fitting a cell's recorded
    spike times): the reset follows ``forced`` and V is held at most at the
    threshold, so that a model lagging behind the cell cannot run away
    before the cell's spike resets it.
    """
    dtype = state[model.membrane].dtype
    wide = numerics.compute_dtype(dtype)
    p = types.SimpleNamespace(**{k: v.astype(wide) for k, v in params.items()})
    x, counters = _read(model, state, wide)
    # Recomputed on the backward pass from the input itself, which a scan
    # already holds, rather than kept as a mask per step.
    current = jax.checkpoint(lambda c: numerics.saturate(numerics.widen(c, wide)))(current)
    x_new = _integrate(model, p, x, current, options)
    forced = None if forced is None else jnp.asarray(forced, wide)
    x_new, s = _detect(model, p, x, x_new, options, forced)
    x_new, s = model.gate(p, counters, x, x_new, s)
    out = _store(after_spike(model, p, x_new, s, options), state)
    out.update(_counted(model, p, counters, s, options.dt))
    return out, s.astype(dtype)


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


def as_units(units: int | Sequence[int], name: str = "units") -> tuple[int, ...]:
    """``units`` (an int or a tuple of positive ints; () for one value per
    field) as a tuple, else a :class:`RuleError` naming ``name``."""
    if isinstance(units, (int, np.integer)):
        shape = (units,)
    else:
        try:
            shape = None if isinstance(units, (str, bytes)) else tuple(units)
        except TypeError:
            shape = None
    require(shape is not None and all(isinstance(u, (int, np.integer)) and not isinstance(u, bool)
                                      and u > 0 for u in shape),
            name, units, "an int or a tuple of positive ints", error=RuleError)
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
    ``input_scale`` and, if it has any, ``default_trainable``; a model that
    withholds its update at times (a refractory period) overrides ``gate``,
    and one with integer counters ``update_counters``. ``membrane`` names
    the variable whose crossing of ``spike_threshold`` is a spike.

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
    default_trainable: ClassVar[tuple[str, ...]] = ()
    #: Config fields that make the model adapt; all at 0 it does not (a
    #: network's ``adaptive_fraction`` zeroes them in its plain somas).
    adaptation_fields: ClassVar[tuple[str, ...]] = ()
    #: The names of ``state_variables``, derived for each subclass.
    state_names: ClassVar[tuple[str, ...]] = ()
    spike_parts: ClassVar[Mapping[str, str]] = {}
    integrated_names = _Renamed(
        "read state_variables[name].integrated",
        lambda cls, _: tuple(n for n, v in cls.state_variables.items() if v.integrated))
    residual_names = _Renamed(
        "the low words are stored_names[len(state_names):]",
        lambda cls, soma: soma.stored_names[len(cls.state_names):], per_instance=True)
    stored_fields = _Renamed("use state_fields()", lambda cls, _: cls.state_fields)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.state_names = tuple(cls.state_variables)
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
        counters = [n for n, v in cls.state_variables.items() if v.integer]
        if counters and cls.update_counters is Soma.update_counters:
            problems.append(f"its integer state variables {counters} need an update_counters")
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
    def drives(p: Any, x: Mapping[str, Array], current: Array,
               stage: integrators.Evaluation, options: StepOptions) -> dict[str, Array]:
        """F_x of τ_x·dx/dt = F_x for each integrated variable, at state ``x``
        and input ``current`` (pA, held over the step); ``stage`` (the
        integrator's :class:`~spark_somas.dynamics.integrators.Evaluation`)
        and ``options`` (its ``settings``) let a model guard its stiff terms."""
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
    def gate(p: Any, counters: Mapping[str, Array], x: Mapping[str, Array],
             x_new: dict[str, Array], spike: Array) -> tuple[dict[str, Array], Array]:
        """Which of the step's changes take effect, before the reset: the
        integrated state ``x_new`` and the ``spike``, from the start state
        ``x`` and the integer ``counters``. The base model withholds
        nothing; a refractory model holds V and drops the spike while its
        counter runs."""
        return x_new, spike

    @staticmethod
    def update_counters(p: Any, counters: Mapping[str, Array], spike: Array,
                        dt: float) -> dict[str, Array]:
        """The integer state variables after the step (each of them), from
        the step's ``spike``; a model without counters has none."""
        return {}

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
        config = self._configured(config, field_overrides)
        self.dt, self.trainable, self.dtype, self.param_dtype = self._settings(
            config, dt, method, trainable, dtype, param_dtype)
        self.units = as_units(units)
        self.method = method
        self.config = config
        memory = functools.partial(
            allocating, f"{type(self).__name__}: units = {self.units} (its state and trained "
            "fields)", self._bytes_per_neuron() * math.prod(self.units))
        with memory():  # an initializer draws per neuron
            values = {f.name: self._materialize(f.name, getattr(config, f.name), rngs)
                      for f in config.quantity_fields()}
        # Every value held as numbers is checked, inside jax.jit too: only
        # what an initializer draws under a trace (its key traced) has none.
        self.check_parameters({n: v for n, v in values.items()
                               if not isinstance(v, jax.core.Tracer)})
        with memory():  # what is allocated per neuron: the trained fields and the state
            self._hold_fields(values)
            self._hold_state()

    def _settings(self, config: configs.SomaConfig, dt: Any, method: Any, trainable: Any,
                  dtype: Any, param_dtype: Any) -> tuple[float, tuple[str, ...], Any, Any]:
        """The constructor's arguments besides the config, checked: dt (ms),
        the trained fields, the state dtype and the parameter dtype."""
        name = type(self).__name__
        require(method in integrators.METHODS, f"{name}: method", method,
                f"one of {integrators.METHODS}", error=RuleError)
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
        return dt, trainable, jnp.dtype(dtype), jnp.dtype(param_dtype)

    def _bytes_per_neuron(self) -> int:
        """What one neuron allocates: its trained fields and its stored state."""
        return (len(self.trainable) * self.param_dtype.itemsize
                + len(self.stored_names) * self.dtype.itemsize)

    def _hold_fields(self, values: Mapping[str, Any]) -> None:
        """Each field as a per-neuron ``nnx.Param`` (trained) or a
        :class:`SomaConstant` of its own shape (fixed), with its units."""
        for n, v in values.items():
            meta = {"units": self.config.field_info(n)["units"]}
            if n in self.trainable:
                setattr(self, n, nnx.Param(jnp.broadcast_to(jnp.asarray(v), self.units), **meta))
            else:
                setattr(self, n, SomaConstant(_constant(v), **meta))

    def _hold_state(self) -> None:
        """Each stored state Variable at rest, shape ``units``."""
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
               for n in self.state_fields()}
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
        for n in self.state_fields():
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
    def state_fields(cls) -> tuple[str, ...]:
        """Config fields whose values become a stored state value (each
        variable's ``rest`` and ``takes``): they must fit the state dtype,
        or the soma would rest or reset elsewhere."""
        names = []
        for var in cls.state_variables.values():
            if not var.integer:
                names += [var.rest] * isinstance(var.rest, str) + list(var.takes)
        return tuple(dict.fromkeys(names))

    def reset(self, batch_shape: Sequence[int] | None = None) -> None:
        """Back to rest (each state variable at its ``rest``: the AdEx's V = E_L, w = 0), shape
        ``(*units)`` or ``(*batch_shape, *units)``. Keeps the state dtype."""
        batch = () if batch_shape is None else tuple(batch_shape)
        for n in self.stored_names:
            var = getattr(self, n)
            var.set_value(self._rest_value(n, batch).astype(var[...].dtype))

    @property
    def stored_names(self) -> tuple[str, ...]:
        """Every SomaState Variable of this soma: the model's ``state_names``
        and, in half precision, their low words (``*_residual``)."""
        return self.state_names + low_words(self.state_variables, self.dtype)

    @property
    def state_shape(self) -> tuple[int, ...]:
        """``(*batch, *units)`` of the running state."""
        return tuple(getattr(self, self.membrane).get_value().shape)

    @property
    def options(self) -> StepOptions:
        """The dt, method, surrogate, gradient switches and the model's own
        settings (its config's) that :func:`step` needs beside the
        parameters and the state."""
        return StepOptions(dt=self.dt, method=self.method, surrogate=self.config.surrogate,
                           detach_reset=self.config.detach_reset,
                           detach_adaptation=self.config.detach_adaptation,
                           settings=self.config.settings())

    @classmethod
    def output_names(cls) -> tuple[str, ...]:
        """What a :class:`SomaOutput` of this model can hold: ``spikes``,
        ``potential`` (the membrane variable, whatever its name) and each
        state variable declared ``recordable``."""
        names = ("spikes", "potential") + tuple(
            n for n, v in cls.state_variables.items() if v.recordable and n != cls.membrane)
        return tuple(dict.fromkeys(names))

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
                          potential=getattr(self, self.membrane)[...],
                          declared=self.output_names())

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
