"""Matplotlib helpers for somas: voltage traces, rasters, f–I curves, AdEx phase planes.

Each function draws on ``ax`` when given (else on a new figure) and returns
``(fig, ax)``; none calls ``plt.show()``. Times are in ms, potentials in mV,
currents and adaptation in pA, rates in Hz.
"""

from __future__ import annotations

import types
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from spark_somas.models.configs import AdaptiveExponentialSomaConfig
from spark_somas.errors import RuleError, require, violation
from spark_somas.simulation.driver import simulate
from spark_somas.dynamics import integrators
from spark_somas.models.somas import AdaptiveExponentialSoma, ExponentialSoma, StepOptions

__all__ = ["voltage_trace", "raster", "firing_rates", "fi_curve", "nullclines", "phase_plane"]


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is None:
        return plt.subplots(figsize=figsize, layout="constrained")
    return ax.figure, ax


def voltage_trace(
    potential: Any,
    spikes: Any = None,
    *,
    dt: float = 0.1,
    start_ms: float = 0.0,
    peak: float = 0.0,
    ax: Axes | None = None,
    label: str | None = None,
    color: Any = None,
) -> tuple[Figure, Axes]:
    """One neuron's V(t) with its spikes drawn as strokes up to ``peak`` mV.

    ``potential`` (T,) is what :func:`spark_somas.simulate` records: V after
    any reset, so a spike step shows V_r. A stroke from that step's value up
    to ``peak`` marks each step where ``spikes`` (T,) is 1, the way Brian2's
    examples draw spikes. Step k is drawn at ``start_ms + k·dt``.
    """
    v = np.asarray(potential, np.float64).reshape(-1)
    t = start_ms + np.arange(len(v)) * dt
    fig, ax = _axes(ax, (7, 2.5))
    (line,) = ax.plot(t, v, lw=1, label=label, color=color)
    if spikes is not None:
        s = np.asarray(spikes).reshape(-1) > 0
        if s.shape != v.shape:
            raise RuleError(f"spikes of shape {s.shape} must match potential of shape {v.shape}")
        ax.vlines(t[s], v[s], peak, color=line.get_color(), lw=1)
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("V (mV)")
    return fig, ax


def raster(
    spikes: Any, *, dt: float = 0.1, ax: Axes | None = None, color: Any = "k",
    neurons: Sequence[int] | None = None,
) -> tuple[Figure, Axes]:
    """Spike raster of a (T, N) 0/1 array (or ``(T, *units)``, flattened to N rows).

    ``neurons`` picks rows to show (default: all). One tick per spike.
    """
    s = np.asarray(spikes)
    s = s.reshape(s.shape[0], -1)
    rows = range(s.shape[1]) if neurons is None else neurons
    fig, ax = _axes(ax, (7, 3))
    ax.eventplot([np.nonzero(s[:, i])[0] * dt for i in rows], colors=color, linewidths=0.8)
    ax.set_xlim(0, s.shape[0] * dt)
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("neuron")
    return fig, ax


def firing_rates(
    soma: ExponentialSoma, currents_pA: Any, *, duration_ms: float = 500.0,
    transient_ms: float = 0.0,
) -> np.ndarray:
    """Firing rate (Hz) under each constant current, all in one simulation.

    Runs ``soma`` from rest with a batch of constant currents (one batch
    entry per current, every unit receiving it) for ``duration_ms`` and
    counts the spikes after ``transient_ms``. Returns shape ``(B, *units)``.
    The soma's own state is left as it was.
    """
    currents = np.asarray(currents_pA, np.float32).reshape(-1)
    require(0.0 <= transient_ms < duration_ms, "transient_ms", transient_ms,
            f"0 <= transient_ms < duration_ms = {duration_ms}", error=RuleError)
    steps, skip = int(round(duration_ms / soma.dt)), int(round(transient_ms / soma.dt))
    saved = soma.neuron_state()
    soma.reset((len(currents),))
    drive = jnp.broadcast_to(
        jnp.asarray(currents, soma.dtype).reshape((1, -1) + (1,) * len(soma.units)),
        (steps, len(currents)) + soma.units,
    )
    rec = simulate(soma, drive, record=("spikes",))
    for name, value in saved.items():
        getattr(soma, name).set_value(value)
    counts = np.asarray(rec.spikes[skip:], np.float64).sum(0)
    return counts / ((steps - skip) * soma.dt / 1000.0)


def fi_curve(
    soma: ExponentialSoma, currents_pA: Any, *, duration_ms: float = 500.0,
    transient_ms: float = 0.0, ax: Axes | None = None, label: str | None = None,
) -> tuple[Figure, Axes]:
    """The f–I curve: firing rate (Hz) against constant current (pA).

    Rates come from :func:`firing_rates` (one batched :func:`spark_somas.simulate`);
    with several units, one curve per unit.
    """
    currents = np.asarray(currents_pA, np.float64).reshape(-1)
    rates = firing_rates(soma, currents, duration_ms=duration_ms, transient_ms=transient_ms)
    fig, ax = _axes(ax, (4, 3))
    ax.plot(currents, rates.reshape(len(currents), -1), marker=".", label=label)
    ax.set_xlabel("I (pA)")
    ax.set_ylabel("rate (Hz)")
    return fig, ax


def _adex_parameters(model: Any, neuron: int) -> Mapping[str, float]:
    if isinstance(model, AdaptiveExponentialSoma):
        values = model.parameters()
    elif isinstance(model, AdaptiveExponentialSomaConfig):
        values = {f.name: getattr(model, f.name) for f in model.quantity_fields()}
        if any(callable(v) for v in values.values()):
            raise RuleError("phase_plane needs a config with numbers, not initializers")
    else:
        raise RuleError(violation(
            f"model = {type(model).__name__}", "an AdaptiveExponentialSoma or an "
            "AdaptiveExponentialSomaConfig (the (V, w) plane is AdEx's)"))
    return {k: float(np.asarray(v, np.float64).reshape(-1)[neuron if np.size(v) > 1 else 0])
            for k, v in values.items()}


def nullclines(model: Any, current_pA: float, v: Any, *, neuron: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The AdEx nullclines at potentials ``v`` (mV), in pA, from the soma's own
    drives (:meth:`AdaptiveExponentialSoma.drives`, F_V and F_w at w = 0):

    dV/dt = 0:  w = F_V(V, w=0)/R = ( -(V - E_L) + Δ_T exp((V - V_T)/Δ_T) ) / R + I
    dw/dt = 0:  w = F_w(V, w=0)   = a (V - E_L)

    ``model`` is an AdEx config or soma (``neuron`` picks one of a
    population's neurons).
    """
    p = types.SimpleNamespace(**_adex_parameters(model, neuron))
    v = np.asarray(v, np.float64)
    no_cap = integrators.Evaluation({"potential": 0.0}, 1.0)  # a zero step: e^u is never capped
    drives = AdaptiveExponentialSoma.drives(
        p, {"potential": v, "adaptation": np.zeros_like(v)}, np.asarray(current_pA, np.float64),
        no_cap, StepOptions(dt=1.0))
    return (np.asarray(drives["potential"], np.float64) / p.resistance,
            np.asarray(drives["adaptation"], np.float64))


def phase_plane(
    model: Any, current_pA: float, *, potential: Any = None, adaptation: Any = None,
    v_range: tuple[float, float] | None = None, neuron: int = 0, ax: Axes | None = None,
) -> tuple[Figure, Axes]:
    """The AdEx (V, w) phase plane under a constant current: both nullclines,
    the reset line V = V_r and, when given, a recorded trajectory.

    ``potential`` and ``adaptation`` (T,) are a run's V (mV) and w (pA),
    e.g. ``simulate(..., record=("spikes", "potential", "adaptation"))``;
    each spike shows as a jump to V_r with w raised by b. ``v_range``
    defaults to [min(E_L, V_r) - 10, V_T + 3 Δ_T], where the V-nullcline
    turns up steeply.
    """
    p = _adex_parameters(model, neuron)
    lo = min(p["potential_rest"], p["potential_reset"]) - 10.0
    hi = p["rheobase_threshold"] + 3.0 * p["spike_slope"]
    v0, v1 = v_range if v_range is not None else (lo, hi)
    v = np.linspace(v0, v1, 400)
    w_v, w_w = nullclines(model, current_pA, v, neuron=neuron)
    fig, ax = _axes(ax, (5, 4))
    ax.plot(v, w_v, color="C0", label="dV/dt = 0")
    ax.plot(v, w_w, color="C1", label="dw/dt = 0")
    ax.axvline(p["potential_reset"], color="0.6", ls="--", lw=1, label="V_r")
    if potential is not None:
        if adaptation is None:
            raise RuleError("phase_plane: potential given without adaptation (record both)")
        vt, wt = (np.asarray(x, np.float64).reshape(-1) for x in (potential, adaptation))
        ax.plot(vt, wt, color="k", lw=0.8, label="trajectory")
        w_all = np.concatenate([wt, w_w])
        pad = 0.1 * (w_all.max() - w_all.min() + 1.0)
        ax.set_ylim(w_all.min() - pad, w_all.max() + pad)
    ax.set_xlim(v0, v1)
    ax.set_xlabel("V (mV)")
    ax.set_ylabel("w (pA)")
    ax.legend(loc="upper left", fontsize="small")
    return fig, ax
