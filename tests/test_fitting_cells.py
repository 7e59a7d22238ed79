"""Fits to a cell the model does not describe: the shipped Brian2 recording of
Pospischil et al.'s (2008) regular-spiking Hodgkin–Huxley cell
(spark_somas.fitting.examples), judged free-running on its test sweeps,
which were neither fitted nor used to choose the start."""

import functools
import warnings

import numpy as np
import pytest

import spark_somas as ss
from spark_somas import fitting
from spark_somas.fitting import examples

FIELDS = ("potential_rest", "resistance", "potential_tau", "rheobase_threshold", "spike_slope",
          "adaptation_subthreshold", "adaptation_tau", "adaptation_delta", "potential_reset")
BOUNDS = {"potential_rest": (-85, -50), "resistance": (0.02, 3.0), "potential_tau": (1, 200),
          "rheobase_threshold": (-70, -30), "spike_slope": (0.2, 10.0),
          "adaptation_subthreshold": (-2, 20), "adaptation_tau": (5, 2000),
          "adaptation_delta": (0, 300), "potential_reset": (-85, -40)}
# A generic start: the cell's own parameters are not AdEx fields.
START = dict(potential_rest=-70.0, resistance=0.3, potential_tau=20.0, rheobase_threshold=-50.0,
             spike_slope=2.0, threshold=0.0, adaptation_subthreshold=1.0, adaptation_tau=100.0,
             adaptation_delta=20.0, potential_reset=-65.0)


def start_soma():
    return ss.AdaptiveExponentialSoma(units=1, **START)


@functools.lru_cache(maxsize=None)
def default_fit():
    train, validation, test = (examples.pospischil_rs(s) for s in examples.SPLITS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fitting.fit_soma(start_soma(), train, FIELDS, bounds=BOUNDS, starts=2,
                                  held_out=validation, test=test)
    return result, caught


def test_the_shipped_recording_is_a_detailed_cell_with_three_splits():
    for split in examples.SPLITS:
        rec = examples.pospischil_rs(split)
        assert rec.dt == 0.1 and all(n == 10000 for n in rec.lengths)
        counts = rec.spike_counts()
        assert np.all(counts >= 5) and np.all(counts <= 40), counts   # 5-40 Hz
        v = np.concatenate(rec.potential)
        # The waveform is blanked; what remains is subthreshold (no IF cut-off).
        assert np.nanmax(v) < -30 and np.isnan(v).any()
    only = examples.pospischil_rs("test", potential=False)
    assert only.potential is None and only.n_sweeps == 4


def test_the_escape_error_matches_numpy():
    """(V_cut − V)² at the step before each recorded spike, mean over the
    spikes: against a float64 loop."""
    rng = np.random.default_rng(0)
    model = rng.uniform(-70, -40, (50, 2))
    times = [np.array([1.0, 3.2]), np.array([2.5])]
    rec = fitting.Recording(np.zeros((50, 2)), 0.1, potential=model, spike_times=times)
    data = {k: np.asarray(v) for k, v in rec.arrays().items()}
    loss = fitting.Loss(potential=0.0, escape=1.0, cutoff=-5.0)
    got = float(loss(model.astype(np.float32), np.zeros((50, 2), np.float32), data, 0.1))
    gaps = [(-5.0 - model[round(t / 0.1) - 1, k]) ** 2 for k, ts in enumerate(times) for t in ts]
    assert got == pytest.approx(np.mean(gaps), rel=1e-5)


def test_the_escape_error_is_added_only_where_the_onset_is_fitted():
    plain = fitting.forced_recipe(("potential_tau", "adaptation_delta"), cutoff=0.0)
    onset = fitting.forced_recipe(("potential_tau", "rheobase_threshold"), cutoff=0.0)
    assert plain[0].loss.escape == 0 and onset[0].loss.escape > 0
    assert fitting.forced_recipe(("rheobase_threshold",))[0].loss.escape == 0   # no cut-off
    assert fitting.cut_off(start_soma()) == 0.0


def test_the_default_predicts_held_out_spikes_of_a_hodgkin_huxley_cell():
    """The default recipe (forced with the escape error), 2 starts chosen on
    the validation sweeps, judged on the test sweeps: Γ measured 0.47
    (notebook 04 runs the same fit), asserted above 0.4 — and above what the
    same fit without the escape error reaches (test below); the rate within
    15 %."""
    result, _ = default_fit()
    q = result.quality
    assert q is not None and q["gamma"] > 0.4, q
    assert 0.85 < q["rate_model_hz"] / q["rate_data_hz"] < 1.15, q
    assert 0 < q["predicted"] <= 1 and q["gamma_2ms"] <= q["gamma"] + 1e-9
    text = result.report()
    assert "free-running on the test sweeps" in text and f"{q['gamma']:.2f}" in text


def test_a_fit_that_only_looks_good_forced_warns_by_name():
    """The forced fit without the escape error matches the potential between
    spikes but, free-running, fires late and rarely: PoorPredictionWarning,
    and the report says so."""
    train, validation, test = (examples.pospischil_rs(s) for s in examples.SPLITS)
    with pytest.warns(fitting.PoorPredictionWarning, match="teacher-forced"):
        result = fitting.fit_soma(start_soma(), train, FIELDS, bounds=BOUNDS,
                                  stages=fitting.forced_recipe(FIELDS), held_out=validation,
                                  test=test)
    assert result.history[0][-1, 0] < 10.0  # mV², forced: it looks good
    assert result.quality["gamma"] < fitting.POOR_GAMMA
    assert "PoorPredictionWarning" in result.report()
    assert result.quality["gamma"] < default_fit()[0].quality["gamma"] - 0.1


def test_without_test_sweeps_the_report_says_it_is_not_judged():
    # The fit that the free run differentiated exactly makes (below): one program for both.
    train = examples.pospischil_rs("train", potential=False).select([1])
    result = fitting.fit_soma(start_soma(), train, ("rheobase_threshold",),
                              stages=fitting.spike_recipe(("rheobase_threshold",), steps=5))
    assert result.quality is None and "not judged" in result.report()
    with pytest.raises(ss.ConfigError, match="test"):
        fitting.fit_soma(start_soma(), train, ("potential_tau",), test=train)


@functools.lru_cache(maxsize=None)
def spike_only_fit():
    train = examples.pospischil_rs("train", potential=False).select([1, 3])
    test = examples.pospischil_rs("test", potential=False).select([1, 3])
    fields = ("rheobase_threshold", "spike_slope", "adaptation_delta")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fitting.PoorPredictionWarning)
        result = fitting.fit_soma(start_soma(), train, fields,
                                  bounds={f: BOUNDS[f] for f in fields}, test=test)
    before = fitting.FitResult(
        params={f: START[f] for f in fields}, starts={}, initial={}, best=0,
        held_out_loss=np.zeros(1), history=(), evaluations=0, stages=(), wall_s=0.0,
        soma=start_soma()).evaluate(test)
    return train, result, before


def test_spike_times_only_and_no_quiet_sweep_are_fitted_by_default():
    """Every training sweep spikes (no quiet sweep) and only spike times are
    known: the default is one free-running stage on every sweep, not a
    refusal, and the report judges it on the test sweeps."""
    train, result, _ = spike_only_fit()
    bounded = {"exp_gradient": "bounded"}
    assert fitting.default_recipe(FIELDS, start_soma(), train) == fitting.spike_recipe(
        FIELDS, settings=bounded)
    assert result.stages == fitting.spike_recipe(("rheobase_threshold", "spike_slope",
                                                  "adaptation_delta"), settings=bounded)
    assert "free-running on the test sweeps" in result.report()


def test_the_spike_times_only_default_moves_the_rate_towards_the_cells():
    """The free run's gradient, differentiated "bounded", moves V_T, Δ_T
    and b: the rate comes within 10 % of the cell's (34 Hz before, 21.5
    after, the cell 21.0 when measured) and Γ on the test sweeps rises."""
    _, result, before = spike_only_fit()
    after, cell = result.quality, result.quality["rate_data_hz"]
    assert abs(after["rate_model_hz"] - cell) < 0.1 * cell < abs(before["rate_model_hz"] - cell)
    assert after["gamma"] > before["gamma"] + 0.1, (before, after)


def test_a_free_run_differentiated_exactly_overflows_and_does_not_move():
    """Why the default changes the setting: the same stage with the soma's
    exact derivative of the exponential term makes no update (its loss is
    the same at every step), and the soma's own setting reaches the fit."""
    train = examples.pospischil_rs("train", potential=False).select([1])
    fields = ("rheobase_threshold",)
    exact = fitting.fit_soma(start_soma(), train, fields, stages=fitting.spike_recipe(
        fields, steps=5))
    assert np.ptp(exact.history[0][:, 0]) == 0.0
    soma = ss.AdaptiveExponentialSoma(units=1, exp_gradient="bounded", **START)
    own = fitting.fit_soma(soma, train, fields, stages=fitting.spike_recipe(fields, steps=5))
    assert np.ptp(own.history[0][:, 0]) > 0.0


def test_stage_settings_are_sorted_pairs_and_unknown_ones_are_refused():
    stage = fitting.Stage(("potential_tau",), settings={"exp_gradient": "bounded"})
    assert stage.settings == (("exp_gradient", "bounded"),)
    assert fitting.free_run_settings(start_soma()) == {"exp_gradient": "bounded"}
    assert fitting.free_run_settings(ss.AdaptiveExponentialSoma(
        units=1, exp_gradient="detached")) == {}
    with pytest.raises(ss.ConfigError, match="Stage.settings"):
        fitting.Stage(("potential_tau",), settings=["exp_gradient"])
    with pytest.raises(ss.ConfigError, match="Stage.settings"):
        fitting.Stage(("potential_tau",), settings=("exp_gradient",))
    with pytest.raises(ss.ConfigError, match=r"stages\[0\].settings = 'gain' violates the rule: "
                                             r"a setting of AdaptiveExponentialSomaConfig"):
        fitting.fit_soma(start_soma(), examples.pospischil_rs("train").select([0]),
                         ("potential_tau",), stages=[fitting.Stage(("potential_tau",),
                                                                   settings={"gain": 1.0})])
