"""The ready spiking network: Linear → soma layer → Linear → leaky integrator or readout soma.

::

    x_t ─ Linear ─·I_0─▶ soma layer (expif | refractory | adex | simplified)
                            │ spikes s_t  (optionally + Linear_rec(s_{t-1}))
                            ▼
                         Linear ─▶ leaky integrator U_t  (or a readout soma)
                            ▼
                 readout over time (max U, mean U or spike count) = logits

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

**Trainable neuron parameters** are per neuron ``nnx.Param`` inside the soma
(physical values: ms, mV, pA, nS), kept inside the config rules by the
optimizer (:mod:`spark_somas.constraints`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spark_somas import registry
from spark_somas.configs import require
from spark_somas.simulation import drive
from spark_somas.somas import ExponentialSoma, SomaState

__all__ = [
    "NEURON_PARAMS",
    "trainable_neuron_params",
    "rheobase_current",
    "SpikingNetwork",
    "NetworkOutput",
    "network_from_spec",
    "NetworkConfig",
    "READOUTS",
    "spike_count",
    "max_potential",
    "mean_potential",
]

Array = jax.Array


#: Neuron parameters trained when ``trainable_neurons=True`` (those the soma's config has).
NEURON_PARAMS = ("potential_tau", "threshold", "adaptation_tau", "adaptation_delta",
                 "adaptation_subthreshold", "threshold_tau", "threshold_delta")


def trainable_neuron_params(soma_class: type[ExponentialSoma]) -> tuple[str, ...]:
    """The :data:`NEURON_PARAMS` that ``soma_class``'s config defines."""
    fields = {f.name for f in soma_class.config_class.quantity_fields()}
    return tuple(n for n in NEURON_PARAMS if n in fields)


def rheobase_current(soma: ExponentialSoma) -> float:
    """I_rh = (V_T − E_L − Δ_T)/R in pA (mean over neurons): the smallest
    constant current that makes an ExpIF neuron fire (Fourcaud-Trocmé et al. 2003)."""
    p = {k: float(np.mean(v)) for k, v in soma.parameters().items()}
    return (p["rheobase_threshold"] - p["potential_rest"] - p["spike_slope"]) / p["resistance"]


def spike_count(spikes: Array) -> Array:
    """Spikes summed over time: (T, B, C) -> (B, C)."""
    return jnp.sum(spikes, axis=0)


def max_potential(potential: Array) -> Array:
    """Largest potential over time: (T, B, C) -> (B, C)."""
    return jnp.max(potential, axis=0)


def mean_potential(potential: Array) -> Array:
    """Potential averaged over time: (T, B, C) -> (B, C)."""
    return jnp.mean(potential, axis=0)


#: Readout name -> (function, which trace it reads: "spikes" or "potential").
READOUTS: dict[str, tuple[Callable[[Array], Array], str]] = {
    "max": (max_potential, "potential"),
    "mean": (mean_potential, "potential"),
    "count": (spike_count, "spikes"),
}


@flax.struct.dataclass
class NetworkOutput:
    """A forward pass: ``logits`` (B, C) from the readout; ``hidden_spikes``
    (T, B, H); ``output_potential`` (T, B, C), the leaky readout U
    (dimensionless) or the readout soma's V (mV); ``output_spikes`` (T, B, C)
    for a readout soma, else None."""

    logits: Array
    hidden_spikes: Array
    output_potential: Array
    output_spikes: Array | None = None


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """The architecture of a :class:`SpikingNetwork`: its constructor's
    arguments, checked, as a frozen value (see there for each field).

    ``soma`` is the registered class name; ``trainable_neurons`` the tuple
    of trained field names (True and False resolved); ``soma_kwargs`` what
    the soma constructors receive besides dt and trainable (a soma config
    object or its dict, field overrides). :meth:`to_dict` is JSON when the
    soma config's fields are scalars: it is what checkpoints store and
    :meth:`SpikingNetwork.from_config` rebuilds from.
    """

    in_features: int
    hidden: int
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

    def __post_init__(self) -> None:
        cls = registry.soma_class(self.soma)
        for name in ("in_features", "hidden", "n_classes"):
            value = getattr(self, name)
            require(not isinstance(value, bool) and isinstance(value, (int, np.integer))
                    and value >= 1, name, value, "a positive int", error=ValueError)
        require(self.output in ("leaky", "soma"), "output", self.output, "'leaky' or 'soma'",
                error=ValueError)
        require(self.readout in READOUTS, "readout", self.readout, f"one of {sorted(READOUTS)}",
                error=ValueError)
        require(self.readout != "count" or self.output == "soma", "readout", self.readout,
                "spike counts need output = 'soma'", error=ValueError)
        for name in ("readout_tau", "input_gain", "synapse_tau"):
            value = getattr(self, name)
            require(value is None and name == "synapse_tau" or np.isfinite(value) and value > 0,
                    name, value, "> 0 and finite", error=ValueError)
        trainable = self.trainable_neurons
        if trainable is True:
            trainable = trainable_neuron_params(cls)
        elif trainable is False:
            trainable = ()
        elif isinstance(trainable, str):
            trainable = (trainable,)
        object.__setattr__(self, "soma", cls.__name__)
        object.__setattr__(self, "trainable_neurons", tuple(trainable))
        kwargs = dict(self.soma_kwargs)
        if isinstance(kwargs.get("config"), Mapping):
            kwargs["config"] = cls.config_class.from_dict(kwargs["config"])
        object.__setattr__(self, "soma_kwargs", kwargs)

    def __hash__(self) -> int:
        # A module's config is static graph data: equal configs hash alike.
        return hash(json.dumps(self.to_dict(), sort_keys=True, default=repr))

    def to_dict(self) -> dict[str, Any]:
        """Plain values: tuples as lists, a soma config as its ``to_dict()``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["trainable_neurons"] = list(self.trainable_neurons)
        kwargs = dict(self.soma_kwargs)
        if kwargs.get("config") is not None:
            kwargs["config"] = kwargs["config"].to_dict()
        out["soma_kwargs"] = kwargs
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "NetworkConfig":
        """Inverse of :meth:`to_dict`."""
        return cls(**{**d, "trainable_neurons": tuple(d.get("trainable_neurons", ()))})


class SpikingNetwork(nnx.Module):
    """Input Linear → soma layer → Linear → leaky integrator or readout soma.

    A soma layer's input current is I_t = I_0 · z_t (pA), z_t the Linear
    output, with I_0 = ``input_gain`` · I_rh, the layer's
    :func:`rheobase_current` (546 pA for the default cell). Static inputs in
    [0, 1] train well with gain 1; brief inputs (spikes lasting one step)
    need more charge per unit weight — a larger gain and/or a synaptic
    filter. With ``synapse_tau`` τ_s set, the current is that of an
    exponential current-based synapse, I_t = β_s I_{t−1} + I_0 z_t with
    β_s = exp(−dt/τ_s) (Zenke & Vogels 2021 use τ_s = 5 ms).

    Args:
      in_features: F, input size.
      hidden: H, number of hidden somas.
      n_classes: C, number of outputs.
      soma: the hidden layer's model, a name in ``ss.SOMAS`` or a soma class,
        with its default config (``soma_kwargs`` go to its constructor:
        config, field overrides).
      dt: time step (ms) of every layer.
      recurrent: add Linear_rec(s_{t−1}) (no bias, zero-initialised: training
        starts from the feedforward network) to the hidden z_t.
      output: ``"leaky"`` — non-spiking leaky integrator
        U_t = β U_{t−1} + z_t with β = exp(−dt/τ_out): each hidden spike
        adds its output weight to U, which then decays with τ_out (the
        readout of Zenke & Vogels 2021); ``"soma"`` — a readout soma of the
        same kind (same gain and synapse).
      readout: ``"max"`` (max over time of U or V), ``"mean"`` (its mean) or
        ``"count"`` (spike count; needs ``output="soma"``).
      readout_tau: τ_out (ms) of the leaky integrator.
      trainable_neurons: False, True (all :func:`trainable_neuron_params` of
        the soma kind, per neuron, in every soma layer) or a tuple of field names.
      input_gain: I_0 in units of the rheobase current.
      synapse_tau: τ_s (ms) of the synaptic filter; None: no filter.
      rngs: Linear initialisation.
    """

    def __init__(
        self,
        in_features: int,
        hidden: int,
        n_classes: int,
        *,
        soma: str | type[ExponentialSoma] = "adex",
        dt: float = 1.0,
        recurrent: bool = False,
        output: str = "leaky",
        readout: str = "mean",
        readout_tau: float = 10.0,
        trainable_neurons: bool | Sequence[str] = False,
        input_gain: float = 1.0,
        synapse_tau: float | None = None,
        soma_kwargs: Mapping[str, Any] | None = None,
        rngs: nnx.Rngs,
    ):
        self.config = config = NetworkConfig(
            in_features, hidden, n_classes, soma=registry.soma_class(soma).__name__, dt=dt,
            recurrent=recurrent, output=output, readout=readout, readout_tau=readout_tau,
            trainable_neurons=trainable_neurons, input_gain=input_gain, synapse_tau=synapse_tau,
            soma_kwargs=soma_kwargs or {})
        cls = registry.soma_class(config.soma)
        kwargs = dict(config.soma_kwargs, dt=dt, trainable=config.trainable_neurons)
        self.dt = float(dt)
        self.readout = readout
        self.readout_decay = float(np.exp(-dt / readout_tau))
        self.synapse_decay = 0.0 if synapse_tau is None else float(np.exp(-dt / synapse_tau))
        self.input = nnx.Linear(in_features, hidden, rngs=rngs)
        self.hidden = cls(units=hidden, rngs=rngs, **kwargs)
        self.recurrent = (nnx.Linear(hidden, hidden, use_bias=False, rngs=rngs,
                                    kernel_init=nnx.initializers.zeros_init())
                          if recurrent else None)
        self.output = nnx.Linear(hidden, n_classes, rngs=rngs)
        self.hidden_current = SomaState(jnp.zeros((hidden,), self.hidden.dtype))
        self.hidden_spikes = SomaState(jnp.zeros((hidden,), self.hidden.dtype))
        self.output_current = SomaState(jnp.zeros((n_classes,), self.hidden.dtype))
        self.readout_potential = SomaState(jnp.zeros((n_classes,), self.hidden.dtype))
        self.readout_soma = cls(units=n_classes, rngs=rngs, **kwargs) if output == "soma" else None
        self.hidden_scale = float(input_gain * rheobase_current(self.hidden))
        self.output_scale = (float(input_gain * rheobase_current(self.readout_soma))
                             if self.readout_soma is not None else 1.0)

    @classmethod
    def from_config(cls, config: NetworkConfig, rngs: nnx.Rngs | None = None) -> "SpikingNetwork":
        """A fresh network of ``config``'s architecture (``rngs`` default: seed 0)."""
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        return cls(**fields, rngs=rngs or nnx.Rngs(0))

    @property
    def spec(self) -> dict[str, Any]:
        """``self.config.to_dict()``: how checkpoints describe this architecture."""
        return self.config.to_dict()

    def somas(self) -> list[ExponentialSoma]:
        """The soma layers (hidden, then the readout soma if any)."""
        return [s for s in (self.hidden, self.readout_soma) if s is not None]

    def reset(self, batch_shape: Sequence[int] | None = None) -> None:
        """Every soma back to rest (see ``ExponentialSoma.reset``), synaptic
        currents, previous spikes and the leaky readout to 0, with shape
        ``(N,)`` or ``(*batch_shape, N)``."""
        batch = () if batch_shape is None else tuple(batch_shape)
        for soma in self.somas():
            soma.reset(batch_shape)
        for name in ("hidden_current", "hidden_spikes", "output_current", "readout_potential"):
            var = getattr(self, name)
            var.set_value(jnp.zeros(batch + var[...].shape[-1:], var[...].dtype))

    def step(self, x_t: Array) -> tuple[Array, Array, Array | None]:
        """One time step of the whole network on input ``x_t`` (B, F).

        z = Linear(x_t) (+ Linear_rec(s_{t−1})); I_t = β_s I_{t−1} + I_0 z;
        s_t = hidden(I_t); then either U_t = β U_{t−1} + Linear_out(s_t) or
        the readout soma driven as the hidden one. Returns (s_t, U_t or the
        readout's V_t, the readout's spikes or None); the running state is
        in SomaState Variables, so :func:`~spark_somas.simulation.drive`
        runs it.
        """
        z = self.input(x_t)
        if self.recurrent is not None:
            z = z + self.recurrent(self.hidden_spikes[...])
        current = self.synapse_decay * self.hidden_current[...] + self.hidden_scale * z
        self.hidden_current[...] = current
        spikes = self.hidden(current).spikes
        self.hidden_spikes[...] = spikes
        drive_out = self.output(spikes)
        if self.readout_soma is None:
            potential = self.readout_decay * self.readout_potential[...] + drive_out
            self.readout_potential[...] = potential
            return spikes, potential, None
        current = self.synapse_decay * self.output_current[...] + self.output_scale * drive_out
        self.output_current[...] = current
        out = self.readout_soma(current)
        return spikes, out.potential, out.spikes

    def __call__(self, inputs: Array, *, remat: bool | int = False, unroll: int = 1) -> NetworkOutput:
        """Runs ``inputs`` (T, B, F) from rest through :func:`~spark_somas.simulation.drive`
        (``remat``, ``unroll`` as there); the network keeps its final state."""
        self.reset(inputs.shape[1:-1])
        spikes, potential, out_spikes = drive(self, inputs, SpikingNetwork.step, remat=remat,
                                              unroll=unroll)
        fn, trace = READOUTS[self.readout]
        logits = fn(out_spikes if trace == "spikes" else potential)
        return NetworkOutput(logits, spikes, potential, out_spikes)


def network_from_spec(spec: Mapping[str, Any], rngs: nnx.Rngs | None = None) -> SpikingNetwork:
    """A fresh :class:`SpikingNetwork` of the architecture ``net.spec`` describes."""
    return SpikingNetwork.from_config(NetworkConfig.from_dict(spec), rngs)


registry.register_model("SpikingNetwork", SpikingNetwork, spec=lambda net: net.spec,
                        build=network_from_spec)
