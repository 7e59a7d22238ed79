"""Tasks generated offline whose answer depends on input seconds earlier.

**Evidence accumulation** (cue counting), as used by Bellec et al. (2018),
"Long short-term memory and learning-to-learn in networks of spiking
neurons", NeurIPS, and Bellec et al. (2020), "A solution to the learning
dilemma for recurrent networks of spiking neurons", Nat. Commun. 11:3625,
after the virtual T-maze of Morcos & Harvey (2016). A trial, in ms::

    │ cue │gap│ cue │gap│ … │ cue │      delay      │  recall   │
    ◀──────── cue period ─────────▶◀─── delay_ms ───▶◀ recall_ms ▶

Four input populations of ``population`` neurons each, in this channel
order: *left*, *right*, *recall*, *background*. During cue k the left or
the right population (the cue's side, each side with probability ½,
independently per cue) fires at ``cue_rate_hz``; the recall population
fires at ``cue_rate_hz`` during the recall period; the background
population fires at ``background_rate_hz`` all trial long. Every neuron is
a Bernoulli process: it spikes in a step with probability rate · dt. The
label is the side that got more cues, 0 = left, 1 = right (``n_cues`` is
odd, so there is no tie).

The evidence ends ``delay_ms`` before the recall starts — far longer than a
membrane time constant (τ_m ≈ 10 ms) at the default 1 s — so the answer
has to be held in slower state: adaptation currents, adaptive thresholds,
recurrent activity. Varying ``delay_ms`` with everything else fixed
measures the memory span a network reaches.

Trial i is a pure function of ``(seed, i)``: the cue sides, and every
spike of the cue period, are the same at every delay for a given seed and
trial, so accuracies at different delays compare the same evidence.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from spark_somas.data.base import Dataset, check_fraction, stratified_split
from spark_somas.errors import RuleError, require

__all__ = ["EvidenceAccumulation", "load_evidence_accumulation"]

LEFT, RIGHT, RECALL, BACKGROUND = range(4)


def _steps(name: str, ms: float, dt: float, *, positive: bool) -> int:
    ok = isinstance(ms, (int, float)) and math.isfinite(ms) and (ms > 0 if positive else ms >= 0)
    require(ok, name, ms, f"finite and {'> 0' if positive else '>= 0'}", error=RuleError)
    n = round(ms / dt)
    require(abs(n * dt - ms) <= 1e-9 * max(1.0, ms), name, ms,
            f"a whole number of steps of dt = {dt} ms", error=RuleError)
    return n


@dataclasses.dataclass(frozen=True)
class EvidenceAccumulation:
    """The cue-counting task's timing and rates (durations in ms, rates in Hz).

    Defaults follow Bellec et al. (2020): 7 cues of 100 ms, 50 ms apart,
    40 Hz cue populations of 10 neurons, 10 Hz background, 150 ms recall;
    the delay is 1 s here. Invalid values raise ValueError on construction.
    """

    n_cues: int = 7
    cue_ms: float = 100.0
    gap_ms: float = 50.0
    delay_ms: float = 1000.0
    recall_ms: float = 150.0
    dt: float = 1.0
    population: int = 10
    cue_rate_hz: float = 40.0
    background_rate_hz: float = 10.0

    def __post_init__(self) -> None:
        for name in ("n_cues", "population"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                    name, value, "a positive int", error=RuleError)
        require(self.n_cues % 2 == 1, "n_cues", self.n_cues, "odd, so that one side wins",
                error=RuleError)
        require(isinstance(self.dt, (int, float)) and math.isfinite(self.dt) and self.dt > 0,
                "dt", self.dt, "dt > 0 and finite", error=RuleError)
        _steps("cue_ms", self.cue_ms, self.dt, positive=True)
        _steps("gap_ms", self.gap_ms, self.dt, positive=False)
        _steps("delay_ms", self.delay_ms, self.dt, positive=False)
        _steps("recall_ms", self.recall_ms, self.dt, positive=True)
        for name in ("cue_rate_hz", "background_rate_hz"):
            rate = getattr(self, name)
            require(isinstance(rate, (int, float)) and 0 <= rate * self.dt / 1000.0 <= 1,
                    name, rate, f"0 <= rate · dt <= 1 (a spike probability per step of "
                    f"dt = {self.dt} ms)", error=RuleError)

    @property
    def cue_steps(self) -> int:
        return _steps("cue_ms", self.cue_ms, self.dt, positive=True)

    @property
    def gap_steps(self) -> int:
        return _steps("gap_ms", self.gap_ms, self.dt, positive=False)

    @property
    def cue_onsets(self) -> tuple[int, ...]:
        """The first step of each cue."""
        return tuple(k * (self.cue_steps + self.gap_steps) for k in range(self.n_cues))

    @property
    def cue_period_steps(self) -> int:
        """Steps from the first cue's start to the last cue's end."""
        return self.cue_onsets[-1] + self.cue_steps

    @property
    def recall_start(self) -> int:
        """The first step of the recall period."""
        return self.cue_period_steps + _steps("delay_ms", self.delay_ms, self.dt, positive=False)

    @property
    def recall_steps(self) -> int:
        """Steps in the recall period: a readout over the last ``recall_steps``
        steps of a trial (``readout_window=(-recall_steps, None)``) answers
        from the recall period only."""
        return _steps("recall_ms", self.recall_ms, self.dt, positive=True)

    @property
    def steps(self) -> int:
        """Steps in a trial."""
        return self.recall_start + self.recall_steps

    @property
    def n_inputs(self) -> int:
        """Input channels: four populations."""
        return 4 * self.population

    def channels(self, which: int) -> slice:
        """The channels of population ``which`` (LEFT, RIGHT, RECALL, BACKGROUND: 0…3)."""
        return slice(which * self.population, (which + 1) * self.population)

    def trial(self, seed: int, index: int, dtype: np.dtype | type = np.float32
              ) -> tuple[np.ndarray, int, np.ndarray]:
        """Trial ``index`` of ``seed``: spikes ``(steps, n_inputs)`` (0/1), the
        label, and the cue sides ``(n_cues,)`` (0 left, 1 right)."""
        sides = np.random.default_rng([seed, index, 0]).integers(0, 2, size=self.n_cues)
        p_cue = self.cue_rate_hz * self.dt / 1000.0
        p_background = self.background_rate_hz * self.dt / 1000.0
        rate = np.zeros((self.steps, self.n_inputs))
        rate[:, self.channels(BACKGROUND)] = p_background
        rate[self.recall_start:, self.channels(RECALL)] = p_cue
        for onset, side in zip(self.cue_onsets, sides):
            rate[onset:onset + self.cue_steps, self.channels(int(side))] = p_cue
        split = self.cue_period_steps
        draws = np.concatenate([
            np.random.default_rng([seed, index, 1]).random((split, self.n_inputs)),
            np.random.default_rng([seed, index, 2]).random((self.steps - split, self.n_inputs)),
        ])
        label = int(2 * sides.sum() > self.n_cues)
        return (draws < rate).astype(dtype), label, sides

    def trials(self, n: int, *, seed: int = 0, start: int = 0,
               dtype: np.dtype | type = np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Trials ``start`` … ``start`` + n − 1 of ``seed``: spikes
        ``(n, steps, n_inputs)``, labels ``(n,)`` int32 and cue sides
        ``(n, n_cues)`` int8."""
        require(isinstance(n, int) and n > 0, "n", n, "a positive int", error=RuleError)
        require(isinstance(seed, int) and seed >= 0, "seed", seed, "an int >= 0", error=RuleError)
        require(isinstance(start, int) and start >= 0, "start", start, "an int >= 0",
                error=RuleError)
        x = np.empty((n, self.steps, self.n_inputs), dtype)
        labels = np.empty(n, np.int32)
        sides = np.empty((n, self.n_cues), np.int8)
        for i in range(n):
            x[i], labels[i], sides[i] = self.trial(seed, start + i, dtype)
        return x, labels, sides

    def dataset(self, n_samples: int = 1000, *, seed: int = 0, test_fraction: float = 0.2,
                dtype: np.dtype | type = np.float32) -> Dataset:
        """``n_samples`` trials split into train and test, stratified by label
        and seeded: a :class:`~spark_somas.data.base.Dataset` named ``"cues"``
        with encoding ``"spikes"`` and 2 classes. Its ``draw_train(epoch, n)``
        gives trials n_samples + epoch·n … of the same seed: new every
        epoch, never one of the split's."""
        check_fraction(test_fraction)
        x, y, _ = self.trials(n_samples, seed=seed, dtype=dtype)
        train, test = stratified_split(y, test_fraction, np.random.default_rng([seed, 2**32 - 1]))

        def draw_train(epoch: int, n: int) -> tuple[np.ndarray, np.ndarray]:
            return self.trials(n, seed=seed, start=n_samples + epoch * n, dtype=dtype)[:2]

        return Dataset("cues", x[train], y[train], x[test], y[test], n_classes=2,
                       encoding="spikes", draw_train=draw_train)


def load_evidence_accumulation(
    *,
    seed: int = 0,
    n_samples: int = 1000,
    test_fraction: float = 0.2,
    delay_ms: float = 1000.0,
    dt: float = 1.0,
    dtype: np.dtype | type = np.float32,
    **timing: float,
) -> Dataset:
    """The evidence-accumulation task as a Dataset:
    ``EvidenceAccumulation(delay_ms=delay_ms, dt=dt, **timing).dataset(...)``.

    ``timing`` takes the other :class:`EvidenceAccumulation` fields
    (``n_cues``, ``cue_ms``, ``gap_ms``, ``recall_ms``, ``population``,
    ``cue_rate_hz``, ``background_rate_hz``). At the defaults a trial is
    2150 steps of 1 ms × 40 inputs: 1000 float32 trials take 0.34 GB
    (``dtype=np.uint8`` a quarter of it).
    """
    task = EvidenceAccumulation(delay_ms=delay_ms, dt=dt, **timing)
    return task.dataset(n_samples, seed=seed, test_fraction=test_fraction, dtype=dtype)
