"""A second oracle: the four models as one plain NumPy loop in float64.

Written from the model equations (docs/models.md), not from ``spark_somas``:
forward Euler with step dt (ms), input I (pA), units mV, ms, pA, GΩ, nS.

    V_new = V + dt/τ_m · ( −(V − E_L) + Δ_T·exp((V − V_T − θ)/Δ_T) − R·w + R·I )
    w_new = w + dt/τ_w · ( a·(V − E_L) − w )             (V before this step)
    spike = V_new > V_th + θ   →   V ← V_r,  w ← w_new + b
    θ     ← θ·exp(−dt/τ_θ) + Δθ·spike

w = 0 except for AdEx, θ = 0 except for the simplified model. Refractoriness
is kept the way Brian2 keeps it (``not_refractory = timestep(t − lastspike)
>= timestep(t_ref)``), by remembering the step of the last spike rather than
by a countdown, so the somas' counter is checked against a different
formulation: a step k with k − k_spike < n = floor(t_ref/dt + 1e-3) holds V,
ignores I and cannot spike; θ still decays on it. The exponential is not
tamed here: this is the plain equation the somas must reproduce below V_th.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

MODELS = ("expif", "refractory", "adex", "simplified")


def simulate(
    model: str,
    params: Mapping[str, object],
    currents: np.ndarray,
    dt: float,
    potential: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Runs ``model`` over time-major ``currents`` (pA), shape (T, *units).

    ``params`` maps config field names to scalars or per-neuron arrays;
    ``potential`` is the initial V (mV), E_L by default. Returns the spikes
    (0/1) and V, w, θ after each step (after any reset), each (T, *units).
    """
    if model not in MODELS:
        raise ValueError(f"model = {model!r} is not one of {MODELS}")
    currents = np.asarray(currents, np.float64)
    shape = currents.shape[1:]
    p = {k: np.broadcast_to(np.asarray(v, np.float64), shape) for k, v in params.items()
         if not isinstance(v, (dict, bool, str)) and not callable(v)}
    zero = np.zeros(shape)
    adaptive, refractory, moving_threshold = (
        model == "adex", model in ("refractory", "simplified"), model == "simplified"
    )
    v = np.array(np.broadcast_to(p["potential_rest"] if potential is None else potential, shape),
                 np.float64)
    w, theta = zero.copy(), zero.copy()
    n_ref = np.floor(p["cooldown"] / dt + 1e-3) if refractory else zero
    last_spike = np.full(shape, -np.inf)
    out = {k: np.empty(currents.shape) for k in ("spikes", "potential", "adaptation",
                                                  "threshold_offset")}
    for k, current in enumerate(currents):
        runaway = p["spike_slope"] * np.exp(
            (v - p["rheobase_threshold"] - theta) / p["spike_slope"])
        r_w = p["resistance"] * w if adaptive else zero
        v_new = v + dt / p["potential_tau"] * (
            -(v - p["potential_rest"]) + runaway - r_w + p["resistance"] * current)
        if adaptive:
            w = w + dt / p["adaptation_tau"] * (
                p["adaptation_subthreshold"] * (v - p["potential_rest"]) - w)
        free = (k - last_spike) >= n_ref
        v_new = np.where(free, v_new, v)
        spikes = free & (v_new > p["threshold"] + theta)
        v = np.where(spikes, p["potential_reset"], v_new)
        if adaptive:
            w = w + p["adaptation_delta"] * spikes
        if moving_threshold:
            theta = theta * np.exp(-dt / p["threshold_tau"]) + p["threshold_delta"] * spikes
        last_spike = np.where(spikes, k, last_spike)
        for name, value in (("spikes", spikes), ("potential", v), ("adaptation", w),
                            ("threshold_offset", theta)):
            out[name][k] = value
    return out
