"""A cell's recording (:class:`Recording`) and the checks of fitting's input.

A recording is a list of sweeps: the injected current (pA) at each step of
``dt`` ms, and what the cell did, its membrane potential (mV, NaN where not
recorded) and/or its spike times (ms). The checks here turn any real scalar
or array into a number or a float64 array, or raise ConfigError naming the
field, the value and the rule.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax.numpy as jnp
import numpy as np

from spark_somas.models import configs
from spark_somas.models.configs import require

__all__ = ["Recording", "checked_number", "real_array", "as_tuple", "same_dt", "spike_steps"]


def checked_number(value: Any, name: str, ok: Callable[[Any], bool], rule: str, *,
                   integer: bool = False) -> float | int:
    """``value`` as a Python float (an int with ``integer``) for which
    ``ok(x)`` holds: any real scalar (a NumPy or JAX number, a 0-d array, a
    ``Fraction``) is one. Anything else raises ConfigError naming ``name``,
    the value and ``rule``."""
    try:
        x = configs.as_number(value, name, integer=integer)
    except configs.ConfigError:
        x = None
    require(x is not None and ok(x), name, value, rule)
    return x


def real_array(value: Any, name: str) -> np.ndarray:
    """``value`` as a float64 array; ConfigError naming ``name`` unless it
    holds real numbers only (a complex one would lose its imaginary part)."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):  # a ragged list
        arr = np.asarray(None)
    rule = "real numbers (a complex one would lose its imaginary part)"
    require(arr.dtype.kind in "biuf" or arr.dtype == jnp.bfloat16, name,
            f"an array of {arr.dtype}" if arr.dtype != object else value, rule)
    return arr.astype(np.float64)


def same_dt(a: float, b: float) -> bool:
    """Whether two sampling intervals (ms) are one: equal to a part in 10⁹,
    so that 0.1 and 0.1 computed as 0.3 − 0.2 agree."""
    return abs(a - b) <= 1e-9 * b


def spike_steps(times: np.ndarray, dt: float, length: int) -> np.ndarray:
    """The step of each spike time (a spike in step k is reported at k·dt)
    in a sweep of ``length`` steps."""
    return np.minimum(np.round(times / dt).astype(int), length - 1)


def _as_sweeps(value: Any, name: str, time_major: bool) -> list[np.ndarray]:
    """A list of 1-D float arrays from a list of arrays or one 2-D array."""
    if isinstance(value, (list, tuple)):
        sweeps = [real_array(v, f"{name}[{k}]") for k, v in enumerate(value)]
    else:
        arr = real_array(value, name)
        require(arr.ndim in (1, 2), name, f"an array of shape {arr.shape}",
                "one sweep (T,), sweeps (T, S) when time_major else (S, T), or a list of (T_s,)")
        arr = arr[:, None] if arr.ndim == 1 else arr
        sweeps = list(arr.T if time_major else arr)
    for k, v in enumerate(sweeps):
        require(v.ndim == 1, f"{name}[{k}]", f"an array of shape {v.shape}",
                "one sweep, shape (T,)")
    return sweeps


def as_tuple(value: Any, name: str, rule: str) -> tuple:
    """``value`` as a tuple (a string as one item); ConfigError naming
    ``name`` and ``rule`` when it is no sequence."""
    if isinstance(value, str):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        require(False, name, value, rule)


@dataclasses.dataclass(frozen=True, eq=False)
class Recording:
    """Sweeps of one cell: injected currents and the recorded response.

    Args:
      currents: per sweep, the injected current (pA) at each step of ``dt``;
        a list of 1-D arrays (sweeps may differ in length), or one 2-D array,
        (T, S) when ``time_major`` else (S, T).
      dt: sampling interval (ms), also the fitting soma's step.
      potential: per sweep, the membrane potential (mV) at the end of each
        step, NaN where not recorded; None when only spikes were recorded.
      spike_times: per sweep, spike times (ms from the sweep's start, a
        spike in step k reported at k·dt as
        :func:`spark_somas.models.presets.spike_times` does); None when unknown.
      time_major: layout of 2-D ``currents`` / ``potential``.

    Raises ConfigError naming the sweep, the value and the rule for
    mismatched lengths, non-finite currents, complex values, spike times
    outside a sweep or two in one step of ``dt``, and a target with nothing
    recorded (all NaN, no spikes).
    """

    currents: Any
    dt: float = 0.1
    potential: Any = None
    spike_times: Any = None
    time_major: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "dt", checked_number(
            self.dt, "dt", lambda dt: configs.SMALLEST <= dt <= configs.LARGEST,
            f"a time step in ms, a real number {configs.SMALLEST:g} ≤ dt "
            f"≤ {configs.LARGEST:g}"))
        currents = _as_sweeps(self.currents, "currents", self.time_major)
        require(len(currents) > 0, "currents", "no sweeps", "at least one sweep")
        for k, c in enumerate(currents):
            require(len(c) > 0 and np.all(np.isfinite(c)), f"currents[{k}]",
                    f"{len(c)} samples, {int(np.sum(~np.isfinite(c)))} not finite",
                    "at least one sample, all finite (pA)")
        potential = None
        if self.potential is not None:
            potential = _as_sweeps(self.potential, "potential", self.time_major)
            require(len(potential) == len(currents), "potential", f"{len(potential)} sweeps",
                    f"one per sweep of currents ({len(currents)})")
            for k, (v, c) in enumerate(zip(potential, currents)):
                require(len(v) == len(c), f"potential[{k}]", f"{len(v)} samples",
                        f"as many samples as currents[{k}] ({len(c)}), one per step of dt")
        spikes = None
        if self.spike_times is not None:
            spikes = [np.sort(np.atleast_1d(real_array(t, f"spike_times[{k}]")))
                      for k, t in enumerate(self.spike_times)]
            require(len(spikes) == len(currents), "spike_times", f"{len(spikes)} sweeps",
                    f"one array of times per sweep of currents ({len(currents)})")
            for k, (t, c) in enumerate(zip(spikes, currents)):
                _check_spike_times(t, len(c), self.dt, f"spike_times[{k}]")
        recorded = (potential is not None and any(np.isfinite(v).any() for v in potential))
        require(recorded or spikes is not None, "potential",
                "all NaN" if potential is not None else None,
                "at least one recorded (non-NaN) sample, or spike_times")
        object.__setattr__(self, "currents", tuple(currents))
        object.__setattr__(self, "potential", None if potential is None else tuple(potential))
        object.__setattr__(self, "spike_times", None if spikes is None else tuple(spikes))

    @property
    def n_sweeps(self) -> int:
        return len(self.currents)

    @property
    def lengths(self) -> tuple[int, ...]:
        """Samples per sweep."""
        return tuple(len(c) for c in self.currents)

    def select(self, sweeps: Sequence[int]) -> "Recording":
        """The recording of the chosen sweeps only."""
        sweeps = [int(k) for k in sweeps]
        for k in sweeps:
            require(0 <= k < self.n_sweeps, "sweeps", k, f"0 ≤ index < {self.n_sweeps}")
        pick = lambda xs: None if xs is None else [xs[k] for k in sweeps]  # noqa: E731
        return Recording([self.currents[k] for k in sweeps], self.dt, pick(self.potential),
                         pick(self.spike_times))

    def spike_counts(self) -> np.ndarray | None:
        return None if self.spike_times is None else np.array([len(t) for t in self.spike_times])

    def arrays(self) -> dict[str, np.ndarray]:
        """The sweeps padded to the longest, time-major (T, S), float32:
        currents (0 beyond a sweep), potential (0 where not recorded),
        recorded (1 where the potential was), valid (1 within the sweep),
        spikes (0/1 per step, from the spike times)."""
        steps, n = max(self.lengths), self.n_sweeps
        out = {k: np.zeros((steps, n), np.float32)
               for k in ("currents", "potential", "recorded", "valid", "spikes")}
        for k, c in enumerate(self.currents):
            out["currents"][: len(c), k] = c
            out["valid"][: len(c), k] = 1.0
            if self.potential is not None:
                v = self.potential[k]
                out["recorded"][: len(v), k] = np.isfinite(v)
                out["potential"][: len(v), k] = np.where(np.isfinite(v), v, 0.0)
            if self.spike_times is not None:
                out["spikes"][spike_steps(self.spike_times[k], self.dt, len(c)), k] = 1.0
        return out


def _check_spike_times(times: np.ndarray, length: int, dt: float, name: str) -> None:
    """Refuses sorted spike ``times`` (ms) of a sweep of ``length`` steps
    unless each lies within the sweep and no two fall in one step: a step
    holds one spike (two would reset the model twice at once)."""
    duration = length * dt
    shown = times.tolist() if times.size < 8 else (
        f"{times.size} times from {times.min()} to {times.max()}")
    require(times.ndim == 1 and np.all((times >= 0) & (times < duration)), name, shown,
            f"times in ms within the sweep, 0 ≤ t < {duration:g}")
    steps = spike_steps(times, dt, length)
    twice = np.isin(steps, steps[1:][np.diff(steps) == 0])
    require(not twice.any(), name, times[twice].tolist()[:8],
            f"at most one spike per step of dt = {dt:g} ms (these fall in step(s) "
            f"{sorted(set(steps[twice].tolist()))[:4]})")
