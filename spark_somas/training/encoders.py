"""Encoders: how a static sample x ∈ [0, 1]^F becomes T time steps of network input.

(B, F) -> (T, B, F): a Poisson/Bernoulli rate code, a latency
(time-to-first-spike) code, or the value itself as a constant input ("direct
current"). Spike data (Randman, SHD), stored sample first as (B, T, F), pass
through unchanged, transposed to time-major.

Every encoder takes ``time_major`` (default True), the layout of what it
returns, as :func:`~spark_somas.simulate` and
:class:`~spark_somas.training.network.SpikingNetwork` do (:mod:`spark_somas.simulation.layout`):
``time_major=False`` gives (B, T, F), the input of
``net(inputs, time_major=False)``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from spark_somas.simulation import layout
from spark_somas.models.configs import as_number
from spark_somas.errors import RuleError, require

__all__ = ["Encoder", "encode_current", "encode_poisson", "encode_latency"]

Array = jax.Array


def encode_current(x: Array, steps: int, *, time_major: bool = True) -> Array:
    """Direct current: the sample itself at every step, (B, F) -> (T, B, F)
    (``time_major=False``: (B, T, F))."""
    x = jnp.asarray(x)
    return layout.from_time_major(jnp.broadcast_to(x, (steps,) + x.shape), 1, time_major)


def encode_poisson(x: Array, steps: int, key: Array, *, rate_hz: float = 500.0,
                   dt: float = 1.0, time_major: bool = True) -> Array:
    """Bernoulli (discrete-time Poisson) rate code.

    Feature value x ∈ [0, 1] fires with probability p = x · rate_hz · dt/1000
    in each step (dt in ms), independently; (B, F) -> (T, B, F) of 0/1
    (``time_major=False``: (B, T, F), the same spikes transposed).
    """
    p = jnp.clip(jnp.asarray(x), 0.0, 1.0) * (rate_hz * dt / 1000.0)
    spikes = jax.random.bernoulli(key, p, (steps,) + p.shape).astype(jnp.float32)
    return layout.from_time_major(spikes, 1, time_major)


def encode_latency(x: Array, steps: int, *, threshold: float = 0.2,
                   time_major: bool = True) -> Array:
    """Time-to-first-spike code: one spike per feature, earlier for larger x.

    x = 1 fires at step 0, x = ``threshold`` at step T−1, linearly in between
    (step round((1 − x)/(1 − threshold) · (T − 1))); x < threshold never
    fires. (B, F) -> (T, B, F) of 0/1 (``time_major=False``: (B, T, F)).
    """
    x = jnp.asarray(x)
    t = jnp.round((1.0 - x) / (1.0 - threshold) * (steps - 1))
    t = jnp.where(x >= threshold, t, steps)  # step T: never
    spikes = (jnp.arange(steps).reshape((steps,) + (1,) * x.ndim) == t).astype(jnp.float32)
    return layout.from_time_major(spikes, 1, time_major)


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
        # a NumPy or JAX integer is a step count too
        object.__setattr__(self, "steps", as_number(self.steps, "Encoder.steps", integer=True,
                                                    error=RuleError))
        p = self.rate_hz * self.dt / 1000.0
        for name, ok, rule in (
            ("kind", self.kind in self.KINDS, f"one of {self.KINDS}"),
            ("steps", isinstance(self.steps, int) and self.steps > 0, "a positive int"),
            ("dt", self.dt > 0, "dt > 0 (ms)"),
            ("rate_hz", 0.0 <= p <= 1.0,
             f"0 <= rate_hz·dt/1000 <= 1 (a probability per step of {self.dt} ms)"),
            ("noise", 0 <= self.noise < math.inf, "0 <= noise < inf"),
            ("noise", not self.noise or self.kind == "current", "only for kind='current'"),
            ("threshold", 0.0 <= self.threshold < 1.0, "0 <= threshold < 1"),
        ):
            require(ok, f"Encoder.{name}", getattr(self, name), rule, error=RuleError)

    def __call__(self, x: Array, key: Array | None = None, *, train: bool = False,
                 time_major: bool = True) -> Array:
        """Encodes a batch (B, F), or (B, T, F) spike trains, into (T, B, F)
        (``time_major=False``: (B, T, F)); ``key`` drives Poisson spikes and,
        when ``train``, the noise. The same key gives the same values in
        either layout."""
        return layout.from_time_major(self._encode(x, key, train), 1, time_major)

    def _encode(self, x: Array, key: Array | None, train: bool) -> Array:
        if self.kind in ("poisson",) or (train and self.noise):
            if key is None:
                raise RuleError(f"Encoder(kind={self.kind!r}, noise={self.noise}) needs a key")
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
            raise RuleError(
                f"Encoder(kind='spikes', steps={self.steps}) needs samples of shape "
                f"(B, T={self.steps}, F), time on axis 1 as data sets store them; got {x.shape}"
            )
        return jnp.swapaxes(x, 0, 1)
