"""Many cells at once: fit_cells fits N cells' recordings as N neurons of one
soma in one compiled program per stage, and each cell's fit is the one
fit_soma finds for it alone. The recordings are made by the float64 NumPy
oracle (tests/reference.py) from AdEx cells with known, different
parameters, and differ in their number of sweeps and their lengths."""

from __future__ import annotations

import numpy as np
import pytest

import spark_somas as ss
from spark_somas import fitting
from spark_somas.configs import ConfigError
from spark_somas.fitting import Recording

import reference

DT = 0.1
ADEX_FIELDS = [f.name for f in ss.AdaptiveExponentialSomaConfig.quantity_fields()]
FITTED = ("potential_tau", "adaptation_delta")
FIXED = dict(adaptation_subthreshold=4.0, adaptation_tau=144.0)
#: Three cells: their true τ_m (ms) and b (pA), step amplitudes (pA), sweep length (ms).
CELLS = [
    (dict(potential_tau=9.37, adaptation_delta=80.5), [-200.0, 700.0], 150.0),
    (dict(potential_tau=12.0, adaptation_delta=40.0), [-100.0, 800.0, 1000.0], 200.0),
    (dict(potential_tau=15.0, adaptation_delta=120.0), [-150.0, 900.0], 150.0),
]


def record(truth, amplitudes, sweep, seed):
    """Sweeps of the oracle's AdEx: a step of each amplitude from 20 ms to
    30 ms before the sweep's end, potential + 0.5 mV noise, spike times."""
    config = ss.AdaptiveExponentialSomaConfig(**FIXED, **truth)
    t = np.arange(int(round(sweep / DT))) * DT
    step = ((t >= 20.0) & (t < sweep - 30.0)).astype(np.float64)
    currents = step[:, None] * np.asarray(amplitudes, np.float64)[None]
    out = reference.simulate("adex", {n: getattr(config, n) for n in ADEX_FIELDS}, currents, DT)
    noise = 0.5 * np.random.default_rng(seed).normal(size=currents.shape)
    times = [np.nonzero(out["spikes"][:, k])[0] * DT for k in range(currents.shape[1])]
    return Recording(currents.astype(np.float32), DT, potential=out["potential"] + noise,
                     spike_times=times)


@pytest.fixture(scope="module")
def recordings():
    return [record(truth, amplitudes, sweep, seed)
            for seed, (truth, amplitudes, sweep) in enumerate(CELLS)]


def start_soma():
    return ss.AdaptiveExponentialSoma(units=1, potential_tau=11.0, adaptation_delta=60.0,
                                      **FIXED)


def assert_same_fit(alone, together, rtol):
    """The first loss of the fit agrees to 10⁻⁵, and the fitted fields of
    every start, each stage's last losses and the selection losses to
    ``rtol``. The best start agrees in its fields (two starts that reach one
    optimum may tie on the held-out loss to float32 rounding)."""
    for name in FITTED:
        np.testing.assert_allclose(together.starts[name], alone.starts[name], rtol=rtol)
        np.testing.assert_allclose(together.params[name], alone.params[name], rtol=rtol)
        np.testing.assert_array_equal(together.initial[name], alone.initial[name])
    np.testing.assert_allclose(together.history[0][0], alone.history[0][0], rtol=1e-5)
    for h_alone, h_together in zip(alone.history, together.history):
        assert h_together.shape == h_alone.shape
        np.testing.assert_allclose(h_together[-1], h_alone[-1], rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(together.held_out_loss, alone.held_out_loss, rtol=rtol)


def test_cells_of_one_shape_are_each_fitted_as_alone():
    """Three cells recorded on the same sweeps (nothing padded), the default
    (forced) recipe, two starts: each cell's fit is the one fit_soma finds
    for it alone to float32 rounding, and recovers its own τ_m and b."""
    # The second cell's sweeps, the most and the longest: the programs are
    # those the test below runs (its cells padded to these), compiled once.
    _, amplitudes, sweep = CELLS[1]
    recordings = [record(truth, amplitudes, sweep, seed)
                  for seed, (truth, _, _) in enumerate(CELLS)]
    together = fitting.fit_cells(start_soma(), recordings, FITTED, starts=2)
    assert len(together) == len(recordings)
    for (truth, _, _), recording, fit in zip(CELLS, recordings, together):
        alone = fitting.fit_soma(start_soma(), recording, FITTED, starts=2)
        assert_same_fit(alone, fit, rtol=1e-5)
        errors = fitting.relative_errors(fit.params, truth)
        assert all(abs(e) < 0.02 for e in errors.values()), errors


# Padding changes the order in which the loss's sums add up (float32
# rounding, 10⁻⁷ of a loss); L-BFGS's line search can turn that into a
# slightly different step on the way and a stop a little elsewhere in a flat
# valley: 10⁻⁴ to 10⁻³ of a field, far below what the fits resolve.
PADDED_RTOL = 1e-3


def test_cells_of_different_shapes_are_each_fitted_as_alone(recordings):
    """Three cells with 2, 3 and 2 sweeps of 150, 200 and 150 ms (the first
    and the last alike: their fits alone share one program), the default
    (forced) recipe, two starts: each cell's fit is the one fit_soma gives it
    alone, and each recovers its own τ_m and b."""
    together = fitting.fit_cells(start_soma(), recordings, FITTED, starts=2)
    for (truth, _, _), recording, fit in zip(CELLS, recordings, together):
        alone = fitting.fit_soma(start_soma(), recording, FITTED, starts=2)
        assert_same_fit(alone, fit, rtol=PADDED_RTOL)
        errors = fitting.relative_errors(fit.params, truth)
        assert all(abs(e) < 0.02 for e in errors.values()), errors


def test_each_cell_keeps_its_own_sweeps_of_each_stage(recordings):
    """Stages on the subthreshold sweeps, then (forced) on the spiking ones,
    pick each cell's own sweeps (one, two or one of them spiking), and each
    cell's starts are judged on its own held-out sweeps of each kind; the
    fits are still those of the cells alone."""
    stages = (fitting.Stage(("potential_tau",), fitting.Loss(potential=1.0), "subthreshold",
                            "lbfgs", 20),
              fitting.Stage(FITTED, fitting.Loss(potential=1.0, upswing=2.0), "spiking",
                            "lbfgs", 40, spikes="recorded"))
    held_out = [record(truth, amplitudes[::-1], sweep, seed + 10)
                for seed, (truth, amplitudes, sweep) in enumerate(CELLS)]
    test = [record(truth, amplitudes, sweep, seed + 20)
            for seed, (truth, amplitudes, sweep) in enumerate(CELLS)]
    assert [int(np.sum(r.spike_counts() > 0)) for r in recordings] == [1, 2, 1]
    together = fitting.fit_cells(start_soma(), recordings, FITTED, stages=stages, starts=2,
                                 held_out=held_out, test=test)
    for recording, held, cell_test, fit in zip(recordings, held_out, test, together):
        alone = fitting.fit_soma(start_soma(), recording, FITTED, stages=stages, starts=2,
                                 held_out=held, test=cell_test)
        assert_same_fit(alone, fit, rtol=PADDED_RTOL)
        assert fit.quality.keys() == alone.quality.keys() and fit.quality["gamma"] > 0.9
        for key, value in alone.quality.items():
            np.testing.assert_allclose(fit.quality[key], value, rtol=1e-2, err_msg=key)


@pytest.mark.parametrize("call, message", [
    (lambda recs: fitting.fit_cells(ss.AdaptiveExponentialSoma, [], FITTED),
     "recordings = \\[\\] violates the rule: a non-empty sequence"),
    (lambda recs: fitting.fit_cells(ss.AdaptiveExponentialSoma, recs[0], FITTED),
     "recordings = 'Recording' violates the rule: a non-empty sequence"),
    (lambda recs: fitting.fit_cells(ss.AdaptiveExponentialSoma, [recs[0], "cell"], FITTED),
     "recordings\\[1\\] = .str. violates the rule: a spark_somas.fitting.Recording"),
    (lambda recs: fitting.fit_cells(ss.AdaptiveExponentialSoma, recs, FITTED,
                                    held_out=recs[:2]),
     "held_out = '2 recordings' violates the rule: one recording per cell \\(3\\)"),
    (lambda recs: fitting.fit_cells(ss.AdaptiveExponentialSoma, recs, FITTED, test=recs[:1]),
     "test = '1 recordings' violates the rule: one recording per cell \\(3\\)"),
    (lambda recs: fitting.fit_cells(ss.AdaptiveExponentialSoma, recs, FITTED,
                                    test=[recs[1], recs[1], recs[0]]),
     "test\\[1\\] = 'the same recording' violates the rule: sweeps other than those fitted"),
    (lambda recs: fitting.fit_cells(
        ss.AdaptiveExponentialSoma, recs, FITTED,
        stages=[fitting.Stage(FITTED, sweeps=(2,))]),
     "recordings\\[0\\]: stages\\[0\\].sweeps = 2 violates the rule: 0 ≤ index < 2"),
    (lambda recs: fitting.fit_cells(ss.AdaptiveExponentialSoma(units=1, dt=0.05), recs,
                                    FITTED),
     "recordings\\[0\\]: dt = 0.05 violates the rule"),
])
def test_bad_cells_are_refused_by_name_before_any_work(recordings, monkeypatch, call, message):
    def refuse(*args, **kwargs):
        raise AssertionError("simulated before refusing")

    monkeypatch.setattr(fitting.engine, "_fit_stage", refuse)
    with pytest.raises(ConfigError, match=message):
        call(recordings)


def test_a_soma_of_several_values_is_refused_naming_fit_cells(recordings):
    soma = ss.AdaptiveExponentialSoma(units=2, potential_tau=np.array([10.0, 12.0]))
    with pytest.raises(ConfigError, match="potential_tau = .* several cells: fit_cells, one "
                                          "recording per cell"):
        fitting.fit_cells(soma, recordings, FITTED)
