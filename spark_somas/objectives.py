"""Training objectives: cross-entropy on the readout plus a firing-rate regularizer."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

import jax
import jax.numpy as jnp
import optax

from spark_somas.configs import require

if TYPE_CHECKING:
    from spark_somas.network import NetworkOutput, SpikingNetwork

__all__ = ["cross_entropy", "firing_rate", "firing_rate_loss", "Objective"]

Array = jax.Array


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
        require(self.rate_target_hz > 0, "Objective.rate_target_hz", self.rate_target_hz, "> 0",
                error=ValueError)
        require(self.rate_strength >= 0, "Objective.rate_strength", self.rate_strength, ">= 0",
                error=ValueError)

    def __call__(self, model: SpikingNetwork, out: NetworkOutput, labels: Array) -> Array:
        loss = cross_entropy(out.logits, labels)
        if self.rate_strength:
            loss = loss + self.rate_strength * firing_rate_loss(
                out.hidden_spikes, model.dt, self.rate_target_hz)
        return loss
