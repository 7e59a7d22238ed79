"""Fitting a soma's parameters to recordings: voltage traces and spike times.

A :class:`Recording` holds sweeps — a step or any current (pA) sampled every
``dt`` ms, and what the cell did: its membrane potential (mV, NaN where not
recorded) and/or its spike times (ms). :func:`fit_soma` adjusts the chosen
config fields of a soma so that the soma, driven by the same currents, does
the same, by gradient descent through :func:`~spark_somas.simulate`
(backpropagation through time, spikes through the soma's surrogate).

**The losses** (:class:`Loss`, a weighted sum; T: samples, S: sweeps):

* potential: L_V = Σ m_ts (V_ts − V*_ts)² / Σ m_ts, in mV², m = 1 where
  the potential was recorded (not NaN) and not within ``upswing`` ms
  before a recorded spike (a spike's onset, where an escape a step early or
  late costs tens of mV: left out of a forced fit, see below);
* spike count: L_n = (1/S) Σ_s (n_s − n*_s)², in spikes²;
* van Rossum (2001) distance: each train is filtered by e^{−t/τ}, and
  L_R = (1/S) Σ_s (1/τ) ∫ (f_s(t) − f*_s(t))² dt, dimensionless (a lone
  extra spike costs ½); τ (ms) sets how far apart two spikes still count
  as close.

The spike count and the van Rossum distance are sums of Heaviside steps in
the forward pass; their gradients reach the parameters through the
surrogate derivative of each spike. The fitting soma keeps the given soma's
surrogate and gradient switches (by default the reset is detached, so the
potential's gradient follows V ← V_r at the spikes where they fell, and
the adaptation jump w ← w + b·s is kept; a differentiated reset multiplies
the gradient by V − V_r at the crossing, which past a high cut-off such as
Naud et al.'s 0 mV overflows float32).
The exponential term keeps its exact gradient.

**Parameters stay inside their rules.** Each fitted field x lives in a box
[lo, hi]: the bounds given, else the interval its config rule allows
against the fixed fields (:func:`~spark_somas.models.configs.feasible_interval`;
time constants also ≥ dt). The optimizer moves an unconstrained u:

* both ends finite: x = lo + (hi − lo)·σ(u), on a log scale
  (log x = log lo + (log hi − log lo)·σ(u)) when lo > 0;
* only lo finite: x = lo + e^u; only hi: x = hi − e^u;
* neither: x = s·u, s = max(abs(x₀), 1) in the field's unit,

and x is clipped to the box (the strict rules, V_r < V_th, by the next
representable value), u to where the map is finite; a non-finite step keeps
the previous u. No learning rate can leave the box.

**Teacher forcing.** A stage with ``spikes="recorded"`` resets the model at
the recording's spike times instead of its own (V ← V_r, w ← w + b at each
recorded spike; V held at most at the cut-off in between), so that between
two spikes of the cell the model's potential is a smooth function of every
field, the spike-triggered ones included: the potential's error is then
one least-squares problem, as in the fits of integrate-and-fire models to
recordings with known spike times (Jolivet et al. 2006; Mensi et al. 2012;
Pozzorini et al. 2015), with no spike of the model's own to move through a
surrogate.

**Stages, many starts.** A fit is a sequence of :class:`Stage`\\ s — which
fields, which sweeps, which loss, L-BFGS (``optax.lbfgs``, for smooth
problems: the potential below threshold, or forced) or Adam (for losses on
the model's own spikes) — data, not code. :func:`forced_recipe` (the
default when the recording has both potential and spike times) is one
forced L-BFGS stage on every field; :func:`recipe` gives the staged fit
through the model's own spikes: the subthreshold response first, then the
spike-triggered fields. ``starts=K`` runs K
starting points as K neurons (``jax.vmap`` of one neuron's fit, so each
start follows exactly the steps it would alone) in one compiled program,
and keeps the start whose loss on held-out sweeps is least.

**Quality, as the field measures it.** :func:`coincidence_factor` (Γ of
Jolivet et al. 2008, Δ = 4 ms), :func:`explained_variance` of the
subthreshold potential, :func:`relative_errors` against known parameters;
:meth:`FitResult.evaluate` applies the first two to a recording.

Units: potential mV, time ms, current pA, resistance GΩ, conductance nS.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import types
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from spark_somas.models import configs
from spark_somas.errors import allocating, require_shape
from spark_somas.models.configs import require
from spark_somas.simulation.driver import simulate
from spark_somas.dynamics import integrators
from spark_somas.models.somas import (AdaptiveExponentialSoma, Soma, SomaConstant, SomaState,
                                      input_scale, mean_parameters, step)

__all__ = [
    "Recording",
    "Loss",
    "Stage",
    "recipe",
    "forced_recipe",
    "spike_triggered",
    "fit_soma",
    "FitResult",
    "coincidence_factor",
    "explained_variance",
    "relative_errors",
]

Array = jax.Array

def spike_triggered(soma: Soma) -> tuple[str, ...]:
    """The fields of ``soma`` that act only when it spikes, in config order.

    A recording below threshold says nothing about them, so :func:`recipe`
    fits them in its second stage. They are read off the model's own
    declarations, not listed: the fields that neither its
    ``time_constants`` nor its ``drives`` — the subthreshold dynamics
    τ_x·dx/dt = F_x — depend on. Both are differentiated (forward mode)
    with respect to every field at four states around rest and two
    currents; a field whose derivative is zero at all of them is
    spike-triggered. For the four somas: V_th, V_r, b, t_ref, δθ and τ_θ;
    for a model written outside the package, whatever its equations say.
    """
    require(isinstance(soma, Soma), "soma", soma, "a soma instance")
    means = mean_parameters(soma)
    names = [f.name for f in soma.config_class.quantity_fields()]
    rest = {k: jnp.asarray(v, jnp.float32).reshape(-1)[0] for k, v in soma.neuron_state().items()}
    rng = np.random.default_rng(0)
    probes = [({k: v + float(rng.normal(0.0, 2.0)) for k, v in rest.items()}, current)
              for current in (0.0, float(input_scale(soma))) for _ in range(2)]

    def subthreshold(values: jax.Array, x: Mapping[str, jax.Array], current: float):
        p = types.SimpleNamespace(**dict(zip(names, values)))
        taus = type(soma).time_constants(p)
        stage = integrators.Stage({n: soma.dt / tau for n, tau in taus.items()}, 1.0)
        drives = type(soma).drives(p, x, jnp.float32(current), stage, soma.options)
        return jnp.stack([*taus.values(), *drives.values()])

    values = jnp.asarray([getattr(means, n) for n in names], jnp.float32)
    reads = np.zeros(len(names), bool)
    for x, current in probes:
        jac = np.asarray(jax.jacfwd(subthreshold)(values, x, current))
        reads |= np.any(jac != 0.0, axis=0)
    return tuple(n for n, used in zip(names, reads) if not used)

OPTIMIZERS = ("lbfgs", "adam")


def _number(value: Any, name: str, ok: Callable[[Any], bool], rule: str, *,
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


def _real(value: Any, name: str) -> np.ndarray:
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


def _same_dt(a: float, b: float) -> bool:
    """Whether two sampling intervals (ms) are one: equal to a part in 10⁹,
    so that 0.1 and 0.1 computed as 0.3 − 0.2 agree."""
    return abs(a - b) <= 1e-9 * b


def _spike_steps(times: np.ndarray, dt: float, length: int) -> np.ndarray:
    """The step of each spike time (a spike in step k is reported at k·dt)
    in a sweep of ``length`` steps."""
    return np.minimum(np.round(times / dt).astype(int), length - 1)


def _as_sweeps(value: Any, name: str, time_major: bool) -> list[np.ndarray]:
    """A list of 1-D float arrays from a list of arrays or one 2-D array."""
    if isinstance(value, (list, tuple)):
        sweeps = [_real(v, f"{name}[{k}]") for k, v in enumerate(value)]
    else:
        arr = _real(value, name)
        require(arr.ndim in (1, 2), name, f"an array of shape {arr.shape}",
                "one sweep (T,), sweeps (T, S) when time_major else (S, T), or a list of (T_s,)")
        arr = arr[:, None] if arr.ndim == 1 else arr
        sweeps = list(arr.T if time_major else arr)
    for k, v in enumerate(sweeps):
        require(v.ndim == 1, f"{name}[{k}]", f"an array of shape {v.shape}",
                "one sweep, shape (T,)")
    return sweeps


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
        object.__setattr__(self, "dt", _number(
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
            spikes = [np.sort(np.atleast_1d(_real(t, f"spike_times[{k}]")))
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
                out["spikes"][_spike_steps(self.spike_times[k], self.dt, len(c)), k] = 1.0
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
    steps = _spike_steps(times, dt, length)
    twice = np.isin(steps, steps[1:][np.diff(steps) == 0])
    require(not twice.any(), name, times[twice].tolist()[:8],
            f"at most one spike per step of dt = {dt:g} ms (these fall in step(s) "
            f"{sorted(set(steps[twice].tolist()))[:4]})")


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
            object.__setattr__(self, name, _number(getattr(self, name), f"Loss.{name}", ok, rule))
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
        if self.count:
            total += self.count * jnp.mean(jnp.sum(diff, axis=0) ** 2)
        if self.van_rossum:
            decay = math.exp(-dt / self.van_rossum_tau)

            def filt(f, d):
                f = f * decay + d
                return f, f

            _, f = jax.lax.scan(filt, jnp.zeros_like(diff[0]), diff)
            total += self.van_rossum * dt / self.van_rossum_tau * jnp.mean(jnp.sum(f**2, axis=0))
        return total


def _spikes_within(spikes: Array, steps: int) -> Array:
    """Per sample, the recorded spikes in it and the next ``steps`` samples."""
    total = jnp.cumsum(spikes[::-1], axis=0)[::-1]
    later = jnp.concatenate([total[steps + 1:], jnp.zeros_like(total[: steps + 1])])
    return total - later


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a fit: which fields move, on which sweeps, by which loss
    and optimizer.

    Attributes:
      fields: the config fields this stage fits (a subset of those given to
        :func:`fit_soma`); the others keep their current values.
      loss: what to minimise.
      sweeps: ``"all"``, ``"subthreshold"`` (sweeps without a recorded
        spike), ``"spiking"`` (those with one), or sweep indices.
      optimizer: ``"lbfgs"`` (optax L-BFGS with a zoom line search: smooth
        losses) or ``"adam"`` (losses on spikes, piecewise constant in
        between the surrogate's reach).
      steps: iterations (L-BFGS) or updates (Adam).
      learning_rate: Adam's step in the unconstrained coordinates u
        (≈ relative change per step for fields on a log scale).
      spikes: what resets the model: ``"model"`` (its own threshold, as in
        a free run) or ``"recorded"`` (the recording's spike times: teacher
        forcing, V held at most at the threshold in between). Forced, the
        potential is a smooth function of every field between the cell's
        spikes, whatever the model's own spikes would have been.
    """

    fields: tuple[str, ...]
    loss: Loss = Loss()
    sweeps: str | tuple[int, ...] = "all"
    optimizer: str = "lbfgs"
    steps: int = 30
    learning_rate: float = 0.02
    spikes: str = "model"

    def __post_init__(self) -> None:
        fields = _sequence(self.fields, "Stage.fields", "a field name or a sequence of them")
        require(len(fields) > 0 and all(isinstance(f, str) for f in fields), "Stage.fields",
                self.fields, "a field name or a non-empty sequence of them")
        object.__setattr__(self, "fields", fields)
        require(isinstance(self.loss, Loss), "Stage.loss", self.loss, "a spark_somas.fitting.Loss")
        require(self.optimizer in OPTIMIZERS, "Stage.optimizer", self.optimizer,
                f"one of {OPTIMIZERS}")
        object.__setattr__(self, "steps", _number(self.steps, "Stage.steps", lambda n: n >= 1,
                                                  "an int ≥ 1", integer=True))
        object.__setattr__(self, "learning_rate", _number(
            self.learning_rate, "Stage.learning_rate", lambda r: math.isfinite(r) and r > 0,
            "finite, > 0"))
        require(self.spikes in ("model", "recorded"), "Stage.spikes", self.spikes,
                "'model' (its own threshold) or 'recorded' (the recording's spike times)")
        rule = "'all', 'subthreshold', 'spiking' or sweep indices (ints)"
        if isinstance(self.sweeps, str):
            require(self.sweeps in ("all", "subthreshold", "spiking"), "Stage.sweeps",
                    self.sweeps, rule)
        else:
            sweeps = _sequence(self.sweeps, "Stage.sweeps", rule)
            object.__setattr__(self, "sweeps", tuple(
                _number(k, f"Stage.sweeps[{i}]", lambda _: True, "a sweep index, an int",
                        integer=True) for i, k in enumerate(sweeps)))
            require(len(self.sweeps) > 0, "Stage.sweeps", self.sweeps, "at least one sweep")

    def pick(self, recording: Recording) -> tuple[int, ...]:
        """The indices of the sweeps this stage fits."""
        if not isinstance(self.sweeps, str):
            return self.sweeps
        if self.sweeps == "all":
            return tuple(range(recording.n_sweeps))
        counts = recording.spike_counts()
        require(counts is not None, "Recording.spike_times", None,
                f"known spike times, to choose the {self.sweeps!r} sweeps of a stage")
        keep = (counts == 0) if self.sweeps == "subthreshold" else (counts > 0)
        return tuple(int(k) for k in np.nonzero(keep)[0])


def _sequence(value: Any, name: str, rule: str) -> tuple:
    """``value`` as a tuple (a string as one item); ConfigError naming
    ``name`` and ``rule`` when it is no sequence."""
    if isinstance(value, str):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        require(False, name, value, rule)


def recipe(fields: Sequence[str], *, soma: Soma | type[Soma] = AdaptiveExponentialSoma,
           subthreshold_steps: int = 30, spike_steps: int = 100, polish_steps: int = 20,
           learning_rate: float = 0.05) -> tuple[Stage, ...]:
    """The usual staged fit (Brette & Gerstner 2005; Naud et al. 2008) of
    ``fields`` of ``soma`` (a class or an instance; default AdEx).

    1. The fields that shape the response below threshold (all but
       :func:`spike_triggered` ones), on the sweeps without spikes, by the
       potential MSE and L-BFGS: a smooth, well-posed problem.
    2. The spike-triggered fields (b, V_r, ...) on the sweeps with spikes,
       by Adam on the spike count and the van Rossum distance (τ = 10 ms):
       while the model's spikes fall elsewhere than the data's, the
       potential error points the wrong way, the spike losses do not.
    3. The same fields by L-BFGS on the potential MSE of the same sweeps,
       once the spikes are in place.

    A stage with no field is left out.
    """
    fields = tuple(fields)
    triggered = spike_triggered(soma(units=1) if isinstance(soma, type) else soma)
    sub = tuple(f for f in fields if f not in triggered)
    spk = tuple(f for f in fields if f in triggered)
    stages = []
    if sub:
        stages.append(Stage(sub, Loss(potential=1.0), "subthreshold", "lbfgs",
                            subthreshold_steps))
    if spk:
        stages.append(Stage(spk, Loss(potential=0.0, count=1.0, van_rossum=1.0), "spiking",
                            "adam", spike_steps, learning_rate))
        stages.append(Stage(spk, Loss(potential=1.0), "spiking", "lbfgs", polish_steps))
    return tuple(stages)


def forced_recipe(fields: Sequence[str], *, steps: int = 40,
                  upswing: float = 2.0) -> tuple[Stage, ...]:
    """One stage: every field of ``fields`` by L-BFGS on the potential MSE
    of every sweep, the model reset at the recorded spike times (teacher
    forcing, ``spikes="recorded"``), leaving out the ``upswing`` ms before
    each spike.

    Between two recorded spikes the forced model's potential is a smooth
    function of every field (b and V_r included: they act at the spikes'
    known times), so one smooth least-squares problem replaces the staged
    search through the model's own spikes; with the parameters found, the
    model's own spikes fall where the cell's did. A field that acts only
    through spike detection (the cut-off ``threshold``) moves nothing in a
    forced run: fit it with a free-running stage (:func:`recipe`).

    The last ms before a spike are left out because there the escape is
    steep: a model whose V leaves V_T a step before or after the cell's
    costs tens of mV per sample, whatever its other fields. Where a cell
    lingers near V_T for long before it escapes (a < 0: Naud et al.'s
    delayed regular bursting and irregular spiking), that sensitivity
    reaches further back than any fixed window and the forced fit is
    ill-conditioned (see the fitting guide's recovery table).
    """
    return (Stage(tuple(fields), Loss(potential=1.0, upswing=upswing), "all", "lbfgs", steps,
                  spikes="recorded"),)


@dataclasses.dataclass(frozen=True)
class _Box:
    """A fitted field's box [lo, hi], its map u -> x and u's own range; x
    is in ``dtype``, the soma's parameter dtype (u is at least float32)."""

    kind: str  # "sigmoid", "log_sigmoid", "above", "below", "linear"
    lo: float
    hi: float
    scale: float
    dtype: str

    @classmethod
    def of(cls, lo: float, hi: float, start: float, dtype: Any) -> "_Box":
        lo_finite, hi_finite = lo > -configs.LARGEST, hi < configs.LARGEST
        kind = ("log_sigmoid" if lo > 0 else "sigmoid") if lo_finite and hi_finite else (
            "above" if lo_finite else "below" if hi_finite else "linear")
        return cls(kind, lo, hi, max(abs(start), 1.0), jnp.dtype(dtype).name)

    def to_x(self, u: Array) -> Array:
        if self.kind == "sigmoid":
            x = self.lo + (self.hi - self.lo) * jax.nn.sigmoid(u)
        elif self.kind == "log_sigmoid":
            x = jnp.exp(math.log(self.lo) + math.log(self.hi / self.lo) * jax.nn.sigmoid(u))
        elif self.kind == "above":
            x = self.lo + jnp.exp(u)
        elif self.kind == "below":
            x = self.hi - jnp.exp(u)
        else:
            x = self.scale * u
        return jnp.clip(x, self.lo, self.hi).astype(self.dtype)

    def to_u(self, x: np.ndarray) -> np.ndarray:
        x = np.clip(np.asarray(x, np.float64), self.lo, self.hi)
        if self.kind in ("sigmoid", "log_sigmoid"):
            frac = ((x - self.lo) / (self.hi - self.lo) if self.kind == "sigmoid"
                    else np.log(x / self.lo) / math.log(self.hi / self.lo))
            frac = np.clip(frac, 1e-6, 1 - 1e-6)
            return np.log(frac / (1 - frac))
        if self.kind == "above":
            return np.log(np.maximum(x - self.lo, 1e-12))
        if self.kind == "below":
            return np.log(np.maximum(self.hi - x, 1e-12))
        return x / self.scale

    def u_range(self) -> tuple[float, float]:
        """Where the map is finite and still moves: beyond, σ(u) is 0 or 1
        in float32 and e^u under- or overflows the box."""
        if self.kind in ("sigmoid", "log_sigmoid"):
            return -30.0, 30.0
        if self.kind in ("above", "below"):
            return -30.0, math.log(self.hi - self.lo) if self.hi - self.lo < math.inf else 30.0
        return self.lo / self.scale, self.hi / self.scale


def _boxes(soma: Soma, fields: tuple[str, ...],
           bounds: Mapping[str, tuple[float, float]],
           start: Mapping[str, float]) -> dict[str, _Box]:
    """Each fitted field's box: its bounds, checked against what the config
    rules allow over the other fields' boxes, or that interval itself."""
    values = {n: float(np.asarray(v).ravel()[0]) for n, v in soma.parameters().items()}
    # Box ends representable in the parameters' dtype, which half precision
    # rounds coarser than float32 (a strict rule's next value included).
    box_dtype = soma.param_dtype if soma.param_dtype.itemsize < 4 else jnp.dtype(jnp.float32)
    given = {n: (float(lo), float(hi)) for n, (lo, hi) in bounds.items()}
    box = dict(given)

    def rule_interval(name: str) -> tuple[float, float]:
        # The rules are monotone in each other field, so the interval allowed
        # over the others' whole boxes is the intersection of those allowed
        # at each box's two ends.
        ends = [{**values, **{n: box.get(n, (values[n],) * 2)[i] for n in fields if n != name}}
                for i in (0, 1)]
        largest = float(jnp.finfo(box_dtype).max)  # float16 holds no 1e6
        lo, hi = -largest, largest
        for v in ends:
            with np.errstate(over="ignore"):  # ±1e6 rounds to ±inf in float16: clipped here
                a, b = configs.feasible_interval(soma.config_class, name, v, box_dtype)
            lo, hi = max(lo, float(a)), min(hi, float(b))
        if name in soma.config_class.time_constant_fields():  # the Euler leak 1 − dt/τ ≥ 0
            lo = max(lo, soma.dt)
        return lo, hi

    for name in fields:
        if name not in box:
            box[name] = rule_interval(name)
    rule = {n: soma.config_class.field_info(n)["rule"] for n in fields}
    out = {}
    for name in fields:
        lo, hi = box[name]
        allowed = rule_interval(name)
        require(math.isfinite(lo) and math.isfinite(hi) and lo < hi, f"bounds[{name!r}]",
                (lo, hi), "finite (low, high) with low < high")
        require(allowed[0] <= lo and hi <= allowed[1], f"bounds[{name!r}]", (lo, hi),
                f"inside what the config rules allow, [{allowed[0]:.7g}, {allowed[1]:.7g}] "
                f"({rule[name].text(name)}; time constants ≥ dt)")
        require(lo <= start[name] <= hi, f"start {name}", start[name],
                f"inside bounds[{name!r}] = ({lo:g}, {hi:g})")
        out[name] = _Box.of(lo, hi, start[name], soma.param_dtype)
    return out


def _template(soma: Soma,
              fields: tuple[str, ...]) -> tuple[Any, tuple[dict[str, Array], nnx.State]]:
    """One fitting neuron of ``soma``'s class: its graph (shared by every fit
    of the same class, fields, dt, method, dtype and surrogate, so that they
    share one compilation), the fixed fields' values and its state."""
    config = soma.config_class(surrogate=soma.config.surrogate,
                               detach_reset=soma.config.detach_reset,
                               detach_adaptation=soma.config.detach_adaptation)
    neuron = type(soma)(config, units=1, dt=soma.dt, method=soma.method, trainable=fields,
                        dtype=soma.dtype, param_dtype=soma.param_dtype)
    graph, _, _, state = nnx.split(neuron, nnx.Param, SomaConstant, SomaState)
    fixed = {n: jnp.asarray(np.asarray(v).ravel()[0], soma.param_dtype)
             for n, v in soma.parameters().items() if n not in fields}
    return graph, (fixed, state)


def _run(graph: Any, x: Mapping[str, Array], fixed: tuple[Mapping[str, Array], nnx.State],
         currents: Array, forced: Array | None = None) -> tuple[Array, Array]:
    """One neuron with fields ``x`` (scalars), the other fields and the
    state template ``fixed``, over currents (T, S): its potential and
    spikes, (T, S); with ``forced`` (T, S), the spikes imposed instead of
    detected (:func:`~spark_somas.models.somas.step`)."""
    values, state = fixed
    params = nnx.State({k: nnx.Param(jnp.reshape(v, (1,))) for k, v in x.items()})
    consts = nnx.State({k: SomaConstant(v) for k, v in values.items()})
    soma = nnx.merge(graph, params, consts, state, copy=True)
    soma.reset()
    if forced is None:
        rec = simulate(soma, currents[..., None])
        return rec.potential[..., 0], rec.spikes[..., 0]
    soma.broadcast_state(currents.shape[1:] + (1,))
    model, p, options = type(soma), soma.parameters(), soma.options

    def one(state, inputs):
        current, imposed = inputs
        new, spikes = step(model, p, state, current, options, forced=imposed)
        return new, (new[model.membrane], spikes)

    _, (potential, spikes) = jax.lax.scan(one, soma.neuron_state(),
                                          (currents[..., None], forced[..., None]))
    return potential[..., 0], spikes[..., 0]


def _lane_loss(u_fit, u_rest, graph, boxes, fixed, data, loss, dt, forced):
    x = {n: boxes[n].to_x(u) for n, u in {**u_rest, **u_fit}.items()}
    potential, spikes = _run(graph, x, fixed, data["currents"],
                             data["spikes"] if forced else None)
    # In the optimizer's dtype (u's, at least float32), whatever the soma's.
    return loss(potential, spikes, data, dt).astype(jax.tree.leaves(u_fit)[0].dtype)


def _optimizer(stage: Stage) -> optax.GradientTransformation:
    if stage.optimizer == "adam":
        return optax.adam(stage.learning_rate)
    return optax.lbfgs(linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=15))


@functools.partial(jax.jit, static_argnames=("graph", "stage", "boxes", "dt"))
def _fit_stage(u_fit, u_rest, fixed, data, *, graph, stage, boxes, dt):
    """``stage.steps`` iterations for every start at once (vmapped over the
    leading axis of ``u_fit`` / ``u_rest``); returns the final u, the loss
    before each iteration (steps, K) and the loss evaluations per start."""
    boxes = dict(boxes)
    opt = _optimizer(stage)
    low = {n: boxes[n].u_range()[0] for n in u_fit}
    high = {n: boxes[n].u_range()[1] for n in u_fit}

    def one(u_fit, u_rest):
        value_fn = functools.partial(_lane_loss, u_rest=u_rest, graph=graph, boxes=boxes,
                                     fixed=fixed, data=data, loss=stage.loss, dt=dt,
                                     forced=stage.spikes == "recorded")
        grad_fn = (optax.value_and_grad_from_state(value_fn) if stage.optimizer == "lbfgs"
                   else lambda u, state: jax.value_and_grad(value_fn)(u))

        def iteration(carry, _):
            u, state = carry
            value, grad = grad_fn(u, state=state)
            grad = jax.tree.map(lambda g: jnp.where(jnp.isfinite(g), g, 0.0), grad)
            step, state = opt.update(grad, state, u, value=value, grad=grad, value_fn=value_fn)
            new = optax.apply_updates(u, step)
            new = {n: jnp.clip(jnp.where(jnp.isfinite(v), v, u[n]), low[n], high[n])
                   for n, v in new.items()}
            extra = optax.tree_utils.tree_get(state, "num_linesearch_steps", 0)
            return (new, state), (value, 1 + jnp.asarray(extra))

        (u, _), (history, evals) = jax.lax.scan(iteration, (u_fit, opt.init(u_fit)), None,
                                                length=stage.steps)
        return u, history, jnp.sum(evals)

    return jax.vmap(one)(u_fit, u_rest)


@functools.partial(jax.jit, static_argnames=("graph", "loss", "boxes", "dt"))
def _losses(u, fixed, data, *, graph, loss, boxes, dt):
    """The loss of every start (vmapped over u's leading axis)."""
    boxes = dict(boxes)
    return jax.vmap(lambda u: _lane_loss(u, {}, graph, boxes, fixed, data, loss, dt, False))(u)


@dataclasses.dataclass(frozen=True, eq=False)
class FitResult:
    """What :func:`fit_soma` found.

    Attributes:
      params: the best start's fitted fields (field -> value in its unit).
      starts: every start's fitted fields (field -> array (K,)).
      initial: every start's initial values (field -> array (K,)).
      best: index of the best start.
      held_out_loss: each start's selection score on the held-out sweeps
        (the training sweeps when none were held out), (K,): the
        ``selection`` loss, or by default the sum over the stages of each
        stage's loss on the held-out sweeps of its kind, divided by the
        least over the starts (dimensionless, ≥ the number of stages).
      history: per stage, the loss before each iteration, (steps, K).
      evaluations: loss evaluations (simulations, each with its backward
        pass) per start, summed over the stages.
      stages: the stages run.
      wall_s: wall time of the fit (s), compilation included.
      soma: the fitted soma's class, config and fixed fields (a one-neuron
        soma, :meth:`fitted_soma` builds it).
    """

    params: dict[str, float]
    starts: dict[str, np.ndarray]
    initial: dict[str, np.ndarray]
    best: int
    held_out_loss: np.ndarray
    history: tuple[np.ndarray, ...]
    evaluations: int
    stages: tuple[Stage, ...]
    wall_s: float
    soma: Soma

    def fitted_soma(self, start: int | None = None) -> Soma:
        """A one-neuron soma of the fitted class with the fitted fields (the
        best start's, or ``start``'s) and the others as they were."""
        params = self.params if start is None else {n: float(v[start])
                                                    for n, v in self.starts.items()}
        s = self.soma
        fixed = {n: np.asarray(v) for n, v in s.parameters().items() if n not in params}
        return type(s)(s.config.replace(**fixed, **params), units=1, dt=s.dt, method=s.method,
                       dtype=s.dtype, param_dtype=s.param_dtype)

    def simulate(self, recording: Recording) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The fitted soma's potential (mV) and spike times (ms) on each
        sweep of ``recording``."""
        soma = self.fitted_soma()
        data = recording.arrays()
        rec = simulate(soma, jnp.asarray(data["currents"])[..., None])
        potential = np.asarray(rec.potential[..., 0], np.float64)
        spikes = np.asarray(rec.spikes[..., 0])
        n = recording.lengths
        return ([potential[: n[k], k] for k in range(len(n))],
                [np.nonzero(spikes[: n[k], k])[0] * recording.dt for k in range(len(n))])

    def evaluate(self, recording: Recording, *, delta: float = 4.0) -> dict[str, float]:
        """Γ (Jolivet et al. 2008, precision ``delta`` ms) over the sweeps
        with recorded spikes (mean of the sweeps where it is defined) and the
        explained variance of the subthreshold potential over all sweeps."""
        potential, times = self.simulate(recording)
        out: dict[str, float] = {}
        if recording.spike_times is not None:
            gammas = [coincidence_factor(t, d, n * recording.dt, delta=delta)
                      for t, d, n in zip(times, recording.spike_times, recording.lengths)]
            out["gamma"] = float(np.nanmean(gammas)) if np.isfinite(gammas).any() else float("nan")
            out["spikes_model"] = int(sum(len(t) for t in times))
            out["spikes_data"] = int(sum(len(t) for t in recording.spike_times))
        if recording.potential is not None:
            out["explained_variance"] = explained_variance(
                np.concatenate(potential), np.concatenate(recording.potential),
                model_spikes=_concat_times(times, recording),
                data_spikes=(None if recording.spike_times is None
                             else _concat_times(recording.spike_times, recording)),
                dt=recording.dt)
        return out

    def report(self, truth: Mapping[str, float] | None = None) -> str:
        """A plain-text table: per field the best start's initial and fitted
        values (and, with ``truth``, the true value and the error: relative,
        or where the true value is 0 absolute, in the field's unit), then
        the losses and the cost."""
        errors = relative_errors(self.params, truth) if truth is not None else {}
        head = f"{'field':26s}{'start':>12s}{'fitted':>12s}"
        head += f"{'true':>12s}{'error':>12s}" if truth is not None else ""
        lines = [head]
        for n, v in self.params.items():
            line = f"{n:26s}{float(self.initial[n][self.best]):12.5g}{v:12.5g}"
            if truth is not None:
                line += f"{float(truth[n]):12.5g}{self._error_text(n, truth[n], errors[n]):>12s}"
            lines.append(line)
        for k, (stage, h) in enumerate(zip(self.stages, self.history)):
            lines.append(f"stage {k + 1} ({stage.optimizer}, {', '.join(stage.fields)}): loss "
                         f"{h[0, self.best]:.4g} -> {h[-1, self.best]:.4g}")
        lines.append(f"best of {len(self.held_out_loss)} start(s): #{self.best}, held-out loss "
                     f"{self.held_out_loss[self.best]:.4g}; {self.evaluations} evaluations per "
                     f"start, {self.wall_s:.1f} s")
        return "\n".join(lines)

    def _error_text(self, name: str, true: float, error: float) -> str:
        """An entry of :func:`relative_errors` as text: a percentage, or
        where the true value is 0 the absolute error with its unit."""
        if float(true) != 0:
            return f"{error:+.2%}"
        return f"{error:+.3g} {self.soma.config_class.field_info(name)['units']}"

    def __str__(self) -> str:
        return self.report()


def _concat_times(times: Sequence[np.ndarray], recording: Recording) -> np.ndarray:
    offsets = np.concatenate([[0], np.cumsum(recording.lengths)[:-1]]) * recording.dt
    return np.concatenate([np.asarray(t) + o for t, o in zip(times, offsets)])


def fit_soma(
    soma: Soma | type[Soma],
    recording: Recording,
    fields: Sequence[str],
    *,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    stages: Sequence[Stage] | None = None,
    starts: int | Mapping[str, Any] = 1,
    held_out: Recording | None = None,
    selection: Loss | None = None,
    seed: int = 0,
) -> FitResult:
    """Fits ``fields`` of ``soma`` to ``recording``.

    Args:
      soma: a soma (its fields not fitted are held at its values, which
        must be one per neuron or shared) or a soma class (its defaults).
        Its dt must be the recording's; its method, dtype and surrogate
        are kept.
      recording: the training sweeps.
      fields: config fields to fit.
      bounds: field -> (low, high) in the field's unit; by default the
        interval the config rules allow (see the module docstring). Bounds
        beyond the rules are refused.
      stages: the recipe; default :func:`forced_recipe` (``fields``) when
        the recording has both the potential and the spike times, else
        :func:`recipe` (``fields``).
      starts: K, the number of starting points (the first is ``soma``'s
        values, the others drawn in the boxes: uniformly in u where both
        bounds are finite, else at ×e^{±0.5} / ±0.5 scale around it), or
        field -> K initial values.
      held_out: sweeps on which to choose the best start; default the
        training sweeps.
      selection: the loss that chooses, the model running free; default
        every stage's loss on the held-out sweeps of its kind
        (subthreshold, spiking; a forced stage's plus the spike count and
        the van Rossum distance), each relative to the best start's,
        summed: a start must do well on all of them.
      seed: seed of the drawn starts.

    Returns:
      A :class:`FitResult`.

    Raises:
      ConfigError: before any simulation, for unknown fields, bounds outside
        the rules or starts outside the bounds, a stage fitting a field not
        in ``fields``, a stage with no sweeps, a potential loss on sweeps
        without any recorded potential, a spike loss without spike times,
        or a dt that differs from the recording's.
      OutOfMemoryError: when the starts, or the run of all of them at once,
        need more memory than the device could allocate; it names the
        starts, the sweeps and about how many bytes.
    """
    t0 = time.perf_counter()
    if isinstance(soma, type):
        require(issubclass(soma, Soma), "soma", soma, "a soma class or instance")
        soma = soma(units=1, dt=recording.dt)
    require(isinstance(soma, Soma), "soma", soma, "a soma class or instance")
    require(isinstance(recording, Recording), "recording", type(recording).__name__,
            "a spark_somas.fitting.Recording")
    require(_same_dt(soma.dt, recording.dt), "dt", soma.dt,
            f"the soma's step equals the recording's sampling interval ({recording.dt} ms)")
    fields = (fields,) if isinstance(fields, str) else tuple(fields)
    known = [f.name for f in soma.config_class.quantity_fields()]
    require(len(fields) > 0, "fields", fields, "at least one field to fit")
    for name in fields:
        require(name in known, "fields", name,
                f"a numeric config field of {soma.config_class.__name__}: one of {known}")
    require(len(set(fields)) == len(fields), "fields", fields, "each field once")
    params = soma.parameters()
    for name, value in params.items():
        require(np.size(value) == 1 or np.ptp(np.asarray(value)) == 0, name,
                f"an array of shape {np.shape(value)}",
                "one value (a fit is of one cell; use starts for several starting points)")
    bounds = _bounds(bounds, fields)
    if stages is None:
        forced = recording.potential is not None and recording.spike_times is not None
        stages = forced_recipe(fields) if forced else recipe(fields, soma=soma)
    stages = tuple(stages)
    require(len(stages) > 0, "stages", stages, "at least one stage")
    picks = []
    for k, stage in enumerate(stages):
        require(isinstance(stage, Stage), f"stages[{k}]", stage, "a Stage")
        for name in stage.fields:
            require(name in fields, f"stages[{k}].fields", name, f"one of the fields {fields}")
        pick = stage.pick(recording)
        require(len(pick) > 0, f"stages[{k}].sweeps", stage.sweeps,
                "selects at least one sweep of the recording")
        for j in pick:
            require(0 <= j < recording.n_sweeps, f"stages[{k}].sweeps", j,
                    f"0 ≤ index < {recording.n_sweeps}")
        _check_targets(stage.loss, recording.select(pick), f"stages[{k}]")
        if stage.spikes == "recorded":
            require(recording.spike_times is not None, f"stages[{k}].spikes", stage.spikes,
                    "known spike times in the recording, to reset the model at them")
        picks.append(pick)
    held_out = recording if held_out is None else held_out
    require(isinstance(held_out, Recording), "held_out", type(held_out).__name__,
            "a spark_somas.fitting.Recording")
    require(_same_dt(held_out.dt, recording.dt), "held_out.dt", held_out.dt,
            f"the recording's sampling interval, {recording.dt:g} ms")
    if selection is None:
        judges = _judges(stages, held_out)
    else:
        _check_targets(selection, held_out, "selection")
        judges = [(selection, held_out)]

    guess = {n: float(f"{float(np.asarray(params[n]).ravel()[0]):.7g}") for n in fields}
    boxes = _boxes(soma, fields, bounds, guess)
    count = _start_count(starts)
    graph, fixed = _template(soma, fields)
    boxes_key = tuple(sorted(boxes.items()))
    # The optimizer works in at least float32 (optax's line search keeps
    # its state in float32); the soma runs in its own dtypes.
    dtype = jnp.promote_types(soma.param_dtype, jnp.float32)
    with allocating(*_footprint(soma, recording, count, dtype)):
        u0 = _initial(boxes, fields, guess, starts if isinstance(starts, Mapping) else count,
                      seed)
        u = {n: jnp.asarray(v, dtype) for n, v in u0.items()}
        u, history, evaluations = _run_stages(u, fixed, recording, stages, picks, graph=graph,
                                              boxes=boxes_key)
        losses = _selection_losses(u, fixed, judges, graph=graph, boxes=boxes_key,
                                   dt=recording.dt)
    best = int(np.argmin(losses))
    x = {n: np.asarray(boxes[n].to_x(v), np.float64) for n, v in u.items()}
    return FitResult(
        params={n: float(v[best]) for n, v in x.items()}, starts=x,
        initial={n: np.asarray(boxes[n].to_x(jnp.asarray(v, dtype)), np.float64)
                 for n, v in u0.items()},
        best=best, held_out_loss=losses, history=tuple(history), evaluations=evaluations,
        stages=stages, wall_s=time.perf_counter() - t0, soma=soma)


def _start_count(starts: int | Mapping[str, Any]) -> int:
    """K, the number of starts: ``starts`` itself, checked, when it is one;
    the length of the longest of its arrays when it maps fields to initial
    values (which :func:`_initial` checks)."""
    if isinstance(starts, Mapping):
        return max((int(np.size(v)) for v in starts.values()), default=0)
    return _number(starts, "starts", lambda k: k >= 1, "an int ≥ 1 or field -> initial values",
                   integer=True)


def _footprint(soma: Soma, recording: Recording, count: int, dtype: Any) -> tuple[str, float]:
    """What a fit of ``count`` starts allocates and about how many bytes, for
    :func:`~spark_somas.errors.allocating`: every start runs every sweep at
    once, and its gradient keeps each step's state (the stored variables and
    the input, forward and backward) in ``dtype``."""
    steps = max(recording.lengths)
    per_sample = 2 * (len(soma.stored_names) + 1) * jnp.dtype(dtype).itemsize
    return (f"fit_soma: starts = {count} ({recording.n_sweeps} sweeps of up to {steps} steps "
            f"each)", float(count) * recording.n_sweeps * steps * per_sample)


def _run_stages(u: dict[str, Array], fixed: Any, recording: Recording, stages: Sequence[Stage],
                picks: Sequence[Sequence[int]], *, graph: Any,
                boxes: tuple) -> tuple[dict[str, Array], list[np.ndarray], int]:
    """Every stage in turn on its sweeps, for every start at once; returns
    the final u, each stage's loss history (K, steps) and the most loss
    evaluations any start made."""
    history, evaluations = [], 0
    for stage, pick in zip(stages, picks):
        data = {k: jnp.asarray(v) for k, v in recording.select(pick).arrays().items()}
        u_fit = {n: u[n] for n in stage.fields}
        u_rest = {n: v for n, v in u.items() if n not in stage.fields}
        u_fit, h, evals = _fit_stage(u_fit, u_rest, fixed, data, graph=graph, stage=stage,
                                     boxes=boxes, dt=recording.dt)
        u = {**u, **u_fit}
        history.append(np.asarray(h).T)
        evaluations += int(np.max(evals))
    return u, history, evaluations


def _selection_losses(u: dict[str, Array], fixed: Any, judges: Sequence[tuple[Loss, Recording]],
                      *, graph: Any, boxes: tuple, dt: float) -> np.ndarray:
    """Each start's selection loss (K,): the judges' losses, each relative to
    the best start's when there are several, summed; inf where not finite."""
    losses = np.zeros(len(next(iter(u.values()))))
    for loss, sweeps in judges:
        data = {k: jnp.asarray(v) for k, v in sweeps.arrays().items()}
        value = np.asarray(_losses(u, fixed, data, graph=graph, loss=loss, boxes=boxes, dt=dt),
                           np.float64)
        value = np.where(np.isfinite(value), value, np.inf)
        # Each stage's loss relative to the best start's, so that every stage
        # counts alike whatever its units and scale.
        losses += value / max(np.min(value), 1e-12) if len(judges) > 1 else value
    return losses


def _bounds(bounds: Any, fields: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """``bounds`` checked: a mapping of fitted fields to pairs of real numbers."""
    require(bounds is None or isinstance(bounds, Mapping), "bounds", bounds,
            "None or a dict field -> (low, high)")
    rule = "a pair (low, high) of real numbers in the field's unit"
    out = {}
    for name, pair in (bounds or {}).items():
        require(name in fields, "bounds", name, f"a field being fitted, one of {fields}")
        where = f"bounds[{name!r}]"
        try:
            out[name] = tuple(configs.as_number(x, where) for x in _sequence(pair, where, rule))
        except ValueError:  # no sequence, or no number in it
            out[name] = ()
        require(len(out[name]) == 2, where, pair, rule)
    return out


def _judges(stages: Sequence[Stage], held_out: Recording) -> list[tuple[Loss, Recording]]:
    """What chooses among the starts by default: each stage's :func:`_judge`
    on the held-out sweeps of its kind (all of them for a stage given sweep
    indices, which index the training recording). A stage with no sweep of
    its kind there is not judged; a held-out recording on which no stage can
    be judged is refused, since it could not tell the starts apart."""
    judges = []
    for k, stage in enumerate(stages):
        pick = (tuple(range(held_out.n_sweeps)) if not isinstance(stage.sweeps, str)
                else stage.pick(held_out))
        if pick:
            judge = _judge(stage)
            _check_targets(judge, held_out.select(pick), f"held_out (stages[{k}])")
            judges.append((judge, held_out.select(pick)))
    counts = held_out.spike_counts()
    kinds = sorted({s.sweeps for s in stages if isinstance(s.sweeps, str)})
    require(judges, "held_out", f"{held_out.n_sweeps} sweep(s), "
            f"{0 if counts is None else int(np.sum(counts > 0))} with spikes",
            f"at least one sweep of a kind the stages fit ({', '.join(kinds)}), to judge "
            "the starts on")
    return judges


def _judge(stage: Stage) -> Loss:
    """The loss that judges a start by ``stage`` on held-out sweeps, where
    the model runs free: the stage's own, and for a forced stage its loss
    plus the spike count and the van Rossum distance, since a free run's
    potential alone rewards a model whose spikes are missing."""
    if stage.spikes == "model":
        return stage.loss
    return dataclasses.replace(stage.loss, count=1.0, van_rossum=1.0)


def _check_targets(loss: Loss, recording: Recording, where: str) -> None:
    if loss.potential:
        require(recording.potential is not None
                and any(np.isfinite(v).any() for v in recording.potential),
                f"{where}: potential", "all NaN" if recording.potential else None,
                "at least one recorded (non-NaN) sample on the sweeps a potential loss uses")
    if loss.uses_spikes:
        require(recording.spike_times is not None, f"{where}: spike_times", None,
                "known spike times on the sweeps a spike loss uses")


def _initial(boxes: Mapping[str, _Box], fields: tuple[str, ...], guess: Mapping[str, float],
             starts: int | Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Every start's u, (K,) per field: K = ``starts`` (checked by
    :func:`_start_count`), or the initial values it maps fields to."""
    if isinstance(starts, Mapping):
        values = {n: np.atleast_1d(np.asarray(v, np.float64)) for n, v in starts.items()}
        require(set(values) == set(fields), "starts", sorted(values),
                f"initial values for exactly the fitted fields {sorted(fields)}")
        sizes = {v.shape for v in values.values()}
        require(len(sizes) == 1 and len(next(iter(sizes))) == 1, "starts",
                {n: v.shape for n, v in values.items()}, "one (K,) array per field, same K")
        for n, v in values.items():
            b = boxes[n]
            require(np.all((v >= b.lo) & (v <= b.hi)), f"starts[{n!r}]", v.tolist(),
                    f"inside the bounds ({b.lo:g}, {b.hi:g})")
        return {n: boxes[n].to_u(values[n]) for n in fields}
    rng = np.random.default_rng(seed)
    out = {}
    for n in fields:
        b = boxes[n]
        u = np.empty(starts)
        u[0] = b.to_u(guess[n])
        if b.kind in ("sigmoid", "log_sigmoid"):
            frac = rng.uniform(0.02, 0.98, starts - 1)
            u[1:] = np.log(frac / (1 - frac))
        else:
            u[1:] = u[0] + rng.uniform(-0.5, 0.5, starts - 1)
        lo, hi = b.u_range()
        out[n] = np.clip(u, lo, hi)
    return out


def coincidence_factor(model: np.ndarray, data: np.ndarray, duration: float, *,
                       delta: float = 4.0) -> float:
    """Γ, the spike-coincidence factor of Jolivet et al. (2008), J.
    Neurosci. Methods 169:417, with precision ``delta`` (ms):

    .. math:: Γ = \\frac{N_{coinc} - ⟨N_{coinc}⟩}{\\tfrac12 (N_{data} + N_{model})}
       \\cdot \\frac{1}{1 - 2 ν Δ},\\qquad ⟨N_{coinc}⟩ = 2 ν Δ N_{data}

    N_coinc counts the data spikes with a model spike within ±Δ, each model
    spike matched at most once (in time order, which pairs as many as any
    matching can); ν = N_model/``duration`` is the model's rate (1/ms).
    Γ = 1 for identical trains and about 0 (to first order in νΔ) for a
    Poisson train independent of the data. Times in ms, each train a 1-D
    array of finite times.

    NaN where Γ is undefined: when neither train has a spike, and when the
    normalisation N = 1 − 2νΔ is ≤ 0 (the model fires at ν ≥ 1/(2Δ), so
    often that chance alone would match every data spike) unless the trains
    are identical, which score 1.
    """
    model, data = _train(model, "model"), _train(data, "data")
    duration = _number(duration, "duration", lambda d: math.isfinite(d) and d > 0,
                       "the recording's length in ms, finite and > 0")
    delta = _number(delta, "delta", lambda d: math.isfinite(d) and d > 0,
                    "a precision in ms, finite and > 0")
    if len(model) + len(data) == 0:
        return float("nan")
    if np.array_equal(model, data):
        return 1.0
    coinc, j = 0, 0
    for t in data:
        while j < len(model) and model[j] < t - delta:
            j += 1
        if j < len(model) and model[j] <= t + delta:
            coinc += 1
            j += 1
    rate = len(model) / duration
    norm = 1 - 2 * rate * delta
    if norm <= 0:
        return float("nan")
    expected = 2 * rate * delta * len(data)
    return float((coinc - expected) / (0.5 * (len(data) + len(model))) / norm)


def _train(times: Any, name: str) -> np.ndarray:
    """A spike train, sorted: a 1-D array of finite real times (ms)."""
    arr = _real(times, name)
    require_shape(arr.ndim == 1, name, arr.shape, "one train: a 1-D array of spike times (ms)",
                  error=configs.ConfigError)
    finite = np.isfinite(arr)
    if not finite.all():
        i = int(np.argmin(finite))
        require(False, f"{name}[{i}]", float(arr[i]), "a finite spike time (ms)")
    return np.sort(arr)


def explained_variance(model: np.ndarray, data: np.ndarray, *,
                       model_spikes: np.ndarray | None = None,
                       data_spikes: np.ndarray | None = None, dt: float = 0.1,
                       window: tuple[float, float] = (2.0, 5.0)) -> float:
    """The fraction of the subthreshold potential's variance the model explains,

    .. math:: EV = 1 - \\frac{\\mathrm{Var}(V_{data} - V_{model})}{\\mathrm{Var}(V_{data})},

    over the samples (steps of ``dt`` ms) where the data were recorded (not
    NaN) and that lie outside [t − window[0], t + window[1]] ms of every
    spike of either train (times in ms): the spike and the reset are not
    subthreshold, and one spike a step apart would otherwise dominate. 1 is
    a perfect prediction, 0 no better than the mean.
    """
    model = np.asarray(model, np.float64)
    data = np.asarray(data, np.float64)
    require(model.shape == data.shape, "model", f"shape {model.shape}",
            f"the data's shape {data.shape}")
    keep = np.isfinite(data)
    t = np.arange(len(data)) * dt
    for spikes in (model_spikes, data_spikes):
        for s in ([] if spikes is None else np.asarray(spikes)):
            keep &= ~((t >= s - window[0]) & (t <= s + window[1]))
    require(keep.sum() >= 2, "data", f"{int(keep.sum())} subthreshold samples",
            "at least two recorded samples away from spikes")
    return float(1.0 - np.var(data[keep] - model[keep]) / np.var(data[keep]))


def relative_errors(fitted: Mapping[str, float], truth: Mapping[str, float]) -> dict[str, float]:
    """(fitted − true)/abs(true) per field of ``fitted``; where the true value
    is 0, the absolute error (in the field's unit) instead."""
    out = {}
    for name, value in fitted.items():
        require(name in truth, "truth", sorted(truth), f"a value for every fitted field ({name})")
        t = float(truth[name])
        out[name] = (float(value) - t) / abs(t) if t != 0 else float(value) - t
    return out
