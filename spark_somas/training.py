"""Training spiking networks end to end with Optax: encoders, a ready
network, readouts, losses, jit-compiled steps and a ``fit`` loop.

Gradients flow back through time (BPTT) through the somas' surrogate spike
function (Neftci, Mostafa & Zenke 2019; Zenke & Vogels 2021).

**Encoders** turn a static sample x ∈ [0, 1]^F into T time steps
(time-major, (T, B, F)): Poisson/Bernoulli rate code, latency
(time-to-first-spike) code, or the value itself as a constant input
("direct current"). Spike data (Randman) passes through unchanged.

**Network** (:class:`SpikingNetwork`)::

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
(physical values: ms, mV, pA, nS). They are kept inside the config rules by
**projection**: :func:`constrain_neurons` runs inside the compiled train
step right after every optimizer update, so no parameter the optimizer
produces is ever seen outside the step in violation of a rule, whatever the
learning rate. Each trained value is clipped to the feasible interval its
rules define — threshold > max(V_T, V_r) (strict: the next representable
value above), b, a finite, τ_θ > 0, Δθ ≥ 0 — and time constants
(τ_m, τ_w, τ_θ) are held ≥ dt so the Euler leak factor 1 − dt/τ stays
non-negative; a non-finite result keeps the previous value.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import flax.struct
import numpy as np
import optax
from flax import nnx

import spark_somas as ss
from spark_somas import checkpointing, sharding
from spark_somas.configs import LARGEST
from spark_somas.datasets import DataError, Dataset
from spark_somas.somas import ExponentialSoma, iter_somas

__all__ = [
    "Encoder",
    "encode_current",
    "encode_poisson",
    "encode_latency",
    "NEURON_PARAMS",
    "trainable_neuron_params",
    "rheobase_current",
    "SpikingNetwork",
    "NetworkOutput",
    "leaky_integrate",
    "network_from_spec",
    "RECIPES",
    "record",
    "READOUTS",
    "spike_count",
    "max_potential",
    "mean_potential",
    "cross_entropy",
    "firing_rate",
    "firing_rate_loss",
    "Objective",
    "constrain_neurons",
    "trained_neuron_values",
    "make_optimizer",
    "train_step",
    "eval_step",
    "evaluate",
    "epoch_order",
    "batch_key",
    "NonFiniteLossError",
    "fit",
    "plot_training",
]

Array = jax.Array


def encode_current(x: Array, steps: int) -> Array:
    """Direct current: the sample itself at every step, (B, F) -> (T, B, F)."""
    x = jnp.asarray(x)
    return jnp.broadcast_to(x, (steps,) + x.shape)


def encode_poisson(x: Array, steps: int, key: Array, *, rate_hz: float = 500.0,
                   dt: float = 1.0) -> Array:
    """Bernoulli (discrete-time Poisson) rate code.

    Feature value x ∈ [0, 1] fires with probability p = x · rate_hz · dt/1000
    in each step (dt in ms), independently; (B, F) -> (T, B, F) of 0/1.
    """
    p = jnp.clip(jnp.asarray(x), 0.0, 1.0) * (rate_hz * dt / 1000.0)
    return jax.random.bernoulli(key, p, (steps,) + p.shape).astype(jnp.float32)


def encode_latency(x: Array, steps: int, *, threshold: float = 0.2) -> Array:
    """Time-to-first-spike code: one spike per feature, earlier for larger x.

    x = 1 fires at step 0, x = ``threshold`` at step T−1, linearly in between
    (step round((1 − x)/(1 − threshold) · (T − 1))); x < threshold never
    fires. (B, F) -> (T, B, F) of 0/1.
    """
    x = jnp.asarray(x)
    t = jnp.round((1.0 - x) / (1.0 - threshold) * (steps - 1))
    t = jnp.where(x >= threshold, t, steps)  # step T: never
    return (jnp.arange(steps).reshape((steps,) + (1,) * x.ndim) == t).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Encoder:
    """How samples become the network's time-major input; hashable (static under jit).

    Attributes:
      kind: ``"current"`` (:func:`encode_current`), ``"poisson"``
        (:func:`encode_poisson`), ``"latency"`` (:func:`encode_latency`) or
        ``"spikes"`` (samples already (B, T, F) spike trains: transposed).
      steps: T, number of time steps.
      dt: step (ms), used by the Poisson rate.
      rate_hz: Poisson rate of a feature equal to 1 (Hz).
      threshold: latency code's cut-off.
      noise: std of Gaussian noise added to the direct current at every step
        (feature units), in training only: a data-augmenting regularizer.
    """

    kind: str = "current"
    steps: int = 25
    dt: float = 1.0
    rate_hz: float = 500.0
    threshold: float = 0.2
    noise: float = 0.0

    KINDS = ("current", "poisson", "latency", "spikes")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"Encoder.kind = {self.kind!r} violates the rule: one of {self.KINDS}")
        if not (isinstance(self.steps, int) and self.steps > 0):
            raise ValueError(f"Encoder.steps = {self.steps!r} violates the rule: a positive int")
        if not self.dt > 0:
            raise ValueError(f"Encoder.dt = {self.dt!r} ms violates the rule: dt > 0")
        if not 0.0 <= self.rate_hz * self.dt / 1000.0 <= 1.0:
            raise ValueError(
                f"Encoder.rate_hz = {self.rate_hz!r} Hz violates the rule: "
                f"0 <= rate_hz·dt/1000 <= 1 (a probability per step of {self.dt} ms)"
            )
        if not self.noise >= 0:
            raise ValueError(f"Encoder.noise = {self.noise!r} violates the rule: noise >= 0")
        if self.noise and self.kind != "current":
            raise ValueError(f"Encoder.noise = {self.noise!r} violates the rule: only for kind='current'")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"Encoder.threshold = {self.threshold!r} violates the rule: 0 <= threshold < 1")

    def __call__(self, x: Array, key: Array | None = None, *, train: bool = False) -> Array:
        """Encodes a batch; ``key`` drives Poisson spikes and, when ``train``, the noise."""
        if self.kind in ("poisson",) or (train and self.noise):
            if key is None:
                raise ValueError(f"Encoder(kind={self.kind!r}, noise={self.noise}) needs a key")
            key, noise_key = jax.random.split(key)
        if self.kind == "current":
            out = encode_current(x, self.steps)
            if train and self.noise:
                out = out + self.noise * jax.random.normal(noise_key, out.shape, out.dtype)
            return out
        if self.kind == "latency":
            return encode_latency(x, self.steps, threshold=self.threshold)
        if self.kind == "poisson":
            return encode_poisson(x, self.steps, key, rate_hz=self.rate_hz, dt=self.dt)
        x = jnp.asarray(x)
        if x.ndim != 3 or x.shape[1] != self.steps:
            raise ValueError(
                f"Encoder(kind='spikes', steps={self.steps}) needs samples of shape "
                f"(B, {self.steps}, F); got {x.shape}"
            )
        return jnp.swapaxes(x, 0, 1)


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


def _soma_class(soma: str | type[ExponentialSoma]) -> type[ExponentialSoma]:
    if isinstance(soma, str):
        by_class_name = {c.__name__: c for c in ss.SOMAS.values()}
        if soma not in ss.SOMAS and soma not in by_class_name:
            raise ValueError(f"soma = {soma!r} violates the rule: one of {sorted(ss.SOMAS)}")
        return ss.SOMAS.get(soma) or by_class_name[soma]
    if isinstance(soma, type) and issubclass(soma, ExponentialSoma):
        return soma
    raise ValueError(f"soma = {soma!r} violates the rule: a name in ss.SOMAS or a soma class")


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


def leaky_integrate(z: Array, decay: float, u0: Array | None = None) -> Array:
    """U_t = decay · U_{t−1} + z_t over the leading (time) axis, from U_{-1} = u0
    (default 0); returns every U_t. A scan: linear, so exactly differentiable."""

    def step(u, z_t):
        u = decay * u + z_t
        return u, u

    return jax.lax.scan(step, jnp.zeros_like(z[0]) if u0 is None else u0, z)[1]


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
        cls = _soma_class(soma)
        for name, value in (("in_features", in_features), ("hidden", hidden),
                            ("n_classes", n_classes)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} = {value!r} violates the rule: a positive int")
        if output not in ("leaky", "soma"):
            raise ValueError(f"output = {output!r} violates the rule: 'leaky' or 'soma'")
        if readout not in READOUTS:
            raise ValueError(f"readout = {readout!r} violates the rule: one of {sorted(READOUTS)}")
        if readout == "count" and output != "soma":
            raise ValueError("readout = 'count' violates the rule: spike counts need output = 'soma'")
        for name, value in (("readout_tau", readout_tau), ("input_gain", input_gain),
                            ("synapse_tau", 1.0 if synapse_tau is None else synapse_tau)):
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} = {value!r} violates the rule: > 0 and finite")
        if trainable_neurons is True:
            trainable = trainable_neuron_params(cls)
        elif trainable_neurons is False:
            trainable = ()
        elif isinstance(trainable_neurons, str):
            trainable = (trainable_neurons,)
        else:
            trainable = tuple(trainable_neurons)
        kwargs = dict(soma_kwargs or {}, dt=dt, trainable=trainable)
        self.spec = {  # how to rebuild this architecture (checkpoint metadata)
            "in_features": in_features, "hidden": hidden, "n_classes": n_classes,
            "soma": cls.__name__, "dt": dt, "recurrent": recurrent, "output": output,
            "readout": readout, "readout_tau": readout_tau, "trainable_neurons": list(trainable),
            "input_gain": input_gain, "synapse_tau": synapse_tau,
            "soma_kwargs": _jsonable_kwargs(soma_kwargs or {}),
        }
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
        self.readout_soma = cls(units=n_classes, rngs=rngs, **kwargs) if output == "soma" else None
        self.hidden_scale = float(input_gain * rheobase_current(self.hidden))
        self.output_scale = (float(input_gain * rheobase_current(self.readout_soma))
                             if self.readout_soma is not None else 1.0)

    def somas(self) -> list[ExponentialSoma]:
        """The soma layers (hidden, then the readout soma if any)."""
        return [s for s in (self.hidden, self.readout_soma) if s is not None]

    def reset(self, batch_shape: Sequence[int] | None = None) -> None:
        """Every soma back to rest (see ``ExponentialSoma.reset``)."""
        for soma in self.somas():
            soma.reset(batch_shape)

    def _synaptic(self, z: Array, scale: float) -> Array:
        """Current (pA) of Linear outputs ``z`` (T, B, N) through the synapse."""
        current = scale * z
        return leaky_integrate(current, self.synapse_decay) if self.synapse_decay else current

    def _hidden_recurrent(self, z: Array) -> Array:
        """The hidden time loop with recurrence: a scan that, unlike
        ``ss.simulate``, feeds the previous step's spikes back (through the
        synapse when there is one)."""
        graphdef, state, rest = nnx.split(self.hidden, ss.SomaState, ...)
        w_rec = self.recurrent.kernel[...]

        def step(carry, z_t):
            state, s_prev, i_prev = carry
            soma = nnx.merge(graphdef, state, rest)
            current = self.synapse_decay * i_prev + self.hidden_scale * (z_t + s_prev @ w_rec)
            out = soma(current)
            return (nnx.state(soma, ss.SomaState), out.spikes, current), out.spikes

        zero = jnp.zeros(z.shape[1:], z.dtype)
        (state, _, _), spikes = jax.lax.scan(step, (state, zero, zero), z)
        nnx.update(self.hidden, state)
        return spikes

    def __call__(self, inputs: Array) -> NetworkOutput:
        """Runs ``inputs`` (T, B, F) from rest; the somas keep their final state."""
        self.reset(inputs.shape[1:-1])
        z = self.input(inputs)
        if self.recurrent is None:
            currents = self._synaptic(z, self.hidden_scale)
            spikes = ss.simulate(self.hidden, currents, record=("spikes",)).spikes
        else:
            spikes = self._hidden_recurrent(z)
        drive = self.output(spikes)
        out_spikes = None
        if self.readout_soma is None:
            potential = leaky_integrate(drive, self.readout_decay)
        else:
            rec = ss.simulate(self.readout_soma, self._synaptic(drive, self.output_scale))
            out_spikes, potential = rec.spikes, rec.potential
        fn, trace = READOUTS[self.readout]
        logits = fn(out_spikes if trace == "spikes" else potential)
        return NetworkOutput(logits, spikes, potential, out_spikes)


def _jsonable_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Soma kwargs as JSON: a config becomes its ``to_dict()`` (scalar fields only)."""
    out = dict(kwargs)
    if out.get("config") is not None:
        out["config"] = out["config"].to_dict()
    return out


def network_from_spec(spec: Mapping[str, Any], rngs: nnx.Rngs | None = None) -> SpikingNetwork:
    """A fresh :class:`SpikingNetwork` of the architecture ``net.spec`` describes."""
    spec = dict(spec)
    kwargs = dict(spec.pop("soma_kwargs"))
    cls = _soma_class(spec["soma"])
    if kwargs.get("config") is not None:
        kwargs["config"] = cls.config_class.from_dict(kwargs["config"])
    return SpikingNetwork(**spec, soma_kwargs=kwargs, rngs=rngs or nnx.Rngs(0))


checkpointing.register_model("SpikingNetwork", SpikingNetwork, spec=lambda net: net.spec,
                             build=network_from_spec)


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy of integer ``labels`` on readout ``logits``."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def firing_rate(spikes: Array, dt: float, axis: int | Sequence[int] | None = None) -> Array:
    """Mean firing rate in Hz of 0/1 ``spikes`` with steps of ``dt`` ms."""
    return jnp.mean(spikes, axis=axis) * (1000.0 / dt)


def firing_rate_loss(spikes: Array, dt: float, target_hz: float, *,
                     per_neuron: bool = True) -> Array:
    """Rate regularizer mean_n ((r_n − r*)/r*)², dimensionless.

    r_n is neuron n's rate (Hz) over time and batch of ``spikes`` (T, B, N)
    — per neuron, so silent and saturated neurons are both pulled back (the
    homeostatic terms of Zenke & Vogels 2021) — or, with ``per_neuron=False``,
    the population mean; r* = ``target_hz``.
    """
    axes = tuple(range(spikes.ndim - 1)) if per_neuron else None
    r = firing_rate(spikes, dt, axes)
    return jnp.mean(jnp.square(r / target_hz - 1.0))


@dataclasses.dataclass(frozen=True)
class Objective:
    """Loss = cross-entropy(readout) + ``rate_strength`` · firing_rate_loss(hidden
    spikes, target ``rate_target_hz``). Hashable (static under jit)."""

    rate_target_hz: float = 20.0
    rate_strength: float = 0.0

    def __post_init__(self) -> None:
        if not self.rate_target_hz > 0:
            raise ValueError(f"Objective.rate_target_hz = {self.rate_target_hz!r} violates the rule: > 0")
        if not self.rate_strength >= 0:
            raise ValueError(f"Objective.rate_strength = {self.rate_strength!r} violates the rule: >= 0")

    def __call__(self, model: SpikingNetwork, out: NetworkOutput, labels: Array) -> Array:
        loss = cross_entropy(out.logits, labels)
        if self.rate_strength:
            loss = loss + self.rate_strength * firing_rate_loss(
                out.hidden_spikes, model.dt, self.rate_target_hz)
        return loss


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


def make_optimizer(model: nnx.Module, learning_rate: float = 2e-3,
                   tx: optax.GradientTransformation | None = None) -> nnx.Optimizer:
    """``nnx.Optimizer(model, tx, wrt=nnx.Param)``; default tx: global-norm
    clipping at 1 then Adam(``learning_rate``). Any optax transformation works."""
    if tx is None:
        tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(learning_rate))
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def _metrics(model, out: NetworkOutput, labels: Array, loss: Array) -> dict[str, Array]:
    return {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(out.logits, -1) == labels),
        "rate_hz": firing_rate(out.hidden_spikes, model.dt),
    }


@nnx.jit(static_argnames=("encoder", "objective"))
def train_step(model: SpikingNetwork, optimizer: nnx.Optimizer, x: Array, labels: Array,
               key: Array, *, encoder: Encoder, objective: Objective) -> dict[str, Array]:
    """One compiled update on a batch: encode, forward, BPTT, optimizer
    update, neuron constraints, somas back to rest. Returns loss, accuracy
    and the hidden layer's mean rate (Hz) on the batch (before the update)."""
    inputs = encoder(x, key, train=True)
    previous = trained_neuron_values(model)

    def loss_fn(model):
        out = model(inputs)
        return objective(model, out, labels), out

    (loss, out), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    constrain_neurons(model, previous)
    model.reset()
    return _metrics(model, out, labels, loss)


@nnx.jit(static_argnames=("encoder", "objective"))
def eval_step(model: SpikingNetwork, x: Array, labels: Array, mask: Array, key: Array, *,
              encoder: Encoder, objective: Objective) -> dict[str, Array]:
    """Sums over the samples where ``mask`` is 1: loss, correct predictions,
    spikes per neuron-step (padding rows are masked out). Somas end at rest."""
    out = model(encoder(x, key))
    per_sample = optax.softmax_cross_entropy_with_integer_labels(out.logits, labels)
    model.reset()
    return {
        "loss": jnp.sum(per_sample * mask),
        "correct": jnp.sum((jnp.argmax(out.logits, -1) == labels) * mask),
        "rate": jnp.sum(jnp.mean(out.hidden_spikes, axis=(0, 2)) * mask),
    }


@nnx.jit(static_argnames=("encoder",))
def record(model: SpikingNetwork, x: Array, key: Array, *, encoder: Encoder) -> NetworkOutput:
    """The forward pass on a batch (logits and every trace); somas end at rest."""
    out = model(encoder(x, key))
    model.reset()
    return out


def evaluate(model: SpikingNetwork, x: np.ndarray, labels: np.ndarray, *, encoder: Encoder,
             objective: Objective = Objective(), key: Array | None = None,
             batch_size: int = 512, mesh: jax.sharding.Mesh | None = None) -> dict[str, float]:
    """Cross-entropy, accuracy and hidden mean rate (Hz) over a whole split,
    in fixed-size padded batches (one compilation). With a ``mesh``, each
    batch (padded to a multiple of its ``"data"`` axis) is split over it."""
    n = len(x)
    key = jax.random.key(0) if key is None else key
    batch_size = min(batch_size, n)
    if mesh is not None:
        batch_size = -(-batch_size // mesh.shape[sharding.DATA]) * mesh.shape[sharding.DATA]
    totals = {"loss": 0.0, "correct": 0.0, "rate": 0.0}
    for start in range(0, n, batch_size):
        xb, yb = x[start:start + batch_size], labels[start:start + batch_size]
        pad = batch_size - len(xb)
        mask = np.concatenate([np.ones(len(xb), np.float32), np.zeros(pad, np.float32)])
        xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
        yb = np.concatenate([yb, np.zeros(pad, yb.dtype)])
        if mesh is not None:
            xb, yb, mask = sharding.shard_batch((xb, yb, mask), mesh)
        sums = eval_step(model, xb, yb, mask, jax.random.fold_in(key, start),
                         encoder=encoder, objective=objective)
        for k in totals:
            totals[k] += float(sums[k])
    return {"loss": totals["loss"] / n, "accuracy": totals["correct"] / n,
            "rate_hz": totals["rate"] / n * 1000.0 / model.dt}


#: Per-task settings of the benchmarked recipe (benchmarks/TRAINING.md): the
#: encoder kind, time steps T (dt = 1 ms), and the network's input gain and
#: synapse. Digits: constant input currents, no synapse. Randman: one-step
#: input spikes, which need the charge of a 5 ms synapse and gain 3.
RECIPES: dict[str, dict[str, Any]] = {
    "digits": {"encoder": "current", "steps": 25, "input_gain": 1.0, "synapse_tau": None},
    "randman": {"encoder": "spikes", "steps": 50, "input_gain": 3.0, "synapse_tau": 5.0},
}


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The training order of epoch ``epoch``: a permutation of range(n) that is
    a pure function of (seed, epoch), so a resumed run sees the same batches."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_key(seed: int, epoch: int, index: int) -> Array:
    """The encoder's PRNG key for batch ``index`` of ``epoch``: a pure function."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), index)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the run stopped before the
    epoch's ``on_epoch_end`` (so no checkpoint of it was written)."""


def _check_fit(model: Any, data: Dataset, encoder: Encoder, epochs: Any, batch_size: Any,
               start_epoch: Any) -> None:
    """Refuses, before any step, settings and data that ``fit`` cannot train on."""
    for name, value, low in (("epochs", epochs, 0), ("batch_size", batch_size, 1),
                             ("start_epoch", start_epoch, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} = {value!r} violates the rule: an int >= {low}")
    if start_epoch > epochs:
        raise ValueError(f"start_epoch = {start_epoch} violates the rule: start_epoch <= epochs "
                         f"= {epochs}")
    data.check()
    spec = getattr(model, "spec", None) or {}
    if "in_features" in spec and data.n_features != spec["in_features"]:
        raise DataError(f"{data.name}: {data.n_features} features violate the rule: the model's "
                        f"in_features = {spec['in_features']}")
    if "n_classes" in spec and data.n_classes > spec["n_classes"]:
        raise DataError(f"{data.name}: n_classes = {data.n_classes} violates the rule: at most the "
                        f"model's n_classes = {spec['n_classes']}")
    spikes = data.encoding == "spikes"
    if spikes != (encoder.kind == "spikes"):
        raise DataError(f"{data.name}: {data.encoding} data violate the rule: encoder kind "
                        f"{encoder.kind!r} needs {'spikes' if encoder.kind == 'spikes' else 'static'} data")
    if spikes and data.x_train.shape[1] != encoder.steps:
        raise DataError(f"{data.name}: {data.x_train.shape[1]} time steps per sample violate the "
                        f"rule: the encoder's steps = {encoder.steps}")


HISTORY_KEYS = ("epoch", "train_loss", "train_accuracy", "train_rate_hz",
                "test_loss", "test_accuracy", "test_rate_hz", "seconds")


def fit(
    model: SpikingNetwork,
    optimizer: nnx.Optimizer,
    data: Dataset,
    *,
    encoder: Encoder,
    epochs: int,
    batch_size: int = 64,
    seed: int = 0,
    objective: Objective = Objective(),
    start_epoch: int = 0,
    history: Mapping[str, list] | None = None,
    on_epoch_end: Callable[[int, SpikingNetwork, nnx.Optimizer, dict], None] | None = None,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    stop_on_nonfinite: bool = True,
) -> dict[str, list]:
    """Trains for epochs ``start_epoch`` … ``epochs − 1``; returns the history.

    The run's whole state is explicit: ``model`` and ``optimizer`` (weights,
    neuron parameters, Adam moments, step count), ``seed`` and the epoch
    counter. Epoch e visits ``data``'s training set in the order
    :func:`epoch_order` (seed, e) in batches of ``batch_size`` (the last,
    incomplete one is dropped: one compiled shape); batch i uses encoder key
    :func:`batch_key` (seed, e, i). So a run restored after epoch e and
    continued with ``start_epoch=e + 1`` and the saved history is the run
    that never stopped. ``on_epoch_end(epoch, model, optimizer, history)``
    runs after each epoch (e.g. to checkpoint).

    History: a dict of equal-length lists, one entry per epoch —
    :data:`HISTORY_KEYS` (loss and accuracy on the training batches as
    trained, and on the test split after the epoch; mean hidden rates in
    Hz; wall seconds of the epoch, evaluation included).

    A tqdm bar counts the training steps and shows loss, accuracy and the
    hidden mean rate.

    With a ``mesh`` (:func:`spark_somas.sharding.make_mesh`) training is data
    parallel: ``model`` and ``optimizer`` are replicated onto it and every
    batch is split over its ``"data"`` axis (``batch_size`` must divide by
    that axis' size); the compiler all-reduces the gradients.

    Before the first step, the settings and ``data`` are checked
    (:meth:`Dataset.check`: shapes, finite inputs, labels in range; the
    model's input size and classes; the encoder's kind and steps). After
    each epoch a NaN or infinite train or test loss raises
    :class:`NonFiniteLossError` before ``on_epoch_end``, so the last
    checkpoint written is the last good one; ``stop_on_nonfinite=False``
    trains on regardless.

    Raises:
      ValueError: bad ``epochs``, ``batch_size`` or ``start_epoch``.
      DataError: ``data`` that cannot train ``model`` (see above).
      NonFiniteLossError: the loss diverged.
    """
    from tqdm.auto import tqdm

    _check_fit(model, data, encoder, epochs, batch_size, start_epoch)
    n = len(data.x_train)
    batch_size = min(batch_size, n)
    per_epoch = n // batch_size
    history = {k: list(history.get(k, [])) if history else [] for k in HISTORY_KEYS}
    place = lambda batch: batch  # noqa: E731
    if mesh is not None:
        sharding.replicate(model, mesh)
        sharding.replicate(optimizer, mesh)
        place = lambda batch: sharding.shard_batch(batch, mesh)  # noqa: E731
    eval_key = jax.random.fold_in(jax.random.key(seed), 2**32 - 1)  # never an epoch
    bar = tqdm(total=(epochs - start_epoch) * per_epoch, disable=not progress, unit="step",
               dynamic_ncols=True)
    try:
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            order = epoch_order(seed, epoch, n)
            sums = []
            for i in range(per_epoch):
                idx = order[i * batch_size:(i + 1) * batch_size]
                m = train_step(model, optimizer, *place((data.x_train[idx], data.y_train[idx])),
                               batch_key(seed, epoch, i), encoder=encoder, objective=objective)
                sums.append(m)
                bar.update(1)
                if i % 10 == 0 or i == per_epoch - 1:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{float(m['loss']):.3f}",
                                    acc=f"{float(m['accuracy']):.3f}",
                                    rate=f"{float(m['rate_hz']):.1f}Hz", refresh=False)
            train = {k: float(np.mean([float(s[k]) for s in sums])) for k in sums[0]}
            test = evaluate(model, data.x_test, data.y_test, encoder=encoder,
                            objective=objective, key=eval_key, mesh=mesh)
            for k, v in (("epoch", epoch + 1), ("train_loss", train["loss"]),
                         ("train_accuracy", train["accuracy"]), ("train_rate_hz", train["rate_hz"]),
                         ("test_loss", test["loss"]), ("test_accuracy", test["accuracy"]),
                         ("test_rate_hz", test["rate_hz"]), ("seconds", time.perf_counter() - t0)):
                history[k].append(v)
            bar.set_postfix(epoch=epoch + 1, loss=f"{train['loss']:.3f}",
                            acc=f"{train['accuracy']:.3f}", test_acc=f"{test['accuracy']:.3f}",
                            rate=f"{train['rate_hz']:.1f}Hz")
            if stop_on_nonfinite and not np.isfinite([train["loss"], test["loss"]]).all():
                raise NonFiniteLossError(
                    f"epoch {epoch + 1}: train loss {train['loss']}, test loss {test['loss']} "
                    "violate the rule: a finite loss (lower the learning rate or check the "
                    "inputs); training stopped before this epoch was saved")
            if on_epoch_end is not None:
                on_epoch_end(epoch, model, optimizer, history)
    finally:
        bar.close()
    return history


def plot_training(history: Mapping[str, Sequence[float]], raster: np.ndarray | None = None, *,
                  dt: float = 1.0, title: str = ""):
    """A matplotlib Figure: loss and accuracy per epoch (train and test) and,
    given ``raster`` (T, N) 0/1 of one sample, its hidden spike raster."""
    import matplotlib.pyplot as plt

    from spark_somas import plotting

    panels = 3 if raster is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4), layout="constrained")
    for ax, what in zip(axes, ("loss", "accuracy")):
        ax.plot(history["epoch"], history[f"train_{what}"], "o-", ms=3, label="train")
        ax.plot(history["epoch"], history[f"test_{what}"], "s-", ms=3, label="test")
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend()
    if raster is not None:
        plotting.raster(raster, dt=dt, ax=axes[2])
        axes[2].set_ylabel("hidden neuron")
        axes[2].set_title("one test sample")
    if title:
        fig.suptitle(title)
    return fig
