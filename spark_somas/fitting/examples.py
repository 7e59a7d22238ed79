"""A recording the package did not make, shipped with it: a detailed
conductance-based cell to fit reduced models to and to judge them on.

``pospischil_rs.npz`` (in :mod:`spark_somas.data`) holds the regular-spiking
cortical cell of Pospischil et al. (2008), Biol. Cybern. 99:427 — one
compartment with Hodgkin–Huxley fast Na⁺, delayed-rectifier K⁺ and the slow
M-type K⁺ current — simulated in Brian2 (exponential Euler, dt = 0.025 ms)
under Ornstein–Uhlenbeck currents (τ = 5 ms, one mean and standard deviation
per sweep, 95–200 pA and 35–70 pA), sampled every 0.1 ms with 0.5 mV of
noise on the potential; spikes are upward crossings of 0 mV. Sweeps of 1 s:
4 to fit (``"train"``), 2 to choose among starts (``"validation"``), 4 to
judge (``"test"``, other seeds and levels). The repository's benchmark
script of cells wrote it, with the same seeds and levels as the 2 s sweeps
of its fitting benchmark.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from spark_somas.models.configs import require
from spark_somas.fitting.recording import Recording

__all__ = ["pospischil_rs", "SPLITS"]

#: The sweeps of the shipped recording: to fit, to choose a start, to judge.
SPLITS = ("train", "validation", "test")


def pospischil_rs(split: str = "train", *, potential: bool = True,
                  blank: tuple[float, float] = (1.0, 3.0)) -> Recording:
    """One split of the shipped regular-spiking cell as a :class:`Recording`
    (dt = 0.1 ms; currents pA, potential mV, spike times ms).

    Args:
      split: ``"train"``, ``"validation"`` or ``"test"``.
      potential: with the membrane potential; False gives the spike times
        only.
      blank: (before, after) in ms: the potential is NaN from ``before`` ms
        before each spike to ``after`` ms after it — the spike's waveform,
        which an integrate-and-fire model does not have.
    """
    require(split in SPLITS, "split", split, f"one of {SPLITS}")
    require(len(blank) == 2 and all(np.isfinite(b) and b >= 0 for b in blank), "blank", blank,
            "(before, after): two durations in ms, finite and ≥ 0")
    source = resources.files("spark_somas.data").joinpath("pospischil_rs.npz")
    with resources.as_file(source) as path, np.load(path) as f:
        dt = float(f["dt"])
        currents = f[f"{split}_currents"].astype(np.float64)
        voltage = f[f"{split}_potential"].astype(np.float64)
        counts = f[f"{split}_spike_counts"]
        times = np.split(f[f"{split}_spike_times"].astype(np.float64), np.cumsum(counts)[:-1])
    if not potential:
        return Recording(list(currents), dt, spike_times=times)
    t = np.arange(voltage.shape[1]) * dt
    for v, spikes in zip(voltage, times):
        for s in spikes:
            v[(t >= s - blank[0]) & (t <= s + blank[1])] = np.nan
    return Recording(list(currents), dt, potential=list(voltage), spike_times=times)
