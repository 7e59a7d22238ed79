"""How good a fit is, as the field measures it: the spike-coincidence factor
Γ, the fraction of the recorded spikes predicted, the explained variance of
the subthreshold potential, and the relative errors against known
parameters."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from spark_somas.errors import require_shape
from spark_somas.models import configs
from spark_somas.models.configs import require
from spark_somas.fitting.recording import checked_number, real_array

__all__ = ["coincidence_factor", "predicted_fraction", "explained_variance", "relative_errors"]


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
    duration = checked_number(duration, "duration", lambda d: math.isfinite(d) and d > 0,
                              "the recording's length in ms, finite and > 0")
    delta = checked_number(delta, "delta", lambda d: math.isfinite(d) and d > 0,
                           "a precision in ms, finite and > 0")
    if len(model) + len(data) == 0:
        return float("nan")
    if np.array_equal(model, data):
        return 1.0
    coinc = _coincidences(model, data, delta)
    rate = len(model) / duration
    norm = 1 - 2 * rate * delta
    if norm <= 0:
        return float("nan")
    expected = 2 * rate * delta * len(data)
    return float((coinc - expected) / (0.5 * (len(data) + len(model))) / norm)


def _coincidences(model: np.ndarray, data: np.ndarray, delta: float) -> int:
    """The data spikes with a model spike within ±``delta`` ms, each model
    spike matched at most once (sorted trains, matched in time order)."""
    coinc, j = 0, 0
    for t in data:
        while j < len(model) and model[j] < t - delta:
            j += 1
        if j < len(model) and model[j] <= t + delta:
            coinc += 1
            j += 1
    return coinc


def predicted_fraction(model: np.ndarray, data: np.ndarray, *, delta: float = 2.0) -> float:
    """The fraction of the ``data`` spikes (ms) that the ``model`` train
    predicts within ±``delta`` ms, each model spike used once (the hit rate
    of Jolivet et al. 2008); NaN when the data have no spike. Unlike Γ it
    does not punish extra model spikes: read it with the two rates."""
    model, data = _train(model, "model"), _train(data, "data")
    delta = checked_number(delta, "delta", lambda d: math.isfinite(d) and d > 0,
                           "a precision in ms, finite and > 0")
    return float("nan") if len(data) == 0 else _coincidences(model, data, delta) / len(data)


def _train(times: Any, name: str) -> np.ndarray:
    """A spike train, sorted: a 1-D array of finite real times (ms)."""
    arr = real_array(times, name)
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
