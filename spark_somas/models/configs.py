"""Configurations of the exponential somas, named as in Spark.

Units, one coherent set: potential mV, time ms, current pA, resistance GΩ,
conductance nS (GΩ · pA = mV, nS · mV = pA).

Every numeric field accepts a Python float, an array broadcastable to the
soma's ``units`` (one value per neuron), or an initializer ``(key, shape,
dtype) -> array`` (the ``jax.nn.initializers`` convention). Scalar and array
values are checked here, at construction; initializers are checked by the
soma once it has drawn them. A broken rule raises :class:`ConfigError`
naming the field, the value and the rule.

Defaults are the cortical pyramidal cell of Brette & Gerstner (2005), J.
Neurophysiol. 94:3637: C = 281 pF and g_L = 30 nS give τ_m = C/g_L = 9.37 ms
and R = 1/g_L = 1/30 GΩ; V_T = -50.4 mV, Δ_T = 2 mV, and the spike cut-off
V_th = V_T + 5 Δ_T = -40.4 mV used by Brian2's AdEx example.
"""

from __future__ import annotations

import dataclasses
import html
import json
import numbers
from typing import Any, Callable, Mapping, Union

import jax
import jax.numpy as jnp
import numpy as np

from spark_somas.dynamics import numerics
from spark_somas.models import surrogates as surrogates_lib
from spark_somas.errors import ConfigError, require  # re-exported: configs.ConfigError, configs.require
from spark_somas.errors import RuleTypeError, rule_message, violation

__all__ = [
    "ConfigError",
    "Rule",
    "Value",
    "require",
    "as_number",
    "FLOAT_DTYPES",
    "feasible_interval",
    "LARGEST",
    "SMALLEST",
    "declared_rules",
    "rule_order",
    "SomaConfig",
    "quantity",
    "ExponentialSomaConfig",
    "RefractoryExponentialSomaConfig",
    "AdaptiveExponentialSomaConfig",
    "SimplifiedAdaptiveExponentialSomaConfig",
]

Initializer = Callable[..., Any]
Value = Union[float, "np.ndarray", "jax.Array", Initializer]  # noqa: F821


@dataclasses.dataclass(frozen=True)
class Rule:
    """A constraint on one field: ``field <op> bound``.

    ``bound`` is a number or the name of another field; ``op`` one of
    ``">", ">=", "<", "finite"``. Non-finite values always break a rule.
    """

    op: str
    bound: float | str | None = None

    def text(self, name: str) -> str:
        within = f"finite, |{name}| ≤ {LARGEST:g}"
        if self.op == "finite":
            return f"{name} {within}"
        bound = self.bound if isinstance(self.bound, str) else f"{self.bound:g}"
        return f"{name} {self.op} {bound}, {within}"

    def holds(self, value: np.ndarray, other: np.ndarray | None, dtype: Any = None) -> np.ndarray:
        """Where ``value`` obeys the rule. With ``dtype`` (the one ``value``
        is stored in) a numeric bound is first rounded to it, as ``value``
        was: τ_m = 10^-6 in float32 is the float32 nearest 10^-6, which the
        rule ≥ 10^-6 must accept."""
        bound = other if isinstance(self.bound, str) else _rounded(self.bound, dtype)
        ok = np.isfinite(value) & (np.abs(value) <= _rounded(LARGEST, dtype))
        # Not in place: ``bound`` may broadcast ``ok`` to a larger shape.
        if self.op == ">":
            ok = ok & (value > bound)
        elif self.op == ">=":
            ok = ok & (value >= bound)
        elif self.op == "<":
            ok = ok & (value < bound)
        return ok


# The representable range. Every field lies within ±LARGEST in its unit and
# every positive one at or above SMALLEST: beyond that no neuron is
# physical (a 1 kV potential, a time constant of 1 ns), and within it every
# intermediate of a step is finite in float32 (spark_somas.dynamics.numerics).
LARGEST = 1e6
SMALLEST = 1e-6

FINITE = Rule("finite")
POSITIVE = Rule(">=", SMALLEST)
NON_NEGATIVE = Rule(">=", 0.0)


def _rounded(bound: float | None, dtype: Any) -> float | None:
    """``bound`` rounded to ``dtype`` (None: as is); ±inf where it overflows."""
    if bound is None or dtype is None:
        return bound
    with np.errstate(over="ignore"):
        return float(np.asarray(bound, np.float64).astype(jnp.dtype(dtype)))


#: The dtypes a soma's state and parameters may have.
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def as_number(value: Any, name: str, *, integer: bool = False,
              error: type[Exception] = ConfigError) -> float | int:
    """``value`` as a Python float (an int with ``integer``): any real
    scalar — a Python or NumPy number, a 0-d NumPy or JAX array, a
    ``Fraction``; with ``integer``, an integral one. A bool, a string, a
    complex number, an array of another shape or a value traced by
    ``jax.jit``/``vmap`` raises ``error`` naming ``name``: such values are
    static, and a trace has no number to give."""
    import jax

    if isinstance(value, jax.core.Tracer):
        require(False, name, value, "a concrete number: it is static (it shapes the compiled "
                "program), so pass it from outside jax.jit/vmap, or mark it static",
                error=error)
    kind = "an int" if integer else "a real number"
    if isinstance(value, (bool, np.bool_, str, bytes)) or not (
            isinstance(value, numbers.Real) or getattr(value, "shape", None) == ()):
        require(False, name, value, kind, error=error)
    try:
        arr = None if isinstance(value, numbers.Real) else np.asarray(value)
        if integer:
            ok = isinstance(value, numbers.Integral) or arr is not None and arr.dtype.kind in "iu"
        else:
            ok = arr is None or arr.dtype.kind in "iuf" or arr.dtype == jnp.bfloat16
        if ok:
            return int(value) if integer else float(value)
    except (TypeError, ValueError, OverflowError):
        pass
    require(False, name, value, kind, error=error)


def feasible_interval(config_class: type, name: str, values: Mapping[str, Any],
                      dtype: Any) -> tuple[Any, Any]:
    """The interval [low, high] of field ``name`` that every rule allows,
    the other fields held at ``values`` (name -> number or array).

    The representable range ±:data:`LARGEST` bounds every field; each rule on
    ``name`` (``name > b``, ``name >= b``, ``name < b``) and each rule of
    another field that names it (``other < name``, ``other > name``) narrows
    it. A strict inequality moves its bound to the next value representable
    in ``dtype``, so that ``clip(x, low, high)`` obeys every rule.
    """
    lo, hi = jnp.asarray(-LARGEST, dtype), jnp.asarray(LARGEST, dtype)

    def value(b: float | str) -> Any:
        return jnp.asarray(values[b] if isinstance(b, str) else b, dtype)

    for f in config_class.quantity_fields():
        rule = f.metadata["rule"]
        if f.name == name and rule.op in (">", ">="):
            b = value(rule.bound)
            lo = jnp.maximum(lo, jnp.nextafter(b, jnp.inf) if rule.op == ">" else b)
        elif f.name == name and rule.op == "<":
            hi = jnp.minimum(hi, jnp.nextafter(value(rule.bound), -jnp.inf))
        elif rule.bound == name and rule.op == "<":
            lo = jnp.maximum(lo, jnp.nextafter(value(f.name), jnp.inf))
        elif rule.bound == name and rule.op in (">", ">="):
            b = value(f.name)
            hi = jnp.minimum(hi, jnp.nextafter(b, -jnp.inf) if rule.op == ">" else b)
    return lo, hi


def declared_rules(config_class: type) -> dict[str, Rule]:
    """The rule of every numeric field of ``config_class``, by name, in
    declaration order: read from the declarations themselves, so that it
    also answers for a class whose body the dataclass decorator has not yet
    processed (while :class:`SomaConfig` checks it)."""
    rules: dict[str, Rule] = {}
    for klass in reversed(config_class.__mro__):
        own = vars(klass)
        fields = own.get("__dataclass_fields__")
        if fields is None:  # a body not yet made a dataclass: its fields are still Field objects
            fields = {n: v for n, v in own.items() if isinstance(v, dataclasses.Field)}
            for name in own.get("__annotations__", {}):
                if name not in fields:  # redeclared with a plain default: no longer a quantity
                    rules.pop(name, None)
        for name, f in fields.items():
            if "units" in f.metadata:
                rules[name] = f.metadata["rule"]
            else:
                rules.pop(name, None)
    return rules


def check_rules(owner: str, rules: Mapping[str, Rule]) -> None:
    """Refuses rules (field name -> rule) that no value can be checked or
    drawn against: a rule naming a field that is not numeric, or rules that
    refer to each other in a cycle (``a < b`` with ``b > a``, or longer).
    Raises :class:`~spark_somas.errors.RuleTypeError` naming ``owner``, the
    fields and the rules."""
    for name, rule in rules.items():
        if isinstance(rule.bound, str) and rule.bound not in rules:
            raise RuleTypeError(violation(
                f"{owner}: the rule {name} {rule.op} {rule.bound} names {rule.bound!r}, which",
                f"a rule's bound is a number or a numeric field of the same config, one of "
                f"{sorted(rules)}"))
    for start in rules:
        path = [start]
        while isinstance(rules[path[-1]].bound, str):
            path.append(rules[path[-1]].bound)
            if path[-1] in path[:-1]:
                cycle = path[path.index(path[-1]):]
                stated = ", ".join(f"{n} {rules[n].op} {rules[n].bound}" for n in cycle[:-1])
                raise RuleTypeError(violation(
                    f"{owner}: the rules {stated} refer to each other in a cycle "
                    f"({' → '.join(cycle)}), which",
                    "a field whose rule names another is checked and drawn after that one, so "
                    "rules may not lead back to their own field; state each relation once, on "
                    "one of its fields", plural=True))


def rule_order(config_class: type) -> tuple[str, ...]:
    """The numeric fields of ``config_class`` in dependency order: each
    after the field its rule names (``potential_reset < threshold``:
    ``threshold`` first), otherwise in declaration order. The order a
    drawer of legal values fills them in."""
    rules = declared_rules(config_class)
    order: dict[str, None] = {}

    def place(name: str) -> None:
        if name not in order:
            bound = rules[name].bound
            if isinstance(bound, str):
                place(bound)
            order[name] = None

    for name in rules:
        place(name)
    return tuple(order)


def quantity(default: float, *, symbol: str, units: str, doc: str, rule: Rule = FINITE,
             time_constant: bool = False) -> Any:
    """A numeric config field with its symbol, units, meaning and rule.

    ``time_constant`` marks a τ (ms) of the dynamics: in a compensated
    half-precision state dt/τ must stay resolvable, and a trained or fitted
    τ is kept ≥ dt, so that the forward-Euler leak 1 − dt/τ stays ≥ 0."""
    return dataclasses.field(
        default=default, metadata={"symbol": symbol, "units": units, "doc": doc, "rule": rule,
                                   "time_constant": time_constant}
    )


def is_initializer(value: Any) -> bool:
    return callable(value) and not hasattr(value, "shape")


#: Why a traced field value is refused unless validation is skipped.
TRACED_RULE = ("a value the rules can check: a traced value cannot be checked against the rules "
               "at construction; build the soma outside the transformation (jax.jit, jax.vmap, "
               "nnx.jit, nnx.vmap, ...), or pass __skip_validation__=True to take responsibility "
               "for it")


def is_traced(value: Any) -> bool:
    """Whether ``value`` (an array, a number or a list of them) holds a value
    traced by a JAX transformation: it has no number the rules could check."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(value))


def has_number(value: Any) -> bool:
    """Whether ``value`` holds numbers: neither traced nor a
    ``jax.ShapeDtypeStruct`` (what an abstract build, ``nnx.eval_shape``, holds)."""
    return not (is_traced(value) or isinstance(value, jax.ShapeDtypeStruct))


def abstract_text(value: Any) -> str:
    """A value with no number yet (traced, or a ``jax.ShapeDtypeStruct`` of
    an abstract build) as its dtype and shape: ``"float32[3]"``."""
    return f"{jnp.dtype(value.dtype).name}{list(value.shape)}"


def _traced_field(where: str, value: Any, skip_validation: bool) -> Any:
    """A traced field value as a JAX array, accepted unchecked only when the
    config skips validation; refused by name otherwise (:data:`TRACED_RULE`)."""
    value = jnp.asarray(value)
    require(skip_validation, where, f"a traced {abstract_text(value)}", TRACED_RULE)
    return value


def _describe_value(value: np.ndarray, ok: np.ndarray) -> str:
    if value.ndim == 0:
        return repr(float(value))
    bad = tuple(int(i) for i in np.argwhere(~ok)[0])
    return f"array of shape {value.shape} with {float(value[bad])!r} at index {bad}"


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class SomaConfig:
    """What every soma's config holds, whatever its equations: the
    surrogate of the spike's derivative and which of the spike's
    consequences are detached from the gradient. A model's own settings
    (fields that are neither numbers nor these, such as the exponential
    somas' ``exp_gradient``) are declared in its config and reach its
    drives through :meth:`settings`.

    What a spike s triggers has two parts, each with its own gradient switch
    (the forward pass is the same bit for bit under every combination):

    * ``detach_reset``: the reset, V ← V·(1 − s) + V_r·s. Detached (True,
      the default here; Zenke & Vogels 2021), ∂V_after/∂s = 0: the gradient
      does not see that a spike lowers V.
    * ``detach_adaptation``: the adaptation jumps, w ← w + b·s (AdEx) and
      θ ← θ + Δθ·s (simplified AdEx). Detached, ∂w/∂s = ∂θ/∂s = 0: no
      gradient reaches a spike through the state that outlasts it, so a
      network cannot learn by BPTT to hold information across a delay
      longer than τ_m. Kept (False, the default) it can. The gradient with
      respect to b and Δθ themselves flows either way.

    A model says which of its spike-triggered updates is which
    (:attr:`~spark_somas.models.protocol.StateVariable.on_spike`). A model's
    config subclasses it and declares its numeric fields with
    :func:`quantity` — symbol, units, meaning, rule — from which validation,
    ``to_dict``/``from_dict``, the trained-parameter projection and the
    property tests all follow.
    """

    surrogate: surrogates_lib.Surrogate = surrogates_lib.DEFAULT
    detach_reset: bool = True
    detach_adaptation: bool = False
    __skip_validation__: dataclasses.InitVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # When the class is defined, before any value is checked or drawn
        # against its rules: a cycle there would never settle.
        super().__init_subclass__(**kwargs)
        check_rules(cls.__name__, declared_rules(cls))

    def __new__(cls, *args: Any, **kwargs: Any) -> "SomaConfig":
        # Before the dataclass's __init__, whose refusal of an unknown
        # keyword would not say how to skip validation.
        if "validated" in kwargs:
            refuse_unknown(cls, ["validated"])
        return super().__new__(cls)

    @property
    def validated(self) -> bool:
        """Whether the rules were checked at construction: False only for a
        config built with ``__skip_validation__=True``. Not a field: it
        describes how the config was made, not the neuron."""
        return self._validated

    def __post_init__(self, skip_validation: bool) -> None:
        for f in self.quantity_fields():
            value = getattr(self, f.name)
            require(not isinstance(value, bool) and (
                isinstance(value, (int, float)) or hasattr(value, "shape")
                or isinstance(value, (list, tuple)) or is_initializer(value)
            ), f"{type(self).__name__}.{f.name}", value,
                "a float, an array or an initializer (key, shape, dtype) -> array")
            if is_traced(value):
                object.__setattr__(self, f.name, _traced_field(
                    f"{type(self).__name__}.{f.name}", value, skip_validation))
            elif not is_initializer(value):
                object.__setattr__(self, f.name, self._number_field(f.name, value))
        surrogate = self.surrogate
        try:
            if isinstance(surrogate, str):
                surrogate = surrogates_lib.by_name(surrogate)
            elif isinstance(surrogate, Mapping):
                surrogate = surrogates_lib.from_dict(surrogate)
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(rule_message(
                f"{type(self).__name__}.surrogate", self.surrogate,
                f"a surrogate name, one of {surrogates_lib.names()}, or a "
                f"dict of 'name' and its parameters ({type(err).__name__}: {err})"
            )) from None
        require(isinstance(surrogate, surrogates_lib.Surrogate),
                f"{type(self).__name__}.surrogate", self.surrogate,
                "a spark_somas.models.surrogates.Surrogate, its name or its dict")
        object.__setattr__(self, "surrogate", surrogate)
        for name in ("detach_reset", "detach_adaptation"):
            require(isinstance(getattr(self, name), bool), f"{type(self).__name__}.{name}",
                    getattr(self, name), "a bool (True: no gradient through it)")
        object.__setattr__(self, "_validated", not skip_validation)
        if not skip_validation:
            self.validate({f.name: getattr(self, f.name) for f in self.quantity_fields()})

    def _number_field(self, name: str, value: Any) -> float | np.ndarray | Any:
        """A field's value as stored: a float, a float64 array (from a list),
        or the array given; refused unless it holds real numbers only."""
        where = f"{type(self).__name__}.{name}"
        rule = "real numbers: a float or a (rectangular) array of them"
        if isinstance(value, (int, float)):
            try:
                return float(value)
            except OverflowError:  # an int beyond every float
                require(False, where, f"an int of {len(str(abs(value)))} digits",
                        self.field_info(name)["rule"].text(name))
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError):  # a ragged list
            require(False, where, value, rule)
        if np.iscomplexobj(arr):
            require(False, where, value, "real values (a complex number would lose its "
                    "imaginary part)")
        require(arr.dtype.kind in "iuf" or arr.dtype == jnp.bfloat16, where, value, rule)
        return arr.astype(np.float64) if isinstance(value, (list, tuple)) else value

    @classmethod
    def quantity_fields(cls) -> tuple[dataclasses.Field, ...]:
        """The numeric fields (those with units), in declaration order."""
        return tuple(f for f in dataclasses.fields(cls) if "units" in f.metadata)

    @classmethod
    def time_constant_fields(cls) -> tuple[str, ...]:
        """The numeric fields marked ``time_constant`` (the τs, ms)."""
        return tuple(f.name for f in cls.quantity_fields() if f.metadata.get("time_constant"))

    @classmethod
    def field_info(cls, name: str) -> Mapping[str, Any]:
        """Symbol, units, meaning and rule of field ``name``."""
        return {f.name: f.metadata for f in cls.quantity_fields()}[name]

    def validate(self, values: Mapping[str, Any], dtype: Any = None) -> None:
        """Checks every rule on ``values`` (field name -> number or array).

        Initializers and fields missing from ``values`` are skipped (the soma
        checks what it draws). With ``dtype``, the dtype the values are
        stored in, numeric bounds are rounded to it first (see
        :meth:`Rule.holds`). Raises :class:`ConfigError` on the first broken
        rule. Every rule needs finite values, so finiteness is checked first:
        a NaN or inf is blamed on its own field, not on a field whose rule
        compares against it; a broken comparison names the other field's
        value too.
        """
        arrays = {f.name: np.asarray(values[f.name], dtype=np.float64)
                  for f in self.quantity_fields()
                  if f.name in values and not is_initializer(values[f.name])}
        for name, arr in arrays.items():
            self._require(name, arr, np.isfinite(arr) & (np.abs(arr) <= _rounded(LARGEST, dtype)))
        for name, arr in arrays.items():
            rule = self.field_info(name)["rule"]
            if not isinstance(rule.bound, str):
                self._require(name, arr, rule.holds(arr, None, dtype))
            elif rule.bound in arrays:
                other = arrays[rule.bound]
                try:
                    np.broadcast_shapes(arr.shape, other.shape)
                except ValueError:
                    raise ConfigError(violation(
                        f"{type(self).__name__}.{name} has shape {arr.shape} and {rule.bound} "
                        f"shape {other.shape}, which",
                        "per-neuron arrays broadcast with each other", plural=True
                    )) from None
                self._require(name, arr, rule.holds(arr, other), (rule.bound, other))

    def _require(self, name: str, arr: np.ndarray, ok: np.ndarray,
                 other: tuple[str, np.ndarray] | None = None) -> None:
        if np.all(ok):
            return
        shape = np.broadcast_shapes(arr.shape, ok.shape)
        ok = np.broadcast_to(ok, shape)
        info = self.field_info(name)
        note = ""
        if other is not None:
            other_name, other_arr = other
            shown = other_arr if other_arr.ndim == 0 else np.broadcast_to(other_arr, shape)
            note = (f"; {other_name} = {_describe_value(shown, ok)} "
                    f"{self.field_info(other_name)['units']}")
        raise ConfigError(violation(
            f"{type(self).__name__}.{name} = {_describe_value(np.broadcast_to(arr, shape), ok)} "
            f"{info['units']}",
            f"{info['rule'].text(name)} ({info['doc']}, {info['symbol']}){note}"
        ))

    def replace(self, **changes: Any) -> "SomaConfig":
        """A copy with ``changes`` applied, validated again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict: floats, nested lists for arrays, the surrogate as its dict.

        JSON-serialisable unless a field holds an initializer (kept as is).
        """
        out: dict[str, Any] = {}
        for f in self.quantity_fields():
            value = getattr(self, f.name)
            out[f.name] = value if isinstance(value, float) or is_initializer(value) else (
                np.asarray(value).tolist()
            )
        out["surrogate"] = self.surrogate.to_dict()
        for name in self.option_names()[1:]:
            out[name] = getattr(self, name)
        return out

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The fields that are not numbers, in declaration order: the
        protocol's (``surrogate``, ``detach_reset``, ``detach_adaptation``),
        then the model's own settings."""
        return tuple(f.name for f in dataclasses.fields(cls) if "units" not in f.metadata)

    def settings(self) -> tuple[tuple[str, Any], ...]:
        """The model's own settings, (name, value) pairs of the fields that
        are neither numbers nor :class:`SomaConfig`'s: what a soma's
        :class:`~spark_somas.models.protocol.StepOptions` hands its drives."""
        base = {f.name for f in dataclasses.fields(SomaConfig)}
        return tuple((n, getattr(self, n)) for n in self.option_names() if n not in base)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SomaConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`.

        A dict of an earlier release keeps its meaning (:meth:`upgrade_dict`)."""
        require(isinstance(d, Mapping), f"{cls.__name__}.from_dict: d", d,
                "a dict of config fields")
        d = cls.upgrade_dict(d)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            refuse_unknown(cls, unknown)
        return cls(**d)

    @classmethod
    def upgrade_dict(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        """A config dict written by an earlier release, as it meant then: one
        written before ``detach_adaptation`` existed, when ``detach_reset``
        (True by default) cut the adaptation jumps' gradient too, gets
        ``detach_adaptation`` = its ``detach_reset``; the ``exp_gradient``
        that every config once held is dropped from the dict of a model
        that has no exponential term (it ignored it)."""
        d = dict(d)
        if "exp_gradient" in d and "exp_gradient" not in {f.name for f in dataclasses.fields(cls)}:
            del d["exp_gradient"]
        if "detach_adaptation" in d:
            return d
        return {**d, "detach_adaptation": d.get("detach_reset", True)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "SomaConfig":
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.validated == other.validated and all(
            _same(getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self)
        )

    def __hash__(self) -> int:
        # Consistent with __eq__: a soma keeps its config as static graph
        # data, so equal configs must hash alike for jit caches to hit.
        return hash((type(self), self.validated) + tuple(_hashable(getattr(self, f.name))
                                                         for f in dataclasses.fields(self)))

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        """(field, symbol, value, units, meaning) for each numeric field."""
        return [
            (f.name, f.metadata["symbol"], format_value(getattr(self, f.name)),
             f.metadata["units"], f.metadata["doc"])
            for f in self.quantity_fields()
        ]

    def __repr__(self) -> str:
        body = ", ".join(f"{name}={value} {units}" for name, _, value, units, _ in self.rows())
        options = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.option_names())
        return f"{type(self).__name__}({body}, {options})"

    def _repr_html_(self) -> str:
        return html_table(type(self).__name__, self.rows(), [
            (n, repr(v) if n == "surrogate" else str(v))
            for n, v in ((n, getattr(self, n)) for n in self.option_names())])


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class ExponentialSomaConfig(SomaConfig):
    """Exponential integrate-and-fire soma (Fourcaud-Trocmé et al. 2003, J.
    Neurosci. 23:11628).

    .. math::

        τ_m \\frac{dV}{dt} = -(V - E_L) + Δ_T \\exp\\left(\\frac{V - V_T}{Δ_T}\\right) + R I,
        \\qquad V > V_{th} \\Rightarrow V \\leftarrow V_r

    With the defaults, rheobase is I_rh = (V_T - E_L - Δ_T)/R = 546 pA; a
    constant 800 pA makes the default soma fire regularly at 56 Hz (dt = 0.1 ms).

    ``exp_gradient``, one of :data:`spark_somas.dynamics.numerics.EXP_GRADIENTS`,
    is the backward pass of the exponential term (the forward pass is the
    same under all three); the exponential drive reads it from the step's
    settings (:func:`spark_somas.models.exponential.exponential_term`).
    """

    potential_rest: Value = quantity(-70.6, symbol="E_L", units="mV", doc="resting potential")
    potential_reset: Value = quantity(
        -70.6, symbol="V_r", units="mV", doc="potential after a spike",
        rule=Rule("<", "threshold"),
    )
    potential_tau: Value = quantity(
        9.37, symbol="τ_m", units="ms", doc="membrane time constant", rule=POSITIVE,
        time_constant=True,
    )
    resistance: Value = quantity(
        1.0 / 30.0, symbol="R", units="GΩ", doc="membrane resistance (1/g_L)", rule=POSITIVE
    )
    threshold: Value = quantity(
        -40.4, symbol="V_th", units="mV", doc="spike cut-off: a spike is emitted when V > V_th",
        rule=Rule(">", "rheobase_threshold"),
    )
    rheobase_threshold: Value = quantity(
        -50.4, symbol="V_T", units="mV", doc="where the exponential runaway starts"
    )
    spike_slope: Value = quantity(
        2.0, symbol="Δ_T", units="mV", doc="sharpness of spike initiation", rule=POSITIVE
    )
    exp_gradient: str = "exact"

    def __post_init__(self, skip_validation: bool) -> None:
        require(self.exp_gradient in numerics.EXP_GRADIENTS, f"{type(self).__name__}.exp_gradient",
                self.exp_gradient, f"one of {numerics.EXP_GRADIENTS} (the backward pass of the "
                "exponential term)")
        super().__post_init__(skip_validation)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class RefractoryExponentialSomaConfig(ExponentialSomaConfig):
    """ExpIF with an absolute refractory period ``cooldown`` (Brian2's convention:
    n = floor(t_ref/dt + 1e-3) steps, the first being the spike's own)."""

    cooldown: Value = quantity(
        2.0, symbol="t_ref", units="ms", doc="absolute refractory period", rule=NON_NEGATIVE
    )


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class AdaptiveExponentialSomaConfig(ExponentialSomaConfig):
    """Adaptive exponential integrate-and-fire (Brette & Gerstner 2005).

    .. math::

        τ_m \\dot V = -(V - E_L) + Δ_T e^{(V - V_T)/Δ_T} - R w + R I, \\qquad
        τ_w \\dot w = a (V - E_L) - w, \\qquad
        V > V_{th} \\Rightarrow V \\leftarrow V_r,\\ w \\leftarrow w + b

    No refractory period (unlike Spark's, this config extends the plain one).
    Defaults: Brette & Gerstner's a = 4 nS, b = 80.5 pA, τ_w = 144 ms.
    """

    adaptation_tau: Value = quantity(
        144.0, symbol="τ_w", units="ms", doc="adaptation time constant", rule=POSITIVE,
        time_constant=True,
    )
    adaptation_delta: Value = quantity(
        80.5, symbol="b", units="pA", doc="jump of w at each spike"
    )
    adaptation_subthreshold: Value = quantity(
        4.0, symbol="a", units="nS", doc="subthreshold coupling"
    )


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class SimplifiedAdaptiveExponentialSomaConfig(RefractoryExponentialSomaConfig):
    """Refractory ExpIF whose threshold adapts instead of a current ``w``.

    A threshold offset θ (mV, from 0) shifts both V_T and V_th; after each
    step θ ← θ·exp(-dt/τ_θ) + Δθ·spike.
    """

    threshold_tau: Value = quantity(
        50.0, symbol="τ_θ", units="ms", doc="decay of the threshold offset", rule=POSITIVE,
        time_constant=True,
    )
    threshold_delta: Value = quantity(
        2.0, symbol="Δθ", units="mV", doc="jump of the threshold offset at each spike",
        rule=NON_NEGATIVE,
    )


def refuse_unknown(cls: type, unknown: list[str], soma: str | None = None) -> None:
    """Raises ConfigError: config class ``cls`` (or the soma named ``soma``,
    which takes its fields) has no field(s) ``unknown``, listing the fields
    it has; for ``validated``, says how to skip validation."""
    known = sorted(f.name for f in dataclasses.fields(cls))
    built = "a config" if soma is None else "a soma"
    hint = (f"; 'validated' only reports whether the rules were checked: to build {built} "
            "without checking them, pass __skip_validation__=True"
            if "validated" in unknown else "")
    owner = f"{cls.__name__} has no" if soma is None else f"{soma} has no config"
    raise ConfigError(f"{owner} field(s) {unknown}; known: {known}{hint}")


def _same(a: Any, b: Any) -> bool:
    if is_traced(a) or is_traced(b):
        return a is b
    if is_initializer(a) or is_initializer(b) or isinstance(a, (bool, str, surrogates_lib.Surrogate)):
        return a == b
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def _hashable(value: Any) -> Any:
    if is_traced(value):
        return id(value)
    if is_initializer(value) or isinstance(value, (bool, str, float, surrogates_lib.Surrogate)):
        return value
    arr = np.asarray(value, dtype=np.float64)
    return arr.shape, arr.tobytes()


def format_value(value: Any) -> str:
    """A field's value for a repr: a number, ``array(shape)[min … max]``, an
    initializer's name, or a value with no number yet (traced, or abstract
    under ``nnx.eval_shape``) as its shape and dtype."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if not has_number(value):
        return f"<{abstract_text(value)}>"
    if is_initializer(value):
        return f"<initializer {getattr(value, '__name__', type(value).__name__)}>"
    arr = np.asarray(value)
    if arr.ndim == 0:
        return f"{float(arr):.6g}"
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        return f"array{arr.shape}"
    return f"array{arr.shape}[{arr.min():.4g} … {arr.max():.4g}]"


def html_table(title: str, rows: list[tuple[str, ...]], extra: list[tuple[str, str]]) -> str:
    """An HTML table of (field, symbol, value, units, meaning) rows for Jupyter."""
    esc = html.escape
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    tail = "".join(f"<tr><td>{esc(k)}</td><td></td><td colspan=3>{esc(v)}</td></tr>" for k, v in extra)
    return (
        f"<b>{esc(title)}</b><table><tr><th>field</th><th>symbol</th><th>value</th>"
        f"<th>units</th><th>meaning</th></tr>{body}{tail}</table>"
    )

