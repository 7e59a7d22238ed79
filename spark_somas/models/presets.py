"""Published AdEx parameter sets, ready to run, and a firing-pattern classifier.

Naud, Marcille, Clopath & Gerstner (2008), "Firing patterns in the adaptive
exponential integrate-and-fire model", Biol. Cybern. 99:335–347, Table 1,
give eight parameter sets and the step current that makes each one show the
pattern of their Fig. 4; Brette & Gerstner (2005), J. Neurophysiol.
94:3637–3642, give the pyramidal cell that is the package's default. Both
papers write the model as

    C dV/dt = -g_L (V - E_L) + g_L Δ_T exp((V - V_T)/Δ_T) - w + I
    τ_w dw/dt = a (V - E_L) - w,       V > V_th ⇒ V ← V_r, w ← w + b

with C (pF), g_L (nS), a (nS), b (pA), τ_w (ms), potentials (mV), I (pA).
Dividing by g_L gives the package's form: τ_m = C/g_L (ms, since
pF/nS = ms) and R = 1/g_L (GΩ), so that R·I and R·w are in mV.

**Which numbers.** The eight rows are Table 1 as Brian2's example
``examples/frompapers/Naud_et_al_2008_adex_firing_patterns.py`` (Schmitt &
Billaudelle 2022) gives them, with the values P. Müller adapted so that the
simulations match the paper's Fig. 4. ANNarchy's reproduction agrees on rows
a–e and h but not on f (delayed regular bursting: 200 pF, 12 nS, -70 mV, a =
-6 nS, 300 ms, b = 0, V_r = -58 mV, 110 pA) and g (transient: a = -10 nS, b
= 30 pA, 350 pA); run here, those give no spike in 1 s and sustained firing
at about 160 Hz, so we keep Brian2's rows, which show the named patterns
(the package's tests check all nine).

**Spike cut-off.** The cut-off is a numerical choice, not one of the model's
parameters: the paper's analysis treats a spike as the divergence of V in
finite time. We cut at V_th = 0 mV for the Naud et al. sets, as Brian2's
reproduction does: there the exponential term is e^{25} times Δ_T, so the
time left to the divergence, and the w accumulated in it, is negligible, and
V_th > V_T holds by 50 mV. A lower cut-off changes the dynamics measurably:
at V_T + 5Δ_T the irregular set falls into a cycle of five ISIs within 600
ms. The Brette–Gerstner set keeps V_T + 5Δ_T = -40.4 mV, the cut-off of
Brian2's example of that paper and the package's default config.

Every preset starts at rest (V = E_L, w = 0) with its step current switched
on at t = 0, the protocol of Naud et al.'s Fig. 4 and of Brian2's example.

Usage::

    p = presets.get("regular_bursting")
    rec = ss.simulate(p.soma(), p.currents()[:, None])
    presets.classify(presets.spike_times(rec.spikes[:, 0]), p.duration_ms)  # "bursting"
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from spark_somas.models.configs import AdaptiveExponentialSomaConfig
from spark_somas.errors import RuleError, require
from spark_somas.models.somas import AdaptiveExponentialSoma

__all__ = [
    "Preset", "PRESETS", "PATTERNS", "get", "stack", "adex_config", "spike_times",
    "SpikeTrainFeatures", "features", "classify", "adaptation_index", "NAUD_2008",
    "BRETTE_GERSTNER_2005",
]

NAUD_2008 = (
    "Naud, Marcille, Clopath & Gerstner (2008), Firing patterns in the adaptive "
    "exponential integrate-and-fire model, Biol. Cybern. 99:335-347, Table 1"
)
BRETTE_GERSTNER_2005 = (
    "Brette & Gerstner (2005), Adaptive exponential integrate-and-fire model as an "
    "effective description of neuronal activity, J. Neurophysiol. 94:3637-3642"
)

NAUD_CUTOFF_MV = 0.0


def adex_config(
    *, C: float, g_L: float, E_L: float, V_T: float, Delta_T: float, a: float, tau_w: float,
    b: float, V_r: float, V_th: float,
) -> AdaptiveExponentialSomaConfig:
    """An AdEx config from the published parameterisation.

    Args are in the papers' units: C (pF), g_L (nS), a (nS), b (pA), τ_w (ms),
    potentials (mV). Returns τ_m = C/g_L (ms) and R = 1/g_L (GΩ); the rest
    carries over unchanged.
    """
    return AdaptiveExponentialSomaConfig(
        potential_rest=E_L, potential_reset=V_r, potential_tau=C / g_L, resistance=1.0 / g_L,
        threshold=V_th, rheobase_threshold=V_T, spike_slope=Delta_T,
        adaptation_tau=tau_w, adaptation_delta=b, adaptation_subthreshold=a,
    )


@dataclasses.dataclass(frozen=True)
class Preset:
    """A published AdEx parameter set with the step current that shows its pattern.

    Attributes:
      name: key in :data:`PRESETS`.
      pattern: the firing pattern the source reports for this set and current.
      config: the soma config, in the package's units.
      current_pA: amplitude of the step current (pA), on from t = 0.
      duration_ms: how long to run to see the pattern (ms).
      source: the paper (and table/figure) the numbers come from.
      published: the numbers as published (C pF, g_L nS, potentials mV, a nS,
        τ_w ms, b pA, I pA), for display and cross-checks.
    """

    name: str
    pattern: str
    config: AdaptiveExponentialSomaConfig
    current_pA: float
    duration_ms: float
    source: str
    published: Mapping[str, float]

    def steps(self, dt: float = 0.1) -> int:
        """Number of time steps of ``dt`` ms in ``duration_ms``."""
        return int(round(self.duration_ms / dt))

    def currents(self, dt: float = 0.1, duration_ms: float | None = None) -> np.ndarray:
        """The step current (pA) per time step, shape (T,), float32."""
        duration = self.duration_ms if duration_ms is None else duration_ms
        return np.full(int(round(duration / dt)), self.current_pA, np.float32)

    def soma(self, units: int | tuple[int, ...] = 1, **kwargs) -> AdaptiveExponentialSoma:
        """An :class:`AdaptiveExponentialSoma` with this config (``kwargs``
        go to its constructor: ``dt``, ``dtype``, ``trainable``, overrides)."""
        return AdaptiveExponentialSoma(self.config, units=units, **kwargs)


def _naud(name: str, pattern: str, figure: str, duration_ms: float, *, C, g_L, E_L, V_T,
          Delta_T, a, tau_w, b, V_r, I) -> Preset:
    published = dict(C=C, g_L=g_L, E_L=E_L, V_T=V_T, Delta_T=Delta_T, a=a, tau_w=tau_w, b=b,
                     V_r=V_r, I=I)
    config = adex_config(C=C, g_L=g_L, E_L=E_L, V_T=V_T, Delta_T=Delta_T, a=a, tau_w=tau_w, b=b,
                         V_r=V_r, V_th=NAUD_CUTOFF_MV)
    source = f"{NAUD_2008}, Fig. {figure} (values of Brian2's reproduction, see module docstring)"
    return Preset(name, pattern, config, float(I), duration_ms, source, published)


_TABLE = (
    # name, pattern, Fig., duration (ms), then the row of Table 1 (see the module docstring).
    _naud("tonic_spiking", "tonic", "4a", 200.0, C=200, g_L=10, E_L=-70, V_T=-50, Delta_T=2,
          a=2, tau_w=30, b=0, V_r=-58, I=500),
    _naud("adaptation", "adapting", "4b", 300.0, C=200, g_L=12, E_L=-70, V_T=-50, Delta_T=2,
          a=2, tau_w=300, b=60, V_r=-58, I=500),
    _naud("initial_burst", "initial burst", "4c", 300.0, C=130, g_L=18, E_L=-58, V_T=-50,
          Delta_T=2, a=4, tau_w=150, b=120, V_r=-50, I=400),
    _naud("regular_bursting", "bursting", "4d", 600.0, C=200, g_L=10, E_L=-58, V_T=-50,
          Delta_T=2, a=2, tau_w=120, b=100, V_r=-46, I=210),
    _naud("delayed_accelerating", "delayed accelerating", "4e", 300.0, C=200, g_L=12, E_L=-70,
          V_T=-50, Delta_T=2, a=-10, tau_w=300, b=0, V_r=-58, I=300),
    _naud("delayed_regular_bursting", "delayed bursting", "4f", 450.0, C=100, g_L=10, E_L=-65,
          V_T=-50, Delta_T=2, a=-10, tau_w=90, b=30, V_r=-47, I=110),
    _naud("transient_spiking", "transient", "4g", 300.0, C=100, g_L=10, E_L=-65, V_T=-50,
          Delta_T=2, a=10, tau_w=90, b=100, V_r=-47, I=180),
    _naud("irregular_spiking", "irregular", "4h", 600.0, C=100, g_L=12, E_L=-60, V_T=-50,
          Delta_T=2, a=-11, tau_w=130, b=30, V_r=-48, I=160),
)

_BG = dict(C=281.0, g_L=30.0, E_L=-70.6, V_T=-50.4, Delta_T=2.0, a=4.0, tau_w=144.0, b=80.5,
           V_r=-70.6)

PRESETS: dict[str, Preset] = {p.name: p for p in _TABLE}
PRESETS["brette_gerstner_2005"] = Preset(
    "brette_gerstner_2005", "adapting",
    adex_config(**_BG, V_th=_BG["V_T"] + 5 * _BG["Delta_T"]),
    1000.0, 200.0, f"{BRETTE_GERSTNER_2005}; 1 nA step as in Brian2's example of the paper",
    {**_BG, "I": 1000.0},
)


def get(name: str) -> Preset:
    """The preset called ``name``; ValueError listing the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise RuleError(f"preset = {name!r} is unknown; choose one of {sorted(PRESETS)}") from None


def stack(presets: Sequence[Preset]) -> tuple[AdaptiveExponentialSomaConfig, np.ndarray]:
    """One config whose fields hold one value per preset, and their currents (pA).

    Runs several presets as one population of ``len(presets)`` neurons in a
    single :func:`spark_somas.simulate` call::

        config, current = presets.stack(list(presets.PRESETS.values()))
        soma = ss.AdaptiveExponentialSoma(config, units=len(current))
        rec = ss.simulate(soma, np.broadcast_to(current, (6000, len(current))))
    """
    require(len(presets) > 0, "presets", presets, "at least one preset", error=RuleError)
    fields = [f.name for f in AdaptiveExponentialSomaConfig.quantity_fields()]
    config = AdaptiveExponentialSomaConfig(
        **{n: np.array([getattr(p.config, n) for p in presets]) for n in fields}
    )
    return config, np.array([p.current_pA for p in presets], np.float32)


def spike_times(spikes: np.ndarray, dt: float = 0.1) -> np.ndarray:
    """Times (ms) of the steps where a recorded 0/1 spike train is 1.

    Step k (0-based) covers (k·dt, (k+1)·dt] and is reported at k·dt, as
    Brian2's SpikeMonitor reports it.
    """
    return np.nonzero(np.asarray(spikes))[0] * dt


# Classifying a spike train by its interspike intervals.

PATTERNS = (
    "silent", "transient", "tonic", "adapting", "accelerating", "initial burst", "bursting",
    "delayed", "delayed accelerating", "delayed bursting", "irregular",
)

# Why each threshold (spike times are known to ± one step dt):
TREND_RATIO = 1.2  # ISIs drift by ≥ 20%: 10× what dt-quantised times fake (2 dt/ISI at ISI ≥ 10 ms)
BURST_RATIO = 3.0  # a burst ends where the next ISI is ≥ 3× longer (or starts where it is ≤ 1/3)
DELAY_RATIO = 2.0  # first-spike latency ≥ 2 mean steady-state ISIs: charging from rest alone is faster
PERIOD_TOLERANCE = 0.1  # relative ISI mismatch allowed (plus 2 dt) when testing for a repeating cycle


def adaptation_index(isi: np.ndarray) -> float:
    """Adaptation (accommodation) index of Naud et al. (2008), after Druckmann et al. (2007):

        A = 1/(N - k - 1) · Σ_{i>k} (ISI_i - ISI_{i-1}) / (ISI_i + ISI_{i-1})

    the mean relative change between consecutive ISIs, skipping the first
    k = min(4, ⌊#ISI/5⌋) ISIs. A > 0: ISIs lengthen (adaptation); A < 0: they
    shorten (acceleration); A ≈ 0: tonic. NaN with fewer than two ISIs left.
    Each term is tanh(½ ln(ISI_i/ISI_{i-1})), so for small steps the sum,
    (N - k - 1)·A, is close to ½ ln(ISI_last/ISI_k).
    """
    terms = _index_terms(isi)
    return float(np.mean(terms)) if len(terms) else float("nan")


def _index_terms(isi: np.ndarray) -> np.ndarray:
    isi = np.asarray(isi, np.float64)
    isi = isi[min(4, len(isi) // 5):]
    return np.diff(isi) / (isi[1:] + isi[:-1])


@dataclasses.dataclass(frozen=True)
class SpikeTrainFeatures:
    """What :func:`classify` looks at, for a step current on from t = 0.

    Attributes:
      n_spikes: number of spikes.
      latency: first-spike time (ms); NaN when silent.
      silent_tail: time from the last spike to the end of the stimulus (ms).
      isi: interspike intervals (ms).
      adaptation_index: :func:`adaptation_index` A of ``isi``.
      isi_trend: (N - k - 1)·A, the index summed over its terms: about
        ½ ln(ISI_last/ISI_k), the drift of the ISIs over the whole train.
      period: length (in ISIs) of the shortest cycle that the second half of
        the ISIs repeats, within tolerance; None when no cycle repeats
        (irregular), 0 when there are too few ISIs to tell.
      mean_steady_isi: mean of the second half of the ISIs (ms).
      burst_onsets: indices i with ISI_i ≤ ISI_{i-1}/BURST_RATIO: a fast group
        starts after a pause.
      onset_burst: the first ISIs form a group ended by an ISI ≥ BURST_RATIO
        times longer.
    """

    n_spikes: int
    latency: float
    silent_tail: float
    isi: np.ndarray
    adaptation_index: float
    isi_trend: float
    period: int | None
    mean_steady_isi: float
    burst_onsets: tuple[int, ...]
    onset_burst: bool


def _period(isi: np.ndarray, dt: float) -> int | None:
    """Shortest p such that isi[i + p] ≈ isi[i] over the sequence, seen at least twice."""
    if len(isi) < 2:
        return 0
    for p in range(1, len(isi) // 2 + 1):
        a, b = isi[:-p], isi[p:]
        if np.all(np.abs(b - a) <= PERIOD_TOLERANCE * np.maximum(a, b) + 2 * dt):
            return p
    return None


def features(spike_times: np.ndarray, duration_ms: float, dt: float = 0.1) -> SpikeTrainFeatures:
    """The ISI features of a spike train (times in ms) under a step current of
    ``duration_ms`` switched on at t = 0; ``dt`` (ms) is the time resolution."""
    t = np.sort(np.asarray(spike_times, np.float64))
    isi = np.diff(t)
    steady = isi[len(isi) // 2:]
    ratios = isi[1:] / isi[:-1]
    jumps = np.nonzero(ratios >= BURST_RATIO)[0]
    return SpikeTrainFeatures(
        n_spikes=len(t),
        latency=float(t[0]) if len(t) else float("nan"),
        silent_tail=float(duration_ms - t[-1]) if len(t) else float(duration_ms),
        isi=isi,
        adaptation_index=adaptation_index(isi),
        isi_trend=float(np.sum(_index_terms(isi))),
        period=_period(steady, dt),
        mean_steady_isi=float(steady.mean()) if len(steady) else float("nan"),
        burst_onsets=tuple(int(i) + 1 for i in np.nonzero(ratios <= 1 / BURST_RATIO)[0]),
        onset_burst=bool(len(jumps)) and jumps[0] < len(isi) // 2,
    )


def classify(spike_times: np.ndarray, duration_ms: float, dt: float = 0.1) -> str:
    """The firing pattern of a spike train under a step current, one of :data:`PATTERNS`.

    Follows the two-part taxonomy of Naud et al. (2008), Sect. 3 (after the
    Petilla terminology): an onset (tonic, initial burst or delay) and a
    steady state (tonic, adapting, accelerating, bursting or irregular), read
    from the interspike intervals (ISIs):

    * silent: no spike; transient: firing stops for the second half of the
      stimulus (the state settles on a stable fixed point).
    * The steady state is the second half of the ISIs. Bursting: it repeats a
      cycle of p ≥ 2 ISIs containing a pause ≥ 3× the fast ISIs, at least
      twice; irregular: it repeats no cycle at all, although pauses and fast
      groups alternate (≥ 2 burst onsets).
    * Otherwise the steady state is regular (a cycle of one ISI, or ISIs that
      drift monotonically): initial burst when the train opens with a fast
      group ended by an ISI ≥ 3× longer; delayed when the first spike comes
      after ≥ 2 mean steady-state ISIs; then the adaptation index decides
      adapting or accelerating when, summed over the train, it says the ISIs
      lengthen or shorten by ≥ 20% (\\|(N-k-1)·A\\| ≥ ½ ln 1.2), else tonic.
      The summed index is used because A itself, a mean, shrinks as a
      long steady state dilutes the adapting onset.
    """
    f = features(spike_times, duration_ms, dt)
    if f.n_spikes == 0:
        return "silent"
    if f.silent_tail > duration_ms / 2:
        return "transient"
    if f.n_spikes < 4:
        raise RuleError(
            f"spike_times has {f.n_spikes} spikes in {duration_ms} ms; classify needs at least 4 "
            "(or silence over the second half, a transient)"
        )
    delayed = f.latency >= DELAY_RATIO * f.mean_steady_isi
    if len(f.burst_onsets) >= 2:
        if f.period is None:
            return "irregular"
        if f.period >= 2:
            return "delayed bursting" if delayed else "bursting"
    if f.onset_burst:
        return "initial burst"
    drift = 0.5 * np.log(TREND_RATIO)
    trend = ("adapting" if f.isi_trend >= drift else
             "accelerating" if f.isi_trend <= -drift else "tonic")
    if delayed:
        return "delayed" if trend == "tonic" else f"delayed {trend}"
    return trend
