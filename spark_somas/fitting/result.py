"""What a fit found: :class:`FitResult`, its fitted soma, its runs on a
recording, its free-running prediction of sweeps it was neither fitted nor
selected on, and its report; :class:`PoorPredictionWarning` when that
prediction is poor."""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from spark_somas.models.somas import Soma
from spark_somas.simulation.driver import simulate
from spark_somas.fitting.metrics import (coincidence_factor, explained_variance,
                                         predicted_fraction, relative_errors)
from spark_somas.fitting.recording import Recording
from spark_somas.fitting.stages import Stage

__all__ = ["FitResult", "PoorPredictionWarning", "POOR_GAMMA"]

#: Below this held-out Γ (Δ = 4 ms) a fit's prediction is called poor: the
#: INCF challenge's best models of cortical cells reach about 0.8, a model
#: of the right rate firing at random 0.
POOR_GAMMA = 0.5


class PoorPredictionWarning(UserWarning):
    """The fitted model, running free on sweeps it was neither fitted nor
    selected on, predicts the recorded spikes poorly (Γ below
    :data:`POOR_GAMMA`), whatever its training loss — a forced fit's small
    potential error included."""


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
      quality: :meth:`evaluate` on the ``test`` sweeps given to
        :func:`fit_soma` (neither fitted nor used to choose the start),
        the model running free; None when none were given, and then
        :meth:`report` says the fit is not judged.
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
    quality: Mapping[str, float] | None = None

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
        """The fitted model's free-running prediction of ``recording`` (best
        on sweeps it was neither fitted nor selected on):

        * ``gamma``, ``gamma_2ms``: Γ (Jolivet et al. 2008) at precision
          ``delta`` ms and at 2 ms, the mean over the sweeps where it is
          defined;
        * ``predicted``: the fraction of recorded spikes with a model spike
          within ±2 ms (:func:`~spark_somas.fitting.metrics.predicted_fraction`);
        * ``spikes_model``, ``spikes_data`` and ``rate_model_hz``,
          ``rate_data_hz`` (spikes per second of recording);
        * ``explained_variance``: of the subthreshold potential, all sweeps.
        """
        potential, times = self.simulate(recording)
        out: dict[str, float] = {}
        if recording.spike_times is not None:
            lengths = [n * recording.dt for n in recording.lengths]
            for key, d in (("gamma", delta), ("gamma_2ms", 2.0)):
                gammas = [coincidence_factor(t, x, n, delta=d)
                          for t, x, n in zip(times, recording.spike_times, lengths)]
                out[key] = (float(np.nanmean(gammas)) if np.isfinite(gammas).any()
                            else float("nan"))
            out["spikes_model"] = int(sum(len(t) for t in times))
            out["spikes_data"] = int(sum(len(t) for t in recording.spike_times))
            out["predicted"] = (predicted_fraction(_concat_times(times, recording),
                                                   _concat_times(recording.spike_times,
                                                                 recording))
                                if out["spikes_data"] else float("nan"))
            seconds = sum(lengths) / 1000.0
            out["rate_model_hz"] = out["spikes_model"] / seconds
            out["rate_data_hz"] = out["spikes_data"] / seconds
        if recording.potential is not None:
            out["explained_variance"] = explained_variance(
                np.concatenate(potential), np.concatenate(recording.potential),
                model_spikes=_concat_times(times, recording),
                data_spikes=(None if recording.spike_times is None
                             else _concat_times(recording.spike_times, recording)),
                dt=recording.dt)
        return out

    def judged(self, test: Recording) -> "FitResult":
        """This result with :attr:`quality` = :meth:`evaluate` (``test``);
        warns :class:`PoorPredictionWarning` when Γ there is below
        :data:`POOR_GAMMA`, naming the forced stages' final loss where the
        fit was teacher-forced (a small one says nothing of the free run)."""
        quality = self.evaluate(test)
        gamma = quality.get("gamma", float("nan"))
        if math.isfinite(gamma) and gamma < POOR_GAMMA:
            warnings.warn(PoorPredictionWarning(self._poor_text(quality)), stacklevel=3)
        return dataclasses.replace(self, quality=quality)

    def _poor_text(self, quality: Mapping[str, float]) -> str:
        forced = [h[-1, self.best] for st, h in zip(self.stages, self.history)
                  if st.spikes == "recorded"]
        looked = (f"the teacher-forced fit reached a loss of {min(forced):.3g}, but "
                  if forced else "")
        return (f"poor prediction: {looked}running free on the test sweeps the fitted model "
                f"reaches Γ = {quality['gamma']:.2f} (Δ = 4 ms; below {POOR_GAMMA}) with "
                f"{quality['spikes_model']} spikes for the cell's {quality['spikes_data']}")

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
        lines.append(f"best of {len(self.held_out_loss)} start(s): #{self.best}, selection loss "
                     f"{self.held_out_loss[self.best]:.4g}; {self.evaluations} evaluations per "
                     f"start, {self.wall_s:.1f} s")
        lines.extend(self._quality_lines())
        return "\n".join(lines)

    def _quality_lines(self) -> list[str]:
        """The free-running prediction of the test sweeps, or why there is none."""
        q = self.quality
        if q is None:
            return ["not judged: pass test= sweeps neither fitted nor used to choose the start "
                    "(held_out=) to judge the free-running prediction"]
        lines = ["free-running on the test sweeps:"]
        if "gamma" in q:
            lines.append(f"  Γ(4 ms) {q['gamma']:.2f}, Γ(2 ms) {q['gamma_2ms']:.2f}; "
                         f"{q['predicted']:.0%} of the cell's spikes predicted within ±2 ms; "
                         f"rate {q['rate_model_hz']:.1f} Hz (model) vs {q['rate_data_hz']:.1f} Hz "
                         f"(cell)")
        if "explained_variance" in q:
            lines.append(f"  subthreshold explained variance {q['explained_variance']:.2f}")
        if math.isfinite(q.get("gamma", float("nan"))) and q["gamma"] < POOR_GAMMA:
            lines.append(f"  PoorPredictionWarning: {self._poor_text(q)}")
        return lines

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
