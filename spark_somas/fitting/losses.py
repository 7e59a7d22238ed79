"""What a fit minimises: :class:`Loss`, a weighted sum of the potential's
mean squared error (mV²), the spike-count error (spikes²), the van Rossum
(2001) distance between spike trains (dimensionless) and the escape error
of a teacher-forced run (mV²)."""

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
    (spikes²), the van Rossum distance (dimensionless) with kernel time
    constant ``van_rossum_tau`` (ms), and the escape error (mV²):

    .. math:: L_E = \\frac{1}{N^*} \\sum_{k} (V_{cut} - V_{t_k - dt})^2

    over the N* recorded spikes t_k, V_{t_k − dt} the model's potential at
    the step before the cell's spike and V_{cut} = ``cutoff`` (mV, the
    soma's cut-off V_th). In a teacher-forced run (the model reset at the
    recorded spikes, V held at most at V_th) it is 0 for a spike the model
    reached by the step before the cell's, and grows as the model lags.
    Without it a forced fit that leaves out the upswing punishes a model
    that escapes early (it sits at V_th against the recorded potential) but
    not one that escapes late (the recorded spike resets it first), and
    settles on a spike threshold V_T that is too high: a model that,
    running free, fires too late and too rarely. It asks the model to
    spike one step (dt) before the cell, a bias of dt on the spike times;
    on data the model made it also pulls the other fields, so
    :func:`~spark_somas.fitting.forced_recipe` adds it only where V_T or
    Δ_T are fitted. See the module docstring.
    """

    potential: float = 1.0
    count: float = 0.0
    van_rossum: float = 0.0
    van_rossum_tau: float = 10.0
    upswing: float = 0.0
    escape: float = 0.0
    cutoff: float = 0.0

    def __post_init__(self) -> None:
        weight = (lambda w: math.isfinite(w) and w >= 0, "a finite weight ≥ 0")
        rules = {**dict.fromkeys(("potential", "count", "van_rossum", "escape"), weight),
                 "van_rossum_tau": (lambda t: math.isfinite(t) and t > 0,
                                    "a time constant in ms, finite and > 0"),
                 "upswing": (lambda t: math.isfinite(t) and t >= 0,
                             "a duration in ms, finite and ≥ 0"),
                 "cutoff": (math.isfinite, "a potential in mV, finite")}
        for name, (ok, rule) in rules.items():
            object.__setattr__(self, name, checked_number(getattr(self, name), f"Loss.{name}",
                                                          ok, rule))
        require(self.potential + self.count + self.van_rossum + self.escape > 0, "Loss", self,
                "at least one weight > 0")

    @property
    def uses_spikes(self) -> bool:
        return self.count > 0 or self.van_rossum > 0 or self.escape > 0

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
        if self.escape:
            total += self.escape * _escape_error(potential, data, self.cutoff)
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


def _escape_error(potential: Array, data: Mapping[str, Array], cutoff: float) -> Array:
    """Mean over the recorded spikes of (cutoff − V)², V at the step before
    each spike."""
    before = jnp.concatenate([data["spikes"][1:], jnp.zeros_like(data["spikes"][:1])])
    gap = jnp.where(before > 0, cutoff - potential, 0.0)
    return jnp.sum(gap**2) / jnp.maximum(jnp.sum(before), 1.0)


def _spikes_within(spikes: Array, steps: int) -> Array:
    """Per sample, the recorded spikes in it and the next ``steps`` samples."""
    total = jnp.cumsum(spikes[::-1], axis=0)[::-1]
    later = jnp.concatenate([total[steps + 1:], jnp.zeros_like(total[: steps + 1])])
    return total - later
