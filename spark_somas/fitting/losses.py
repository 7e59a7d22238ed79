"""What a fit minimises: :class:`Loss`, a weighted sum of the potential's
mean squared error (mV²), the spike-count error (spikes²) and the van Rossum
(2001) distance between spike trains (dimensionless)."""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import jax
import jax.numpy as jnp

from spark_somas.models.configs import require
from spark_somas.fitting.recording import checked_number

__all__ = ["Loss"]

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Loss:
    """A weighted sum of the potential MSE (mV²; over the recorded samples
    but those within ``upswing`` ms before a recorded spike), the spike-count error
    (spikes²) and the van Rossum distance (dimensionless) with kernel time
    constant ``van_rossum_tau`` (ms); see the module docstring."""

    potential: float = 1.0
    count: float = 0.0
    van_rossum: float = 0.0
    van_rossum_tau: float = 10.0
    upswing: float = 0.0

    def __post_init__(self) -> None:
        weight = (lambda w: math.isfinite(w) and w >= 0, "a finite weight ≥ 0")
        rules = {**dict.fromkeys(("potential", "count", "van_rossum"), weight),
                 "van_rossum_tau": (lambda t: math.isfinite(t) and t > 0,
                                    "a time constant in ms, finite and > 0"),
                 "upswing": (lambda t: math.isfinite(t) and t >= 0,
                             "a duration in ms, finite and ≥ 0")}
        for name, (ok, rule) in rules.items():
            object.__setattr__(self, name, checked_number(getattr(self, name), f"Loss.{name}",
                                                          ok, rule))
        require(self.potential + self.count + self.van_rossum > 0, "Loss", self,
                "at least one weight > 0")

    @property
    def uses_spikes(self) -> bool:
        return self.count > 0 or self.van_rossum > 0

    def __call__(self, potential: Array, spikes: Array, data: Mapping[str, Array],
                 dt: float) -> Array:
        """The loss of a model run (potential, spikes: (T, S)) against
        ``data`` (:meth:`Recording.arrays`)."""
        total = jnp.zeros((), potential.dtype)
        if self.potential:
            m = data["recorded"]
            if self.upswing:
                m = m * (_spikes_within(data["spikes"], round(self.upswing / dt)) == 0)
            err = jnp.where(m > 0, potential - data["potential"], 0.0)
            total += self.potential * jnp.sum(err**2) / jnp.maximum(jnp.sum(m), 1.0)
        diff = spikes * data["valid"] - data["spikes"]
        # Means over the sweeps there are and integrals over each sweep's own
        # length: a sweep of padding (no valid sample), added to batch cells
        # whose recordings differ in shape, changes no loss.
        sweeps = jnp.maximum(jnp.sum(jnp.any(data["valid"] > 0, axis=0)), 1)
        if self.count:
            total += self.count * jnp.sum(jnp.sum(diff, axis=0) ** 2) / sweeps
        if self.van_rossum:
            decay = math.exp(-dt / self.van_rossum_tau)

            def filt(f, d):
                f = f * decay + d
                return f, f

            _, f = jax.lax.scan(filt, jnp.zeros_like(diff[0]), diff)
            total += (self.van_rossum * dt / self.van_rossum_tau
                      * jnp.sum(f**2 * data["valid"]) / sweeps)
        return total


def _spikes_within(spikes: Array, steps: int) -> Array:
    """Per sample, the recorded spikes in it and the next ``steps`` samples."""
    total = jnp.cumsum(spikes[::-1], axis=0)[::-1]
    later = jnp.concatenate([total[steps + 1:], jnp.zeros_like(total[: steps + 1])])
    return total - later
