"""The ready spiking network: Linear → soma layers → Linear → leaky integrator or readout soma.

::

    x_t ─ Linear ─·I_0─▶ soma layer 1 ─ Linear ─·I_0─▶ … ─▶ soma layer L
                  (synapse)  │ s_t (+ Linear_rec(s_{t-1}))        │
                                                                  ▼
                                     Linear ─▶ leaky integrator U_t  (or a readout soma)
                                                                  ▼
               readout over (a window of) time: max U, mean U, spike count, first spike = logits

Each hidden layer (:class:`Layer`) is any soma kind, with optional
recurrent weights, an optional current-based exponential synapse, its own
input gain and its own trained neuron parameters.

Somas take currents in pA. A Linear output z (dimensionless) becomes the
current I = I_0 · z with I_0 = gain × the layer's **rheobase current**
I_rh = (V_T − E_L − Δ_T)/R, 546 pA for Brette & Gerstner's cell: at gain 1,
z = 1 is just enough to make a neuron fire eventually, so the default Linear
initialisation (z of order 1) starts the network near its firing regime.
Spike inputs (one step each) carry less charge and take a larger gain and
an optional exponential synapse (see :class:`SpikingNetwork`).

The network's default step is dt = 1 ms (the somas' own default is 0.1 ms):
25-50 steps then span 25-50 ms, a few membrane time constants
(τ_m = 9.37 ms), which is what a classification needs; forward Euler at
dt/τ_m ≈ 0.1 is still stable.

**Gradients for training.** A network's somas spike through
:data:`TRAINING_SURROGATE`, a triangle as wide as each cell's V_th − E_L
and damped to 0.3 (Bellec et al. 2018), and backpropagate the exponential
term with :data:`TRAINING_EXP_GRADIENT` ``"bounded"`` (its slope held at its
value at V_T beyond it, :mod:`spark_somas.dynamics.numerics`): measured on recurrent
temporal tasks, these keep BPTT finite over thousands of steps where the
exact gradient and the somas' own default surrogate overflow within a few
dozen updates (docs: "Training over long sequences"). Both are fields of
:class:`Layer` and the network; ``None`` keeps the soma config's own.

**Trainable neuron parameters** are per neuron ``nnx.Param`` inside the soma
(physical values: ms, mV, pA, nS), kept inside the config rules by the
optimizer (:mod:`spark_somas.training.constraints`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import warnings
from typing import Any, Callable, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spark_somas.simulation import backends
from spark_somas.simulation import layout
from spark_somas.dynamics import numerics
from spark_somas.models import registry
from spark_somas.models import surrogates as surrogates_lib
from spark_somas.models.configs import LARGEST, SMALLEST, SomaConfig, as_number, require
from spark_somas.errors import RuleError, RuleTypeError, allocating, require_shape
from spark_somas.simulation.driver import FusedBackendError, drive
from spark_somas.models.somas import Soma, SomaOutput, SomaState, input_scale

__all__ = [
    "TRAINING_SURROGATE",
    "TRAINING_EXP_GRADIENT",
    "TRAINING_DETACH_RESET",
    "TRAINING_DETACH_ADAPTATION",
    "TRAINING_FIELDS",
    "plain_neurons",
    "HIDDEN",
    "trainable_neuron_params",
    "rheobase_current",
    "Layer",
    "HiddenLayer",
    "SpikingNetwork",
    "NetworkOutput",
    "network_from_spec",
    "NetworkConfig",
    "READOUTS",
    "spike_count",
    "max_potential",
    "mean_potential",
    "first_spike_time",
]

Array = jax.Array


#: The surrogate a network's somas train with by default: Bellec et al.'s
#: (2018) triangle, as wide as the cell's V_th − E_L, damped to 0.3.
TRAINING_SURROGATE = surrogates_lib.Triangle(width=1.0, damping=0.3, relative=True)
#: The backward pass of the exponential a network's somas train with by default.
TRAINING_EXP_GRADIENT = "bounded"
#: Whether a network's somas train with the reset's gradient cut (V ← V_r).
TRAINING_DETACH_RESET = False
#: Whether a network's somas train with the adaptation jumps' gradient cut
#: (w ← w + b·s, θ ← θ + Δθ·s): kept, so BPTT reaches a spike seconds back.
TRAINING_DETACH_ADAPTATION = False
#: The NNX filter of a network's hidden layers (weights, and neuron
#: parameters when trained), not its readout: ``make_optimizer(net,
#: frozen=HIDDEN)`` trains the readout alone.
HIDDEN = nnx.PathContains("layers")
#: What an older release's network dict, which has no such keys, meant: the
#: soma config's own surrogate, exponential gradient and reset switch.
_LEGACY_GRADIENTS = {"surrogate": None, "exp_gradient": None, "detach_reset": None}
#: The gradient settings a layer gives its somas over their configs' own.
TRAINING_FIELDS = ("surrogate", "exp_gradient", "detach_reset", "detach_adaptation")


def _legacy(d: Mapping[str, Any]) -> dict[str, Any]:
    """A network or layer dict with the gradient settings it meant when it
    was written before they were recorded: the soma config's own, and, for
    a dict without ``detach_adaptation``, the adaptation switch that
    :meth:`~spark_somas.models.configs.SomaConfig.upgrade_dict` gives a
    config of that time from its ``detach_reset`` (a soma argument, else the
    config's)."""
    if "detach_adaptation" in d:
        return {**_LEGACY_GRADIENTS, **d}
    kwargs = d.get("soma_kwargs") or {}
    config = kwargs.get("config")
    config = config if isinstance(config, Mapping) else vars(config) if config is not None else {}
    given = {**config, **kwargs}
    older = {"detach_reset": given["detach_reset"]} if "detach_reset" in given else {}
    return {**_LEGACY_GRADIENTS, **d,
            "detach_adaptation": SomaConfig.upgrade_dict(older)["detach_adaptation"]}


def plain_neurons(soma_class: type[Soma], arguments: Mapping[str, Any], units: int,
                  fraction: float) -> dict[str, np.ndarray]:
    """Field overrides that leave the first round(fraction · units) somas of
    a layer adaptive and make the others plain: each of the soma class's
    ``adaptation_fields`` (AdEx: a, b; simplified: Δθ) per neuron, its
    configured value for the adaptive somas and 0 for the rest (an AdEx
    with a = b = 0 is an ExpIF; a simplified soma with Δθ = 0 a refractory
    ExpIF). ``arguments`` are what the soma's constructor would receive."""
    config = arguments.get("config") or soma_class.config_class()
    adaptive = np.arange(units) < round(fraction * units)
    out = {}
    for name in soma_class.adaptation_fields:
        value = arguments.get(name, getattr(config, name))
        require(not callable(value), f"{name} with adaptive_fraction", value,
                "numbers (an initializer draws after the plain somas are chosen)",
                error=RuleError)
        out[name] = np.where(adaptive, np.broadcast_to(np.asarray(value, np.float64), (units,)),
                             0.0)
    return out

def trainable_neuron_params(soma_class: type[Soma]) -> tuple[str, ...]:
    """The fields trained when ``trainable_neurons=True``: the soma class's
    own ``default_trainable``."""
    return tuple(soma_class.default_trainable)


def rheobase_current(soma: Soma) -> float:
    """Deprecated name of :func:`spark_somas.models.somas.input_scale`, the
    soma's unit of input current (pA): one quantity, one name."""
    warnings.warn("rheobase_current(soma) is input_scale(soma) "
                  "(from spark_somas.models.somas import input_scale)",
                  DeprecationWarning, stacklevel=2)
    return input_scale(soma)


def spike_count(spikes: Array) -> Array:
    """Spikes summed over time: (T, B, C) -> (B, C)."""
    return jnp.sum(spikes, axis=0)


def max_potential(potential: Array) -> Array:
    """Largest potential over time: (T, B, C) -> (B, C)."""
    return jnp.max(potential, axis=0)


def mean_potential(potential: Array) -> Array:
    """Potential averaged over time: (T, B, C) -> (B, C)."""
    return jnp.mean(potential, axis=0)


def first_spike_time(spikes: Array, dt: float = 1.0) -> Array:
    """Time (ms) of each neuron's first spike, differentiable through the spikes.

    t_first = dt · Σ_t Π_{t' ≤ t} (1 − s_{t'}): the number of steps before
    the first spike, times dt; T · dt for a neuron that never fires. With
    0/1 spikes this is exact; through the surrogate, an earlier spike at
    step j < k (the first spike) shortens it by (k − j) · dt, so gradients
    pull the right neuron's spike earlier. (T, B, C) -> (B, C).
    """
    return dt * jnp.sum(jnp.cumprod(1.0 - spikes, axis=0), axis=0)


#: Readout name -> (function of (trace, dt), the trace it reads, "spikes" or
#: "potential"). "first_spike" gives the logits −t_first (ms): the earliest
#: neuron wins (Mostafa 2018).
READOUTS: dict[str, tuple[Callable[[Array, float], Array], str]] = {
    "max": (lambda v, dt: max_potential(v), "potential"),
    "mean": (lambda v, dt: mean_potential(v), "potential"),
    "count": (lambda s, dt: spike_count(s), "spikes"),
    "first_spike": (lambda s, dt: -first_spike_time(s, dt), "spikes"),
}


@flax.struct.dataclass
class NetworkOutput:
    """A forward pass: ``logits`` (B, C) from the readout; ``layer_spikes``,
    each hidden layer's spikes (T, B, N_l); ``output_potential`` (T, B, C),
    the leaky readout U (dimensionless) or the readout soma's V (mV);
    ``output_spikes`` (T, B, C) for a readout soma, else None;
    ``output_counts`` (B, C), the readout soma's spike counts in the readout
    window, else None."""

    logits: Array
    layer_spikes: tuple[Array, ...]
    output_potential: Array
    output_spikes: Array | None = None
    output_counts: Array | None = None

    @property
    def hidden_spikes(self) -> Array:
        """Every hidden layer's spikes side by side, of shape (T, B, Σ N_l)."""
        if len(self.layer_spikes) == 1:
            return self.layer_spikes[0]
        return jnp.concatenate(self.layer_spikes, axis=-1)


def _positive_int(name: str, value: Any) -> None:
    require(not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1,
            name, value, "a positive int", error=RuleError)


def _value_hash(config: Any) -> int:
    # A module's config is static graph data: equal configs hash alike.
    return hash(json.dumps(config.to_dict(), sort_keys=True, default=repr))


def _as_surrogate(value: Any) -> surrogates_lib.Surrogate | None:
    if value is None or isinstance(value, surrogates_lib.Surrogate):
        return value
    try:
        return (surrogates_lib.by_name(value) if isinstance(value, str)
                else surrogates_lib.from_dict(value))
    except (KeyError, TypeError, ValueError) as err:
        problem = err
    require(False, "surrogate", value, f"None, a Surrogate, its name or its dict ({problem})",
            error=RuleError)


@dataclasses.dataclass(frozen=True)
class Layer:
    """One hidden layer of a :class:`SpikingNetwork`, as a frozen value.

    Attributes:
      units: N, somas in the layer.
      soma: its model, a name in ``ss.SOMAS``, a class name or a soma class
        (stored as the class name).
      recurrent: add Linear_rec(s_{t−1}) (no bias, zero-initialised, so
        training starts from the feedforward network) to the layer's z_t.
      synapse_tau: τ_s (ms) of a current-based exponential synapse,
        I_t = β_s I_{t−1} + I_0 z_t with β_s = exp(−dt/τ_s); None: I_t = I_0 z_t.
      trainable_neurons: False, True (every :func:`trainable_neuron_params`
        of the kind, per neuron) or field names (a tuple, or one name).
      input_gain: I_0 in units of the layer's rheobase current.
      soma_kwargs: what the soma's constructor receives besides units, dt
        and trainable (a config object or its dict, field overrides).
      surrogate: the somas' surrogate (a Surrogate, its name or its dict),
        :data:`TRAINING_SURROGATE` by default; None: the soma config's own.
      exp_gradient: the backward pass of the exponential term, one of
        ``spark_somas.dynamics.numerics.EXP_GRADIENTS``, :data:`TRAINING_EXP_GRADIENT`
        by default; None: the soma config's own.
      detach_reset: cut the reset's gradient (True) or keep it (False),
        :data:`TRAINING_DETACH_RESET` by default; None: the soma config's own.
      detach_adaptation: cut the adaptation jumps' gradient,
        :data:`TRAINING_DETACH_ADAPTATION` by default; None: the soma config's own.
      adaptive_fraction: the share of the layer's somas that adapt; the
        others have their model's adaptation fields at 0 (:func:`plain_neurons`),
        as Bellec et al.'s (2018) mix of LIF and adaptive LIF neurons.
    """

    units: int
    soma: str | type = "adex"
    recurrent: bool = False
    synapse_tau: float | None = None
    trainable_neurons: bool | str | tuple[str, ...] = ()
    input_gain: float = 1.0
    soma_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    surrogate: surrogates_lib.Surrogate | str | Mapping[str, Any] | None = TRAINING_SURROGATE
    exp_gradient: str | None = TRAINING_EXP_GRADIENT
    detach_reset: bool | None = TRAINING_DETACH_RESET
    detach_adaptation: bool | None = TRAINING_DETACH_ADAPTATION
    adaptive_fraction: float = 1.0

    def __post_init__(self) -> None:
        cls = registry.soma_class(self.soma)
        _positive_int("units", self.units)
        for name in ("input_gain", "synapse_tau"):
            value = getattr(self, name)
            if value is None and name == "synapse_tau":
                continue
            # The config rules' range: within it I_0 = gain · I_rh is finite in float32.
            value = as_number(value, name, error=RuleError)
            require(SMALLEST <= value <= LARGEST, name, value,
                    f"{SMALLEST:g} ≤ {name} ≤ {LARGEST:g} (> 0 and finite in float32)",
                    error=RuleError)
            object.__setattr__(self, name, value)
        trainable = self.trainable_neurons
        if trainable is True:
            trainable = trainable_neuron_params(cls)
        elif trainable is False:
            trainable = ()
        elif isinstance(trainable, str):
            trainable = (trainable,)
        kwargs = dict(self.soma_kwargs)
        require("dt" not in kwargs, "soma_kwargs['dt']", kwargs.get("dt"),
                "not set per layer: every soma of a network steps at the network's dt "
                "(SpikingNetwork(dt=...), 1 ms by default, where a lone soma's default is "
                "0.1 ms)", error=RuleError)
        if isinstance(kwargs.get("config"), Mapping):
            kwargs["config"] = cls.config_class.from_dict(kwargs["config"])
        for name in ("detach_reset", "detach_adaptation"):
            require(getattr(self, name) is None or isinstance(getattr(self, name), bool), name,
                    getattr(self, name), "None or a bool (True: no gradient through it)",
                    error=RuleError)
        fraction = as_number(self.adaptive_fraction, "adaptive_fraction", error=RuleError)
        require(0.0 <= fraction <= 1.0, "adaptive_fraction", fraction, "0 ≤ adaptive_fraction ≤ 1",
                error=RuleError)
        require(fraction == 1.0 or cls.adaptation_fields, "adaptive_fraction", fraction,
                f"1 for {cls.__name__}, which declares no adaptation_fields", error=RuleError)
        object.__setattr__(self, "adaptive_fraction", fraction)
        for name in TRAINING_FIELDS:
            require(name not in kwargs or getattr(self, name) is None, f"soma_kwargs[{name!r}]",
                    kwargs.get(name), f"not given while the layer's {name} is set (give it as "
                    f"the layer's or network's {name}=..., or set that to None)", error=RuleError)
        object.__setattr__(self, "surrogate", _as_surrogate(self.surrogate))
        require(self.exp_gradient is None or self.exp_gradient in numerics.EXP_GRADIENTS,
                "exp_gradient", self.exp_gradient, f"None or one of {numerics.EXP_GRADIENTS}",
                error=RuleError)
        object.__setattr__(self, "units", int(self.units))
        object.__setattr__(self, "soma", cls.__name__)
        object.__setattr__(self, "trainable_neurons", tuple(trainable))
        object.__setattr__(self, "soma_kwargs", kwargs)

    __hash__ = _value_hash

    def to_dict(self) -> dict[str, Any]:
        """Plain values: tuples as lists, a soma config as its ``to_dict()``."""
        kwargs = dict(self.soma_kwargs)
        if kwargs.get("config") is not None:
            kwargs["config"] = kwargs["config"].to_dict()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)} | {
            "trainable_neurons": list(self.trainable_neurons), "soma_kwargs": kwargs,
            "surrogate": None if self.surrogate is None else self.surrogate.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Layer":
        """Inverse of :meth:`to_dict`. A dict of an older release, without
        ``surrogate`` and ``exp_gradient``, keeps the soma config's own, as it did."""
        return cls(**{**_legacy(d), "trainable_neurons": tuple(d.get("trainable_neurons", ()))})

    def soma_arguments(self) -> dict[str, Any]:
        """What the soma's constructor receives besides units, dt and trainable:
        ``soma_kwargs``, the gradient settings that are set
        (:data:`TRAINING_FIELDS`) that its config has (``exp_gradient`` only
        where the model has an exponential term) and, with ``adaptive_fraction`` < 1, the
        per-neuron adaptation fields of :func:`plain_neurons`."""
        own = {f.name for f in dataclasses.fields(registry.soma_class(self.soma).config_class)}
        out = {**self.soma_kwargs, **{name: getattr(self, name) for name in TRAINING_FIELDS
                                      if getattr(self, name) is not None and name in own}}
        if self.adaptive_fraction < 1.0:
            out |= plain_neurons(registry.soma_class(self.soma), out, self.units,
                                 self.adaptive_fraction)
        return out


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """The architecture of a :class:`SpikingNetwork`: its constructor's
    arguments, checked, as a frozen value (see there for each field;
    ``soma_kwargs`` None is ``{}``). :meth:`build` (or
    ``SpikingNetwork(config=...)``) makes the network from it.

    ``hidden`` is an int (one layer) or a tuple whose entries are ints or
    :class:`Layer`\\ s; an int entry is a layer of that many somas with the
    network-wide ``soma``, ``recurrent``, ``synapse_tau``,
    ``trainable_neurons``, ``input_gain`` and ``soma_kwargs``.
    :attr:`layers` resolves them. :meth:`to_dict` is JSON when the soma
    configs' fields are scalars: it is what checkpoints store and
    :meth:`SpikingNetwork.from_config` rebuilds from.
    """

    in_features: int
    hidden: int | tuple[int | Layer, ...]
    n_classes: int
    soma: str = "AdaptiveExponentialSoma"
    dt: float = 1.0
    recurrent: bool = False
    output: str = "leaky"
    readout: str = "mean"
    readout_tau: float = 10.0
    trainable_neurons: bool | tuple[str, ...] = ()
    input_gain: float = 1.0
    synapse_tau: float | None = None
    soma_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    readout_window: tuple[int | None, int | None] | None = None
    remat: bool | int = False
    backend: str = "auto"
    surrogate: surrogates_lib.Surrogate | str | Mapping[str, Any] | None = TRAINING_SURROGATE
    exp_gradient: str | None = TRAINING_EXP_GRADIENT
    detach_reset: bool | None = TRAINING_DETACH_RESET
    detach_adaptation: bool | None = TRAINING_DETACH_ADAPTATION
    adaptive_fraction: float = 1.0

    def __post_init__(self) -> None:
        require(isinstance(self.remat, (bool, int, np.integer)) and (
            isinstance(self.remat, bool) or self.remat >= 1), "remat", self.remat,
            "False, True or a positive int", error=RuleError)
        backends.check_backend(self.backend)
        if self.soma_kwargs is None:
            object.__setattr__(self, "soma_kwargs", {})
        object.__setattr__(self, "remat", self.remat if isinstance(self.remat, bool)
                           else int(self.remat))
        for name in ("in_features", "n_classes"):
            _positive_int(name, getattr(self, name))
        if isinstance(self.hidden, (int, np.integer)):
            _positive_int("hidden", self.hidden)
            object.__setattr__(self, "hidden", int(self.hidden))
        else:
            entries = tuple(Layer.from_dict(h) if isinstance(h, Mapping) else h
                            for h in self.hidden)
            require(len(entries) > 0 and all(isinstance(h, Layer) or (
                isinstance(h, (int, np.integer)) and not isinstance(h, bool) and h >= 1)
                for h in entries), "hidden", self.hidden,
                "a positive int or a non-empty sequence of positive ints and Layers",
                error=RuleError)
            object.__setattr__(self, "hidden", tuple(
                h if isinstance(h, Layer) else int(h) for h in entries))
        require(self.output in ("leaky", "soma"), "output", self.output, "'leaky' or 'soma'",
                error=RuleError)
        require(self.readout in READOUTS, "readout", self.readout, f"one of {sorted(READOUTS)}",
                error=RuleError)
        require(READOUTS[self.readout][1] != "spikes" or self.output == "soma", "readout",
                self.readout, "spike counts and times need output = 'soma'", error=RuleError)
        require(np.isfinite(self.readout_tau) and self.readout_tau > 0, "readout_tau",
                self.readout_tau, "> 0 and finite", error=RuleError)
        window = self.readout_window
        if window is not None:
            window = tuple(window)
            require(len(window) == 2 and all(
                w is None or isinstance(w, (int, np.integer)) and not isinstance(w, bool)
                for w in window), "readout_window", self.readout_window,
                "None or (start, stop): steps as in a slice, ints or None", error=RuleError)
            object.__setattr__(self, "readout_window", window)
        template = self._layer(1)  # checks the network-wide fields
        object.__setattr__(self, "soma", template.soma)
        object.__setattr__(self, "surrogate", template.surrogate)
        object.__setattr__(self, "trainable_neurons", template.trainable_neurons)
        object.__setattr__(self, "soma_kwargs", template.soma_kwargs)
        object.__setattr__(self, "adaptive_fraction", template.adaptive_fraction)

    __hash__ = _value_hash

    def _layer(self, units: int) -> Layer:
        """A layer of ``units`` somas with the network-wide settings."""
        return Layer(units, self.soma, self.recurrent, self.synapse_tau, self.trainable_neurons,
                     self.input_gain, self.soma_kwargs, self.surrogate, self.exp_gradient,
                     self.detach_reset, self.detach_adaptation, self.adaptive_fraction)

    @property
    def layers(self) -> tuple[Layer, ...]:
        """The hidden layers, int entries resolved with the network-wide settings."""
        entries = (self.hidden,) if isinstance(self.hidden, int) else self.hidden
        return tuple(h if isinstance(h, Layer) else self._layer(h) for h in entries)

    def to_dict(self) -> dict[str, Any]:
        """Plain values: tuples as lists, Layers and soma configs as their ``to_dict()``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["trainable_neurons"] = list(self.trainable_neurons)
        kwargs = dict(self.soma_kwargs)
        if kwargs.get("config") is not None:
            kwargs["config"] = kwargs["config"].to_dict()
        out["soma_kwargs"] = kwargs
        if not isinstance(self.hidden, int):
            out["hidden"] = [h.to_dict() if isinstance(h, Layer) else h for h in self.hidden]
        if self.readout_window is not None:
            out["readout_window"] = list(self.readout_window)
        out["surrogate"] = None if self.surrogate is None else self.surrogate.to_dict()
        return out

    def build(self, rngs: nnx.Rngs | None = None) -> "SpikingNetwork":
        """A fresh :class:`SpikingNetwork` of this architecture (``rngs``
        default: seed 0): :meth:`SpikingNetwork.from_config`."""
        return SpikingNetwork.from_config(self, rngs)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "NetworkConfig":
        """Inverse of :meth:`to_dict`. A dict without the newer keys, from an
        older checkpoint, gives their defaults, except ``surrogate`` and
        ``exp_gradient``: their absence meant the soma config's own (None)."""
        return cls(**{**_legacy(d), "trainable_neurons": tuple(d.get("trainable_neurons", ()))})


class HiddenLayer(nnx.Module):
    """One hidden layer's step: z_t = Linear(x_t) (+ Linear_rec(s_{t−1})),
    I_t = β_s I_{t−1} + I_0 z_t (pA), s_t = soma(I_t).

    Its running state — the synaptic current I (with a synapse) and the
    previous spikes s (when recurrent) — is in ``SomaState`` Variables, as
    the soma's own, so :func:`~spark_somas.simulation.driver.drive` carries it.
    """

    def __init__(self, in_features: int, layer: Layer, *, dt: float, rngs: nnx.Rngs):
        cls = registry.soma_class(layer.soma)
        n = layer.units
        self.input = nnx.Linear(in_features, n, rngs=rngs)
        self.soma = cls(units=n, rngs=rngs, dt=dt, trainable=layer.trainable_neurons,
                        **layer.soma_arguments())
        self.recurrent = (nnx.Linear(n, n, use_bias=False, rngs=rngs,
                                     kernel_init=nnx.initializers.zeros_init())
                          if layer.recurrent else None)
        self.scale = float(layer.input_gain * input_scale(self.soma))
        self.decay = None if layer.synapse_tau is None else float(np.exp(-dt / layer.synapse_tau))
        # The synaptic current is the Linear's (float32 by default) whatever
        # the soma's dtype; the spikes, the soma's output, are in the soma's.
        self.current = (SomaState(jnp.zeros((n,), self.input.param_dtype))
                        if self.decay is not None else None)
        self.spikes = SomaState(jnp.zeros((n,), self.soma.dtype)) if layer.recurrent else None

    def reset(self, batch_shape: Sequence[int] | None = None) -> None:
        """The soma to rest, synaptic current and previous spikes to 0."""
        self.soma.reset(batch_shape)
        batch = () if batch_shape is None else tuple(batch_shape)
        for var in (self.current, self.spikes):
            if var is not None:
                var.set_value(jnp.zeros(batch + var[...].shape[-1:], var[...].dtype))

    def __call__(self, x_t: Array) -> SomaOutput:
        return self.integrate(self.input(x_t))

    def integrate(self, z: Array) -> SomaOutput:
        """The step after the input Linear: ``z`` = Linear(x_t), (B, N)."""
        if self.recurrent is not None:
            z = z + self.recurrent(self.spikes[...])
        current = self.scale * z
        if self.current is not None:
            current = self.decay * self.current[...] + current
            self.current[...] = current
        out = self.soma(current)
        if self.spikes is not None:
            self.spikes[...] = out.spikes
        return out


def _weight_bytes(config: "NetworkConfig") -> int:
    """The float32 weights and biases of ``config``'s Linear layers, in bytes."""
    total, width = 0, config.in_features
    for layer in config.layers:
        total += (width + 1 + (layer.units if layer.recurrent else 0)) * layer.units
        width = layer.units
    return 4 * (total + (width + 1) * config.n_classes)


def _network_config(config: "NetworkConfig | None", arguments: Mapping[str, Any]) -> "NetworkConfig":
    """``config``, or the :class:`NetworkConfig` of the constructor's
    ``arguments`` (its fields by name) when there is none; with a config, an
    argument that differs from its default would be ignored, so it is refused."""
    if config is None:
        return NetworkConfig(**arguments)
    require(isinstance(config, NetworkConfig), "config", config, "a NetworkConfig",
            error=RuleTypeError)
    defaults = _constructor_defaults()
    given = sorted(k for k, v in arguments.items()
                   if v is not defaults[k] and not _same(v, defaults[k]))
    require(not given, "arguments besides config", given, "none: they are fields of the "
            "config, and dataclasses.replace(config, ...) changes them", error=RuleError)
    return config


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # an array compared elementwise: not a default
        return False


@functools.cache
def _constructor_defaults() -> dict[str, Any]:
    signature = inspect.signature(SpikingNetwork.__init__)
    return {k: p.default for k, p in signature.parameters.items()
            if k not in ("self", "config", "rngs")}


class SpikingNetwork(nnx.Module):
    """Input → hidden soma layers → Linear → leaky integrator or readout soma.

    One line builds it: ``SpikingNetwork(700, [256, 256], 20, soma="adex",
    recurrent=True, synapse_tau=5.0, rngs=nnx.Rngs(0))`` is two recurrent
    AdEx layers with synapses; ``hidden=(Layer(256, "adex", recurrent=True),
    Layer(128, "expif"))`` mixes kinds.

    A soma layer's input current is I_t = I_0 · z_t (pA), z_t its Linear
    output, with I_0 = ``input_gain`` · I_rh, the layer's
    :func:`~spark_somas.models.somas.input_scale`, the rheobase
    I_rh = (V_T − E_L − Δ_T)/R of the exponential somas (546 pA for the default cell). Static inputs in
    [0, 1] train well with gain 1; brief inputs (spikes lasting one step)
    need more charge per unit weight — a larger gain and/or a synaptic
    filter. With ``synapse_tau`` τ_s set, the current is that of an
    exponential current-based synapse, I_t = β_s I_{t−1} + I_0 z_t with
    β_s = exp(−dt/τ_s) (Zenke & Vogels 2021 use τ_s = 5 ms).

    Args:
      in_features: F, input size.
      hidden: an int N (one hidden layer of N somas) or a sequence of ints
        and :class:`Layer`\\ s, one per layer, input side first; an int
        entry takes the network-wide ``soma``, ``recurrent``,
        ``synapse_tau``, ``trainable_neurons``, ``input_gain``, ``soma_kwargs``.
      n_classes: C, number of outputs.
      soma: the hidden layers' model, a name in ``ss.SOMAS`` or a soma class,
        with its default config (``soma_kwargs`` go to its constructor:
        config, field overrides).
      dt: time step (ms) of every layer, 1 ms by default where a lone soma's
        is 0.1 ms: a few dozen steps then span a few membrane time
        constants, which is what a classification needs, and forward Euler
        at dt/τ_m ≈ 0.1 is still stable. The encoder's ``dt`` (its Poisson
        rate per step) must be the same (``fit`` checks).
      recurrent: add Linear_rec(s_{t−1}) (no bias, zero-initialised: training
        starts from the feedforward network) to each hidden z_t.
      output: ``"leaky"`` — non-spiking leaky integrator
        U_t = β U_{t−1} + z_t with z_t = ``output``\\ (s_t), β = exp(−dt/τ_out):
        each hidden spike adds its output weight to U, which then decays
        with τ_out (the readout of Zenke & Vogels 2021); ``"soma"`` — a
        readout layer (``readout_layer``, a :class:`HiddenLayer` of C somas
        of the last hidden layer's kind, gain and synapse, not recurrent).
      readout: ``"max"`` (max over time of U or V), ``"mean"`` (its mean),
        ``"count"`` (spike count) or ``"first_spike"`` (−time of the first
        spike, ms, :func:`first_spike_time`); the last two need ``output="soma"``.
      readout_tau: τ_out (ms) of the leaky integrator.
      trainable_neurons: False, True (all :func:`trainable_neuron_params` of
        the soma kind, per neuron, in every soma layer) or a tuple of field names.
      input_gain: I_0 in units of the rheobase current.
      synapse_tau: τ_s (ms) of the synaptic filter; None: no filter.
      readout_window: ``(start, stop)``: the readout (and the loss) reads
        steps ``start:stop`` of the trace only, as a slice (negative: from
        the end; None: open), e.g. ``(-150, None)`` for a 150-step recall
        period; None reads every step.
      remat: how the time loop keeps BPTT memory (``False``: every step;
        ``True``: recompute segments of ⌈√T⌉ steps; k: segments of k steps),
        as in :func:`~spark_somas.simulation.driver.drive`.
      backend: ``"scan"``, ``"fused"`` (the whole network step in one Pallas
        kernel per block of samples, :func:`~spark_somas.simulation.kernels.run_module`)
        or ``"auto"`` (:func:`~spark_somas.simulation.backends.resolve_backend`).
      surrogate: every soma layer's surrogate, :data:`TRAINING_SURROGATE` by
        default (None: the soma config's own).
      exp_gradient: every soma layer's backward pass of the exponential term,
        :data:`TRAINING_EXP_GRADIENT` by default (None: the soma config's own).
      detach_reset: every soma layer's reset switch, :data:`TRAINING_DETACH_RESET`
        by default (None: the soma config's own).
      detach_adaptation: every soma layer's adaptation switch,
        :data:`TRAINING_DETACH_ADAPTATION` by default (None: the soma config's own).
        Cutting it leaves a network no gradient path across a delay longer
        than τ_m (docs: "Training over long sequences").
      adaptive_fraction: the share of each hidden layer's somas that adapt
        (the first ones); the others are plain (:func:`plain_neurons`).
      config: a :class:`NetworkConfig` to build instead of the arguments
        above, which then keep their defaults: ``SpikingNetwork(config=cfg,
        rngs=...)``, as :meth:`from_config` and :meth:`NetworkConfig.build`;
        the arguments themselves make one (``net.config``).
      rngs: Linear initialisation.
    """

    def __init__(
        self,
        in_features: int | None = None,
        hidden: int | Sequence[int | Layer] | None = None,
        n_classes: int | None = None,
        *,
        soma: str | type[Soma] = "adex",
        dt: float = 1.0,
        recurrent: bool = False,
        output: str = "leaky",
        readout: str = "mean",
        readout_tau: float = 10.0,
        trainable_neurons: bool | Sequence[str] = False,
        input_gain: float = 1.0,
        synapse_tau: float | None = None,
        soma_kwargs: Mapping[str, Any] | None = None,
        readout_window: tuple[int | None, int | None] | None = None,
        remat: bool | int = False,
        backend: str = "auto",
        surrogate: surrogates_lib.Surrogate | str | Mapping[str, Any] | None = TRAINING_SURROGATE,
        exp_gradient: str | None = TRAINING_EXP_GRADIENT,
        detach_reset: bool | None = TRAINING_DETACH_RESET,
        detach_adaptation: bool | None = TRAINING_DETACH_ADAPTATION,
        adaptive_fraction: float = 1.0,
        config: NetworkConfig | None = None,
        rngs: nnx.Rngs,
    ):
        arguments = {k: v for k, v in locals().items() if k not in ("self", "config", "rngs")}
        self.config = config = _network_config(config, arguments)
        self.dt = float(config.dt)
        self.readout_decay = float(np.exp(-config.dt / config.readout_tau))
        layers, width = [], config.in_features
        soma_out, n_classes = config.output == "soma", config.n_classes
        with allocating(f"SpikingNetwork({config.in_features}, "
                        f"{[layer.units for layer in config.layers]}, {n_classes})",
                        _weight_bytes(config)):  # the readout's weights included
            for layer in config.layers:
                layers.append(HiddenLayer(width, layer, dt=config.dt, rngs=rngs))
                width = layer.units
            readout = dataclasses.replace(config.layers[-1], units=n_classes, recurrent=False)
            self.readout_layer = nnx.data(HiddenLayer(width, readout, dt=config.dt, rngs=rngs)
                                          if soma_out else None)
            self.output = nnx.data(None if soma_out else nnx.Linear(width, n_classes, rngs=rngs))
        self.layers = nnx.List(layers)
        self.readout_potential = nnx.data(
            None if soma_out else SomaState(jnp.zeros((n_classes,), self.output.param_dtype)))

    @classmethod
    def from_config(cls, config: NetworkConfig, rngs: nnx.Rngs | None = None) -> "SpikingNetwork":
        """A fresh network of ``config``'s architecture (``rngs`` default:
        seed 0): ``SpikingNetwork(config=config, rngs=rngs)``, the config
        kept as it is (``net.config is config``)."""
        return cls(config=config, rngs=rngs or nnx.Rngs(0))

    @property
    def spec(self) -> dict[str, Any]:
        """``self.config.to_dict()``: how checkpoints describe this architecture."""
        return self.config.to_dict()

    @property
    def hidden(self) -> Soma:
        """The first hidden layer's soma."""
        return self.layers[0].soma

    @property
    def readout_soma(self) -> Soma | None:
        """The readout soma (``output="soma"``), else None."""
        return None if self.readout_layer is None else self.readout_layer.soma

    def somas(self) -> list[Soma]:
        """The soma layers (hidden, input side first, then the readout soma if any)."""
        return [layer.soma for layer in self.layers] + (
            [] if self.readout_layer is None else [self.readout_layer.soma])

    def reset(self, batch_shape: Sequence[int] | None = None) -> None:
        """Every soma back to rest (see ``Soma.reset``), synaptic
        currents, previous spikes and the leaky readout to 0, with shape
        ``(N,)`` or ``(*batch_shape, N)``."""
        for layer in self.layers:
            layer.reset(batch_shape)
        if self.readout_layer is not None:
            self.readout_layer.reset(batch_shape)
        else:
            batch = () if batch_shape is None else tuple(batch_shape)
            var = self.readout_potential
            var.set_value(jnp.zeros(batch + var[...].shape[-1:], var[...].dtype))

    def step(self, x_t: Array) -> tuple[tuple[Array, ...], Array, Array | None]:
        """One time step of the whole network on input ``x_t`` (B, F).

        Each hidden layer in turn (:class:`HiddenLayer`), then either the
        leaky readout U_t = β U_{t−1} + Linear_out(s_t) or the readout soma
        driven as a hidden layer. Returns (every layer's s_t, U_t or the
        readout's V_t, the readout's spikes or None); the running state is
        in SomaState Variables, so :func:`~spark_somas.simulation.driver.drive`
        runs it.
        """
        return self.step_projected(self.layers[0].input(x_t))

    def step_projected(self, z_t: Array) -> tuple[tuple[Array, ...], Array, Array | None]:
        """:meth:`step` given the first layer's input projection
        z_t = ``layers[0].input``\\ (x_t), (B, N_1). It depends on the input
        alone, so :meth:`__call__` computes it for every step at once, one
        matrix product outside the time loop (none to recompute on the
        backward pass)."""
        spikes = []
        for index, layer in enumerate(self.layers):
            out = layer.integrate(z_t) if index == 0 else layer(spikes[-1])
            spikes.append(out.spikes)
        if self.readout_layer is None:
            potential = (self.readout_decay * self.readout_potential[...]
                         + self.output(spikes[-1]))
            self.readout_potential[...] = potential
            return tuple(spikes), potential, None
        out = self.readout_layer(spikes[-1])
        return tuple(spikes), out.potential, out.spikes

    def __call__(self, inputs: Array, *, time_major: bool | None = None,
                 remat: bool | int | None = None,
                 unroll: int = 1, backend: str | None = None) -> NetworkOutput:
        """Runs ``inputs`` from rest through :func:`~spark_somas.simulation.driver.drive`
        (``remat``, ``unroll``, ``backend`` as there; None: the config's); the
        network keeps its final state.

        Every call starts from rest (``reset`` to the batch of ``inputs``),
        unlike ``simulate(soma, ...)``, which continues a soma's state.
        ``inputs`` are ``(T, *batch, F)`` with ``time_major=True``, or
        ``(*batch, T, F)`` with ``time_major=False`` (as ``flax.nnx.RNN``;
        see :mod:`spark_somas.simulation.layout`); None (default) reads time
        first and warns (``LayoutWarning``) when T would then be smaller
        than the batch, the mark of a batch-first array; the traces of the result
        (``layer_spikes``, ``output_potential``, ``output_spikes``) have the
        same layout, the logits and counts are ``(*batch, C)``. Each step lasts
        the network's ``dt`` (1 ms by default).
        """
        inputs = jnp.asarray(inputs)
        time_major = layout.resolve_time_major("inputs", inputs.shape, (self.config.in_features,),
                                               time_major, features="in_features")
        axis = layout.time_axis("inputs", inputs.shape, (self.config.in_features,), time_major,
                                features="in_features")
        inputs = layout.to_time_major(inputs, axis)
        window = slice(*(self.config.readout_window or (None, None)))
        steps = inputs.shape[0]
        require(len(range(steps)[window]) > 0, "readout_window", self.config.readout_window,
                f"a slice that keeps at least one of the run's T = {steps} steps (start and stop "
                "count from the end when negative)", error=RuleError)
        # Resolved once, here: the loop below runs the name it is given.
        backend = backends.resolve_backend(self.config.backend if backend is None else backend)
        require_shape(inputs.ndim >= 3 or backend != "fused", "inputs", inputs.shape,
                      "the fused backend partitions a batch, (T, B, F); add a batch axis or use "
                      "backend = 'scan'", error=FusedBackendError, plural=True)
        self.reset(inputs.shape[1:-1])
        spikes, potential, out_spikes = drive(
            self, self.layers[0].input(inputs), SpikingNetwork.step_projected,
            remat=self.config.remat if remat is None else remat, unroll=unroll, backend=backend)
        fn, trace = READOUTS[self.config.readout]
        logits = fn((out_spikes if trace == "spikes" else potential)[window], self.dt)
        counts = None if out_spikes is None else spike_count(out_spikes[window])
        spikes, potential, out_spikes = layout.from_time_major(
            (spikes, potential, out_spikes), 1, time_major)
        return NetworkOutput(logits, spikes, potential, out_spikes, counts)


def network_from_spec(spec: Mapping[str, Any], rngs: nnx.Rngs | None = None) -> SpikingNetwork:
    """A fresh :class:`SpikingNetwork` of the architecture ``net.spec`` describes."""
    return SpikingNetwork.from_config(NetworkConfig.from_dict(spec), rngs)


registry.register_model("SpikingNetwork", SpikingNetwork, spec=lambda net: net.spec,
                        build=network_from_spec)
