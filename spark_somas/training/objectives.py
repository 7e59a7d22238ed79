"""Training objectives: a task loss on the readout plus firing-rate regularizers.

Task losses (:class:`Objective` ``loss``):

* ``"cross_entropy"`` — softmax cross-entropy on the network's logits,
  whatever its readout: max or mean membrane potential, spike count, or
  −first-spike time (Mostafa 2018).
* ``"count_mse"`` — mean squared error between the readout somas' spike
  counts and target counts (Shrestha & Orchard 2018).

Regularizers: :func:`firing_rate_loss` pulls each neuron to a target rate;
:func:`rate_bounds_loss` penalises only rates outside [lower, upper]
(Zenke & Vogels 2021).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Sequence

import jax
import jax.numpy as jnp
import optax

from spark_somas.errors import RuleError, require

if TYPE_CHECKING:
    from spark_somas.training.network import NetworkOutput, SpikingNetwork

__all__ = ["cross_entropy", "count_mse", "firing_rate", "firing_rate_loss", "rate_bounds_loss",
           "LOSSES", "Objective"]

Array = jax.Array


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy of integer ``labels`` on readout ``logits``.

    With the ``"first_spike"`` readout the logits are −t_first (ms), so this
    is the first-spike-time loss of Mostafa (2018), "Supervised learning
    based on temporal coding in spiking neural networks", IEEE TNNLS
    29:3227: −log softmax(−t)_y, which the true class's neuron minimises by
    firing first.
    """
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def count_mse(counts: Array, labels: Array, target_true: float, target_false: float) -> Array:
    """Spike-count loss mean_{b,c} (n_{b,c} − n*_{b,c})², in spikes².

    n_{b,c} is readout neuron c's spike count on sample b (``counts``, (B,
    C)); the target n* is ``target_true`` for the sample's class and
    ``target_false`` for the others — the spike-count error of Shrestha &
    Orchard (2018), "SLAYER: Spike Layer Error Reassignment in Time",
    NeurIPS (snnTorch's ``mse_count_loss``).
    """
    target = jnp.where(jax.nn.one_hot(labels, counts.shape[-1], dtype=bool), target_true,
                       target_false)
    return jnp.mean(jnp.square(counts - target))


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


def rate_bounds_loss(spikes: Array, dt: float, lower_hz: float = 0.0,
                     upper_hz: float = math.inf) -> Array:
    """Firing-rate bounds per neuron, in spikes² (Zenke & Vogels 2021).

    With ζ_n = neuron n's spike count over the trial (T steps of ``dt`` ms,
    ``spikes`` (T, B, N)) averaged over the batch, and the bounds as counts
    ν_lo = ``lower_hz`` · T dt/1000, ν_hi = ``upper_hz`` · T dt/1000,

        L = mean_n ( max(0, ν_lo − ζ_n)² + max(0, ζ_n − ν_hi)² ),

    zero for every neuron whose rate lies in [lower_hz, upper_hz]: silent
    neurons are woken, runaway ones damped, the rest left alone. Zenke &
    Vogels (2021), "The remarkable robustness of surrogate gradient learning
    for instilling complex function in spiking neural networks", Neural
    Comput. 33:899 (their lower bound is per neuron, the upper one on the
    population mean; here both are per neuron).
    """
    counts = jnp.mean(jnp.sum(spikes, axis=0), axis=tuple(range(spikes.ndim - 2)))
    window_s = spikes.shape[0] * dt / 1000.0
    low, high = lower_hz * window_s, upper_hz * window_s
    return jnp.mean(jnp.square(jax.nn.relu(low - counts)) + jnp.square(jax.nn.relu(counts - high)))


#: The task losses :class:`Objective` knows.
LOSSES = ("cross_entropy", "count_mse")


@dataclasses.dataclass(frozen=True)
class Objective:
    """Loss = task loss + ``rate_strength`` · :func:`firing_rate_loss` (target
    ``rate_target_hz``) + ``bounds_strength`` · :func:`rate_bounds_loss`
    ([``rate_lower_hz``, ``rate_upper_hz``]), both regularizers on every
    hidden layer's spikes. Hashable (static under jit).

    ``loss``: ``"cross_entropy"`` on the logits (of whatever readout the
    network has, over its readout window), or ``"count_mse"`` on the
    readout somas' spike counts in that window, with targets
    ``count_target`` = (true class, other classes), in spikes per trial.
    """

    rate_target_hz: float = 20.0
    rate_strength: float = 0.0
    loss: str = "cross_entropy"
    count_target: tuple[float, float] = (8.0, 1.0)
    rate_lower_hz: float = 0.0
    rate_upper_hz: float = math.inf
    bounds_strength: float = 0.0

    def __post_init__(self) -> None:
        require(self.rate_target_hz > 0, "Objective.rate_target_hz", self.rate_target_hz, "> 0",
                error=RuleError)
        for name in ("rate_strength", "bounds_strength", "rate_lower_hz"):
            require(getattr(self, name) >= 0, f"Objective.{name}", getattr(self, name), ">= 0",
                    error=RuleError)
        require(self.rate_upper_hz >= self.rate_lower_hz, "Objective.rate_upper_hz",
                self.rate_upper_hz, f">= rate_lower_hz = {self.rate_lower_hz}", error=RuleError)
        require(self.loss in LOSSES, "Objective.loss", self.loss, f"one of {LOSSES}",
                error=RuleError)
        require(len(self.count_target) == 2 and all(c >= 0 for c in self.count_target),
                "Objective.count_target", self.count_target, "(true, false) counts >= 0",
                error=RuleError)
        object.__setattr__(self, "count_target", tuple(float(c) for c in self.count_target))

    def per_sample(self, out: NetworkOutput, labels: Array) -> Array:
        """The task loss of each sample, (B,): its mean is the task loss."""
        if self.loss == "count_mse":
            if out.output_counts is None:
                raise RuleError("Objective(loss='count_mse') needs spike counts: a network with "
                                 "output='soma'")
            return jax.vmap(count_mse, (0, 0, None, None))(out.output_counts, labels,
                                                           *self.count_target)
        return optax.softmax_cross_entropy_with_integer_labels(out.logits, labels)

    def __call__(self, model: SpikingNetwork, out: NetworkOutput, labels: Array) -> Array:
        loss = jnp.mean(self.per_sample(out, labels))
        if self.rate_strength:
            loss = loss + self.rate_strength * firing_rate_loss(
                out.hidden_spikes, model.dt, self.rate_target_hz)
        if self.bounds_strength:
            loss = loss + self.bounds_strength * sum(
                rate_bounds_loss(s, model.dt, self.rate_lower_hz, self.rate_upper_hz)
                for s in out.layer_spikes)
        return loss
