"""spark_somas.fitting: known parameters come back, starts are independent,
bounds hold, bad input is refused before any simulation, and the quality
measures match their definitions.

The recordings are made by the float64 NumPy oracle (tests/reference.py),
not by the package, with 0.5 mV of Gaussian noise, so a fit that recovers
the parameters recovers those of an independent simulator.
"""

import dataclasses
import math
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spark_somas as ss
from spark_somas import fitting, presets
from spark_somas.configs import ConfigError
from spark_somas.fitting import Loss, Recording, Stage
from spark_somas.fitting.recording import same_dt

import reference
from toy_models import recovery_model

DT = 0.1
ADEX_FIELDS = [f.name for f in ss.AdaptiveExponentialSomaConfig.quantity_fields()]


def record(config, amplitudes, *, on=20.0, length=150.0, sweep=300.0, seed=0):
    """Sweeps of the float64 oracle: a step of each amplitude (pA) from ``on``
    for ``length`` ms in a sweep of ``sweep`` ms, potential + 0.5 mV noise."""
    t = np.arange(int(round(sweep / DT))) * DT
    step = ((t >= on) & (t < on + length)).astype(np.float64)
    currents = step[:, None] * np.asarray(amplitudes, np.float64)[None]
    params = {n: getattr(config, n) for n in ADEX_FIELDS}
    out = reference.simulate("adex", params, currents, DT)
    noise = 0.5 * np.random.default_rng(seed).normal(size=currents.shape)
    times = [np.nonzero(out["spikes"][:, k])[0] * DT for k in range(currents.shape[1])]
    return Recording(currents.astype(np.float32), DT, potential=out["potential"] + noise,
                     spike_times=times)


BG_TRUE = dict(adaptation_subthreshold=4.0, adaptation_delta=80.5, adaptation_tau=144.0,
               potential_tau=9.37)
BG_GUESS = dict(adaptation_subthreshold=2.0, adaptation_delta=40.0, adaptation_tau=80.0,
                potential_tau=14.0)


def bg_fit(stages=None):
    truth = ss.AdaptiveExponentialSomaConfig(**BG_TRUE)
    train = record(truth, [-300.0, 300.0, 700.0, 1000.0])
    held_out = record(truth, [850.0], seed=1)
    assert [len(t) for t in train.spike_times][:2] == [0, 0]
    result = fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1, **BG_GUESS), train,
                              tuple(BG_TRUE), held_out=held_out, stages=stages)
    return result, fitting.relative_errors(result.params, BG_TRUE), result.evaluate(held_out)


def test_recovers_all_four_adex_parameters_from_a_poor_start():
    """Brette & Gerstner's cell under four steps, the default recipe
    (the recording has spike times: the model is reset at them, one L-BFGS
    stage on the potential): τ_m and b within 2 %, a and τ_w (which trade
    off on a 300 ms sweep) within 5 %, where the staged recipe below needs
    10–12 %."""
    result, errors, quality = bg_fit()
    assert result.stages == fitting.forced_recipe(tuple(BG_TRUE))
    assert abs(errors["potential_tau"]) < 0.02 and abs(errors["adaptation_delta"]) < 0.02, errors
    assert abs(errors["adaptation_subthreshold"]) < 0.05, errors
    assert abs(errors["adaptation_tau"]) < 0.05, errors
    assert quality["gamma"] > 0.9 and quality["explained_variance"] > 0.95, quality
    assert result.history[0][-1, 0] < 0.3  # the noise variance, 0.25 mV²


def test_the_staged_free_running_recipe_recovers_them_too():
    """The same by :func:`recipe` (L-BFGS below threshold, then Adam and
    L-BFGS on the spiking sweeps, the model's own spikes throughout)."""
    result, errors, quality = bg_fit(fitting.recipe(tuple(BG_TRUE)))
    # a and τ_w trade off on a 300 ms sweep (the loss is flat along a/τ_w
    # within the noise), τ_m and b do not.
    assert abs(errors["potential_tau"]) < 0.02, errors
    assert abs(errors["adaptation_subthreshold"]) < 0.10, errors
    assert abs(errors["adaptation_tau"]) < 0.12, errors
    assert abs(errors["adaptation_delta"]) < 0.06, errors
    assert quality["gamma"] > 0.9 and quality["explained_variance"] > 0.95, quality
    assert result.history[0][-1, 0] < 0.3  # below threshold: the noise variance, 0.25 mV²


FIVE = ("adaptation_subthreshold", "adaptation_delta", "adaptation_tau", "potential_tau",
        "potential_reset")


@pytest.mark.parametrize("name", ["adaptation", "initial_burst", "regular_bursting",
                                  "transient_spiking"])
def test_forced_fits_recover_five_fields_of_naud_patterns(name):
    """a, b, τ_w, τ_m and V_r of four of Naud et al.'s firing patterns from a
    poor start (a, b halved, b + 20 pA, τ_w × 0.6, τ_m × 1.5, V_r − 5 mV):
    within 3 %, a (the weakest lever on a 300 ms sweep) within 10 %, and the
    fitted cell's own spikes mostly fall on the held-out sweeps' (Γ > 0.7;
    an initial burst's few spikes make Γ coarse)."""
    preset = presets.get(name)
    truth = {n: float(getattr(preset.config, n)) for n in FIVE}
    current = preset.current_pA
    train = record(preset.config, [-0.5 * current, current, 1.3 * current], length=200.0)
    held_out = record(preset.config, [0.85 * current, 1.15 * current], length=200.0, seed=1)
    start = dict(adaptation_subthreshold=0.5 * truth["adaptation_subthreshold"],
                 adaptation_delta=0.5 * truth["adaptation_delta"] + 20.0,
                 adaptation_tau=0.6 * truth["adaptation_tau"],
                 potential_tau=1.5 * truth["potential_tau"],
                 potential_reset=truth["potential_reset"] - 5.0)
    bounds = dict(adaptation_subthreshold=(-20.0, 20.0), adaptation_delta=(0.0, 300.0),
                  adaptation_tau=(5.0, 1000.0), potential_tau=(1.0, 100.0),
                  potential_reset=(-75.0, -45.0))
    result = fitting.fit_soma(preset.soma(**start), train, FIVE, bounds=bounds, starts=2,
                              held_out=held_out)
    errors = fitting.relative_errors(result.params, truth)
    assert abs(errors.pop("adaptation_subthreshold")) < 0.10, errors
    assert all(abs(e) < 0.03 for e in errors.values()), errors
    assert result.evaluate(held_out)["gamma"] > 0.7


def test_a_forced_run_with_the_models_own_spikes_is_its_free_run():
    """Teacher forcing changes nothing when the imposed spikes are the
    model's own: the reset follows the same steps, V to float32 rounding
    (one compiled step called from a Python loop against the compiled scan)."""
    soma = presets.get("adaptation").soma(units=1)
    # The steps' inputs and outputs go through NumPy: JAX would compile a
    # program to split the arrays into 3000 steps and one to stack them.
    currents = np.linspace(0.0, 900.0, 3000, dtype=np.float32)[:, None, None]
    free = ss.simulate(soma, jnp.asarray(currents))
    soma.reset()
    step = jax.jit(lambda state, current, spike: ss.somas.step(
        type(soma), soma.parameters(), state, current, soma.options, forced=spike))
    state = soma.neuron_state()
    potential = []
    for current, spike in zip(currents, np.asarray(free.spikes)):
        state, s = step(state, current, spike)
        potential.append(state["potential"])
    assert float(jnp.sum(free.spikes)) >= 10
    np.testing.assert_allclose(np.stack(potential), np.asarray(free.potential), rtol=0,
                               atol=1e-2)
    # No imposed spike: no reset, and V is held at the cut-off once it gets there.
    state = soma.neuron_state()
    fired = []
    for current in currents:
        state, s = step(state, current, jnp.zeros(()))
        fired.append(s)
    assert np.max(np.stack(fired)) == 0.0
    assert float(state["potential"][0, 0]) == float(soma.threshold[...])


def test_the_upswing_before_each_recorded_spike_is_left_out_of_the_potential_error():
    """upswing = 0.2 ms at dt = 0.1 ms: the spike's own step and the two before."""
    spikes = jnp.zeros((8, 1)).at[5, 0].set(1.0)
    data = {"potential": jnp.zeros((8, 1)), "recorded": jnp.ones((8, 1)),
            "valid": jnp.ones((8, 1)), "spikes": spikes}
    model = jnp.arange(1.0, 9.0)[:, None]  # errors 1 … 8 mV
    assert float(Loss()(model, spikes, data, DT)) == pytest.approx(204 / 8)
    kept = [1, 2, 3, 7, 8]  # samples 3, 4 and 5 (errors 4, 5, 6) left out
    assert float(Loss(upswing=0.2)(model, spikes, data, DT)) == pytest.approx(
        sum(e * e for e in kept) / len(kept))


@pytest.mark.parametrize("name", ["tonic_spiking", "initial_burst", "delayed_accelerating"])
def test_recovers_the_subthreshold_fields_of_naud_patterns(name):
    """τ_m, a and τ_w of three of Naud et al.'s firing patterns from two
    sweeps below threshold, from a start 50 % off each."""
    preset = presets.get(name)
    fields = ("adaptation_subthreshold", "adaptation_tau", "potential_tau")
    truth = {n: float(getattr(preset.config, n)) for n in fields}
    data = record(preset.config, [-0.5 * preset.current_pA, 0.25 * preset.current_pA])
    assert all(len(t) == 0 for t in data.spike_times)
    start = {n: v * (1.5 if n == "potential_tau" else 0.5) for n, v in truth.items()}
    stage = Stage(fields, Loss(potential=1.0), "all", "lbfgs", 40)
    result = fitting.fit_soma(preset.soma(**start), data, fields, stages=[stage],
                              bounds={"adaptation_subthreshold": (-20.0, 20.0),
                                      "adaptation_tau": (5.0, 1000.0),
                                      "potential_tau": (1.0, 100.0)})
    errors = fitting.relative_errors(result.params, truth)
    assert abs(errors["potential_tau"]) < 0.03, errors
    assert abs(errors["adaptation_subthreshold"]) < 0.15, errors
    assert abs(errors["adaptation_tau"]) < 0.25, errors


SMALL_FIELDS = ("adaptation_subthreshold", "adaptation_delta", "potential_tau")


def small_problem():
    truth = ss.AdaptiveExponentialSomaConfig(**BG_TRUE)
    return record(truth, [-300.0, 800.0], length=60.0, sweep=100.0)


SMALL_STAGES = (Stage(("adaptation_subthreshold", "potential_tau"), Loss(), "subthreshold",
                      "lbfgs", 6),
                Stage(("adaptation_delta",), Loss(potential=0.0, count=1.0, van_rossum=1.0),
                      "spiking", "adam", 8, 0.1))


def test_many_starts_in_one_program_equal_separate_fits():
    data = small_problem()
    starts = {"adaptation_subthreshold": np.array([1.0, 3.0, 6.0]),
              "adaptation_delta": np.array([20.0, 60.0, 150.0]),
              "potential_tau": np.array([5.0, 12.0, 20.0])}
    soma = ss.AdaptiveExponentialSoma(units=1)
    together = fitting.fit_soma(soma, data, SMALL_FIELDS, stages=SMALL_STAGES, starts=starts)
    for k in range(3):
        # Start k alone: in every lane of the same program (one compilation),
        # with no other start beside it.
        alone = fitting.fit_soma(soma, data, SMALL_FIELDS, stages=SMALL_STAGES,
                                 starts={n: np.repeat(v[k], 3) for n, v in starts.items()})
        # Each start takes the steps it takes alone: the losses agree to
        # float32 rounding at every iteration; the parameters to 0.5 %, as
        # L-BFGS carries a rounding difference along the flat direction of
        # the loss (a against τ_m here) and Adam then follows it.
        for h_together, h_alone in zip(together.history, alone.history):
            np.testing.assert_allclose(h_together[:, k], h_alone[:, 0], rtol=2e-5, atol=1e-5)
        for n in SMALL_FIELDS:
            np.testing.assert_allclose(together.starts[n][k], alone.params[n], rtol=5e-3,
                                       err_msg=f"start {k}, {n}")
    # The best start is the one whose selection loss is least.
    assert together.best == int(np.argmin(together.held_out_loss))
    assert together.params == {n: together.starts[n][together.best] for n in SMALL_FIELDS}


def test_a_later_fit_that_differs_only_in_numbers_compiles_nothing():
    """Another start, other bounds of the same kinds and another recording of
    the same shape: the programs of the first fit run again, nothing is
    traced or compiled (the boxes' ends are arguments, not settings)."""
    events = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **kw: events.append(event))
    fields = ("potential_tau", "adaptation_delta")
    stages = (Stage(fields, Loss(), "all", "adam", 2),)
    fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1), small_problem(), fields, stages=stages,
                     starts=2, bounds={"potential_tau": (1.0, 30.0)})
    del events[:]
    fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1, potential_tau=14.0),
                     record(ss.AdaptiveExponentialSomaConfig(adaptation_delta=50.0),
                            [-200.0, 700.0], length=60.0, sweep=100.0, seed=1),
                     fields, stages=stages, starts=2, bounds={"potential_tau": (2.0, 40.0)})
    assert not [e for e in events if "trace" in e or "compile" in e], sorted(set(events))


@pytest.mark.parametrize("learning_rate", [1e3, 1e8, 1e30])
def test_bounds_hold_at_absurd_learning_rates(learning_rate):
    data = small_problem()
    fields = ("adaptation_subthreshold", "adaptation_delta", "potential_tau", "adaptation_tau",
              "potential_reset")
    bounds = {"adaptation_subthreshold": (0.5, 8.0), "adaptation_delta": (0.0, 200.0),
              "potential_reset": (-80.0, -50.0)}  # τ_m, τ_w: the rules' own, ≥ dt
    stage = Stage(fields, Loss(potential=1.0, count=1.0), "all", "adam", 6, learning_rate)
    result = fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1), data, fields, bounds=bounds,
                              stages=[stage], starts=8)
    for n in fields:
        values = result.starts[n]
        lo, hi = bounds.get(n, (DT, 1e6))
        assert np.all(np.isfinite(values)) and np.all((values >= lo) & (values <= hi)), (n, values)
    for k in range(8):
        result.fitted_soma(k)  # every start is a legal soma: the constructor checks the rules


def test_sweeps_of_different_lengths_and_unrecorded_samples():
    """Padding and NaN never count: the potential loss of the true model is
    the mean squared noise over the recorded samples only."""
    truth = ss.AdaptiveExponentialSomaConfig(**BG_TRUE)
    a, b = record(truth, [-200.0], sweep=80.0), record(truth, [300.0], sweep=50.0, seed=3)
    va, vb = a.potential[0].copy(), b.potential[0].copy()
    vb[100:200] = np.nan
    data = Recording([a.currents[0], b.currents[0]], DT, potential=[va, vb])
    arrays = {k: jnp.asarray(v) for k, v in data.arrays().items()}
    clean = reference.simulate("adex", {n: getattr(truth, n) for n in ADEX_FIELDS},
                               np.asarray(arrays["currents"], np.float64), DT)
    loss = Loss()(jnp.asarray(clean["potential"], jnp.float32), jnp.zeros_like(arrays["currents"]),
                  arrays, DT)
    residual = np.concatenate([va - clean["potential"][:800, 0], vb - clean["potential"][:500, 1]])
    expected = np.nanmean(residual**2)
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    assert 0.2 < expected < 0.3


def test_van_rossum_distance_of_one_extra_spike_is_one_half():
    steps = 20000  # 2 s: the kernel (τ = 10 ms) has decayed by the end
    data = {"spikes": jnp.zeros((steps, 1)), "valid": jnp.ones((steps, 1)),
            "recorded": jnp.zeros((steps, 1)), "potential": jnp.zeros((steps, 1))}
    spikes = jnp.zeros((steps, 1)).at[1000, 0].set(1.0)
    value = Loss(potential=0.0, van_rossum=1.0)(jnp.zeros((steps, 1)), spikes, data, DT)
    # (1/τ) ∫ e^{-2t/τ} dt = 1/2, as a sum of steps dt: dt/τ / (1 − e^{-2dt/τ}).
    assert float(value) == pytest.approx(DT / 10.0 / (1 - math.exp(-2 * DT / 10.0)), rel=1e-5)


def test_coincidence_factor_follows_jolivet_2008():
    t = np.array([10.0, 50.0, 120.0, 300.0])
    assert fitting.coincidence_factor(t, t, 500.0) == pytest.approx(1.0)
    # Within ±Δ counts, beyond does not; each model spike is matched once.
    model = np.array([13.0, 56.0, 121.0])
    n_coinc, nu, delta = 2, 3 / 500.0, 4.0
    expected = (n_coinc - 2 * nu * delta * 4) / (0.5 * 7) / (1 - 2 * nu * delta)
    assert fitting.coincidence_factor(model, t, 500.0) == pytest.approx(expected)
    assert fitting.coincidence_factor(np.array([50.0]), np.array([49.0, 51.0]), 500.0) == \
        pytest.approx((1 - 2 * (1 / 500) * 4 * 2) / 1.5 / (1 - 2 * (1 / 500) * 4))
    # A Poisson train independent of the data scores 0 on average, to first
    # order in νΔ (2 Hz here: the chance of a coincidence, 1 − e^{−2νΔ},
    # is 2νΔ within 1 %).
    rng = np.random.default_rng(0)
    data = np.sort(rng.uniform(0, 100_000.0, 200))
    scores = [fitting.coincidence_factor(np.sort(rng.uniform(0, 100_000.0, 200)), data,
                                         100_000.0) for _ in range(200)]
    assert abs(np.mean(scores)) < 0.005
    assert math.isnan(fitting.coincidence_factor([], [], 100.0))


def test_explained_variance_is_one_for_the_data_and_zero_for_its_mean():
    v = np.sin(np.arange(1000) / 30.0) * 5 - 65
    assert fitting.explained_variance(v, v) == pytest.approx(1.0)
    assert fitting.explained_variance(np.full_like(v, v.mean()), v) == pytest.approx(0.0)
    # Samples near a spike of either train are left out.
    model = v.copy()
    model[495:560] += 40.0
    assert fitting.explained_variance(model, v, model_spikes=np.array([50.0]),
                                      window=(1.0, 6.0)) == pytest.approx(1.0)


@pytest.fixture
def no_simulation(monkeypatch):
    """Fails the test if a fit starts simulating: errors come before any work."""
    def refuse(*args, **kwargs):
        raise AssertionError("simulated before refusing")
    monkeypatch.setattr(fitting.engine, "_fit_stage", refuse)


@pytest.mark.usefixtures("no_simulation")
@pytest.mark.parametrize("case, message", [
    (lambda r: Recording([np.zeros(100)], DT, potential=[np.zeros(99)]),
     "potential[0] = '99 samples' violates the rule: as many samples as currents[0] (100)"),
    (lambda r: Recording([np.zeros(100)], DT, potential=[np.full(100, np.nan)]),
     "potential = 'all NaN' violates the rule: at least one recorded"),
    (lambda r: Recording([np.zeros(100)], DT, potential=[np.zeros(100)],
                         spike_times=[[12.0, 10.0]]),
     "spike_times[0] = [10.0, 12.0] violates the rule: times in ms within the sweep, 0 ≤ t < 10"),
    (lambda r: fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1), r, ["membrane_tau"]),
     "fields = 'membrane_tau' violates the rule: a numeric config field"),
    (lambda r: fitting.fit_soma(ss.ExponentialSoma(units=1), r, ["adaptation_delta"]),
     "fields = 'adaptation_delta' violates the rule"),
    (lambda r: fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1), r, ["potential_tau"],
                                bounds={"potential_tau": (-1.0, 20.0)}),
     "bounds['potential_tau'] = (-1.0, 20.0) violates the rule: inside what the config rules "
     "allow, [0.1, 1000000]"),
    (lambda r: fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1), r, ["potential_reset"],
                                bounds={"potential_reset": (-80.0, -30.0)}),
     "bounds['potential_reset'] = (-80.0, -30.0) violates the rule: inside what the config "
     "rules allow, [-1000000, -40.40001]"),
    (lambda r: fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1), r, ["potential_tau"],
                                bounds={"potential_tau": (20.0, 50.0)}),
     "start potential_tau = 9.37"),
    (lambda r: fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1), r, ["potential_tau"],
                                stages=[Stage(("adaptation_tau",))]),
     "stages[0].fields = 'adaptation_tau' violates the rule: one of the fields"),
    (lambda r: fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1, dt=0.05), r,
                                ["potential_tau"]),
     "dt = 0.05 violates the rule: the soma's step equals the recording's"),
    (lambda r: fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1),
                                Recording(r.currents, DT, potential=r.potential),
                                ["adaptation_delta"],
                                stages=fitting.recipe(["adaptation_delta"])),
     "Recording.spike_times = None violates the rule: known spike times"),
    (lambda r: fitting.fit_soma(
        ss.AdaptiveExponentialSoma(units=1),
        Recording(r.currents, DT, potential=[r.potential[0], np.full(1000, np.nan)],
                  spike_times=r.spike_times),
        ["adaptation_delta"], stages=[Stage(("adaptation_delta",), Loss(), (1,))]),
     "stages[0]: potential = 'all NaN' violates the rule"),
    (lambda r: fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1), r, ["potential_tau"],
                                starts={"potential_tau": [5.0, 2e6]}),
     "violates the rule"),
    (lambda r: fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1),
                                Recording(r.currents, DT, potential=r.potential),
                                ["potential_tau"], stages=fitting.forced_recipe(["potential_tau"])),
     "stages[0].spikes = 'recorded' violates the rule: known spike times in the recording"),
    (lambda r: Stage(("potential_tau",), spikes="cell"),
     "Stage.spikes = 'cell' violates the rule: 'model' (its own threshold) or 'recorded'"),
    (lambda r: Loss(upswing=-1.0), "Loss.upswing = -1.0 violates the rule: a duration in ms"),
])
def test_bad_input_is_refused_by_name_before_any_work(case, message):
    recording = record(ss.AdaptiveExponentialSomaConfig(), [-100.0, 900.0], length=50.0,
                       sweep=100.0)
    with pytest.raises(ConfigError) as info:
        case(recording)
    assert message in str(info.value), str(info.value)


# What each soma's documented equations read only at a spike: the threshold
# and the reset (V_th, V_r), the refractory period, the jump b of w, and the
# adaptive threshold's jump and decay (θ is event-only, advanced in the reset).
ONLY_AT_A_SPIKE = {
    "expif": {"threshold", "potential_reset"},
    "refractory": {"threshold", "potential_reset", "cooldown"},
    "adex": {"threshold", "potential_reset", "adaptation_delta"},
    "simplified": {"threshold", "potential_reset", "cooldown", "threshold_delta",
                   "threshold_tau"},
}


@pytest.mark.parametrize("name", sorted(ONLY_AT_A_SPIKE))
def test_spike_triggered_fields_are_read_off_the_equations(name):
    assert set(fitting.spike_triggered(ss.SOMAS[name](units=1))) == ONLY_AT_A_SPIKE[name]


def test_a_model_of_ones_own_gets_its_spike_triggered_fields_derived():
    """A variant of AdEx whose drive also reads V_th (a soft pull towards
    it): V_th moves to the subthreshold stage, b stays in the spiking one;
    no list in the package is edited."""
    class SoftAdEx(ss.AdaptiveExponentialSoma):
        @staticmethod
        def drives(p, x, current, stage, options):
            out = ss.AdaptiveExponentialSoma.drives(p, x, current, stage, options)
            return {**out, "potential": out["potential"] - 1e-3 * (x["potential"] - p.threshold)}

    triggered = fitting.spike_triggered(SoftAdEx(units=1))
    assert set(triggered) == {"potential_reset", "adaptation_delta"}
    stages = fitting.recipe(["threshold", "adaptation_delta", "potential_tau"], soma=SoftAdEx)
    assert stages[0].fields == ("threshold", "potential_tau")
    assert stages[1].fields == ("adaptation_delta",)


def test_a_field_that_only_sets_a_state_at_rest_is_not_spike_triggered():
    """An Izhikevich-like model whose recovery u starts at a field u₀ that
    no equation reads again: below threshold and at a spike alike, u₀ acts
    on nothing, so no stage fits it as spike-triggered; the cut-off V_th
    and the jump d of u, read only at a spike, are."""
    from spark_somas.models.configs import SomaConfig, quantity
    from spark_somas.models.somas import StateVariable

    @dataclasses.dataclass(frozen=True, kw_only=True, eq=False, repr=False)
    class RecoveryConfig(SomaConfig):
        potential_rest: float = quantity(-65.0, symbol="E_L", units="mV", doc="rest")
        threshold: float = quantity(-50.0, symbol="V_th", units="mV", doc="cut-off")
        jump: float = quantity(5.0, symbol="d", units="pA", doc="jump of u")
        recovery_rest: float = quantity(2.0, symbol="u_0", units="pA", doc="u at rest")

    Recovery = recovery_model(RecoveryConfig, StateVariable("pA", rest="recovery_rest"))
    assert set(fitting.spike_triggered(Recovery(units=1))) == {"threshold", "jump"}


# -- input at the edges: each refused by name before any work, or accepted as
# any real scalar; the quality measures where their definition ends


def small_recording(**changes):
    """One subthreshold and one spiking 100 ms sweep of the default AdEx."""
    return record(ss.AdaptiveExponentialSomaConfig(), [-100.0, 900.0], length=50.0, sweep=100.0,
                  **changes)


@pytest.mark.usefixtures("no_simulation")
@pytest.mark.parametrize("kinds, amplitudes", [
    (("spiking",), [-100.0, -200.0]), (("subthreshold",), [900.0]),
    (("spiking", "spiking"), [-50.0])])
def test_a_held_out_recording_with_no_sweep_of_any_stages_kind_is_refused(kinds, amplitudes):
    """Nothing could judge the starts there: refused, not a held-out loss of zeros."""
    train = small_recording()
    held_out = record(ss.AdaptiveExponentialSomaConfig(), amplitudes, length=50.0, sweep=100.0)
    stages = [Stage(("potential_tau",), Loss(), kind) for kind in kinds]
    with pytest.raises(ConfigError, match=r"held_out = '\d sweep\(s\), \d with spikes' violates "
                                          r"the rule: at least one sweep of a kind the stages fit "
                                          rf"\({kinds[0]}\)"):
        fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1), train, ["potential_tau"],
                         stages=stages, held_out=held_out, starts=2)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.integers(0, 999), min_size=1, max_size=6),
       offsets=st.lists(st.floats(-0.049, 0.049), min_size=2, max_size=2),
       which=st.integers(0, 5), sweep=st.integers(0, 1))
def test_two_spike_times_in_one_step_are_refused_naming_the_sweep_and_times(steps, offsets,
                                                                          which, sweep):
    """Times that round to one step of dt (a duplicate, or two within
    ±dt/2) would reset the forced model twice at once; distinct steps are
    one spike each."""
    currents = [np.zeros(1000), np.zeros(1000)]
    distinct = sorted(set(steps))
    times = [k * DT for k in distinct]
    fine = Recording(currents, DT, spike_times=[times, []][::1 - 2 * sweep])
    assert fine.arrays()["spikes"].max() == 1.0
    assert fine.arrays()["spikes"].sum() == len(distinct)
    k = distinct[which % len(distinct)]
    pair = [max(k * DT + o, 0.0) for o in offsets]
    bad = [times + pair, []][::1 - 2 * sweep]
    with pytest.raises(ConfigError) as info:
        Recording(currents, DT, spike_times=bad)
    message = str(info.value)
    assert message.startswith(f"spike_times[{sweep}] = ["), message
    assert "violates the rule: at most one spike per step of dt = 0.1 ms" in message
    assert f"step(s) [{k}]" in message, message


@pytest.mark.parametrize("where", ["currents", "potential", "spike_times"])
@pytest.mark.parametrize("make", [
    lambda x: [np.asarray(x, np.complex128)],
    lambda x: np.asarray(x, np.complex64)[:, None],
    lambda x: [list(np.asarray(x) + 0j)],
    lambda x: [jnp.asarray(x, jnp.complex64)]])
def test_complex_sweeps_are_refused_never_cast(where, make):
    values = {"currents": np.zeros(100), "potential": np.full(100, -70.0),
              "spike_times": np.array([1.0, 5.0])}
    kwargs = {n: [v] for n, v in values.items()}
    kwargs[where] = make(values[where])
    if where == "spike_times" and not isinstance(kwargs[where], list):
        kwargs[where] = list(kwargs[where].T)
    with pytest.raises(ConfigError, match=rf"{where}(\[0\])? = .*complex.* violates the rule: "
                                          "real numbers"):
        Recording(kwargs.pop("currents"), DT, **kwargs)


@pytest.mark.parametrize("field", ["van_rossum_tau", "upswing", "potential", "count",
                                   "van_rossum"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, np.float32(np.inf), "1",
                                   1 + 0j, True, None])
def test_loss_settings_must_be_finite_real_numbers(field, value):
    with pytest.raises(ConfigError, match=rf"Loss.{field} = .* violates the rule: .*finite"):
        Loss(**{field: value})


@pytest.mark.parametrize("value", [np.int64(3), np.float32(5.0), jnp.float32(2.5),
                                   np.array(4.0), __import__("fractions").Fraction(3, 2)])
def test_any_real_scalar_is_a_loss_setting(value):
    loss = Loss(potential=value, count=value, van_rossum_tau=value, upswing=value)
    assert loss.van_rossum_tau == float(value) and type(loss.van_rossum_tau) is float
    assert hash(loss) == hash(Loss(potential=float(value), count=float(value),
                                   van_rossum_tau=float(value), upswing=float(value)))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_half_precision_soma_is_fitted_by_the_default_recipe(dtype):
    """The optimizer works in float32 and the soma in its own dtype: the
    default (forced L-BFGS) fit of τ_m runs and recovers it to the dtype's
    resolution; the fitted soma keeps the dtype."""
    data = record(ss.AdaptiveExponentialSomaConfig(potential_tau=12.0), [-200.0, 700.0],
                  length=50.0, sweep=100.0)
    soma = ss.AdaptiveExponentialSoma(units=1, dtype=dtype, param_dtype=dtype)
    result = fitting.fit_soma(soma, data, ["potential_tau"])
    assert result.params["potential_tau"] == pytest.approx(12.0, rel=0.03)
    assert result.history[0][-1, 0] < 0.1 * result.history[0][0, 0]
    assert result.fitted_soma().param_dtype == jnp.dtype(dtype)


def test_coincidence_factor_of_identical_trains_is_one_even_at_two_nu_delta_one():
    """2νΔ = 1: one spike in 8 ms at Δ = 4 ms, two in 16 ms, …; identical
    trains score 1 wherever N = 1 − 2νΔ is; a different train there is NaN."""
    for n in (1, 2, 5):
        t = np.arange(n) * 8.0 + 1.0
        assert fitting.coincidence_factor(t, t, 8.0 * n) == 1.0
        assert math.isnan(fitting.coincidence_factor(t, t + 0.5, 8.0 * n))
        assert math.isnan(fitting.coincidence_factor(t, t[:-1], 4.0 * n))  # 2νΔ = 2


@settings(max_examples=80, deadline=None)
@given(times=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=40),
       duration=st.floats(1.0, 200.0), delta=st.floats(0.1, 20.0))
def test_coincidence_factor_of_a_train_with_itself_is_one(times, duration, delta):
    t = np.array(times)
    assert fitting.coincidence_factor(t, t[::-1], duration, delta=delta) == 1.0
    other = fitting.coincidence_factor(t, t + delta * 3, duration, delta=delta)
    norm = 1 - 2 * len(t) / duration * delta
    assert math.isnan(other) if norm <= 0 else math.isfinite(other)


@pytest.mark.parametrize("kwargs, message", [
    (dict(model=[1.0, np.nan], data=[1.0]), r"model\[1\] = nan violates the rule: a finite"),
    (dict(model=[1.0], data=[np.inf]), r"data\[0\] = inf violates the rule: a finite"),
    (dict(model=np.ones((2, 3)), data=[1.0]), r"model of shape \(2, 3\) violates the rule: one "
                                              "train: a 1-D array"),
    (dict(model=[1.0], data=np.ones((3, 1))), r"data of shape \(3, 1\) violates"),
    (dict(model=2.0, data=[1.0]), r"model of shape \(\) violates"),
    (dict(model=[1.0], data=[1.0 + 1j]), "data = 'an array of complex128' violates the rule: real"),
    (dict(model=[1.0], data=[1.0], duration=np.inf), "duration = inf violates the rule"),
    (dict(model=[1.0], data=[1.0], delta=np.nan), "delta = nan violates the rule"),
])
def test_coincidence_factor_refuses_trains_that_are_not_one_finite_train(kwargs, message):
    args = {"duration": 100.0, **kwargs}
    with pytest.raises(ConfigError, match=message):
        fitting.coincidence_factor(args.pop("model"), args.pop("data"), **args)


@pytest.mark.parametrize("dt", [np.float32(0.1), jnp.float32(0.1), np.array(0.1), np.float64(0.1),
                                __import__("fractions").Fraction(1, 10), np.int64(1),
                                jnp.array(0.25)])
def test_any_real_scalar_is_a_recordings_dt(dt):
    data = Recording([np.zeros(100)], dt, potential=[np.full(100, -70.0)])
    assert data.dt == float(dt) and type(data.dt) is float
    soma = ss.ExponentialSoma(units=1, dt=dt)
    assert same_dt(soma.dt, data.dt)


@pytest.mark.parametrize("dt", [True, "0.1", np.array([0.1]), 0j, 0.0, math.nan, 1e7, None])
def test_a_recording_dt_that_is_no_number_or_out_of_range_is_refused(dt):
    with pytest.raises(ConfigError, match=f"dt = .* violates the rule: a time step in ms, a real "
                                          f"number 1e-06 ≤ dt ≤ 1e\\+06"):
        Recording([np.zeros(100)], dt, potential=[np.full(100, -70.0)])


@pytest.mark.usefixtures("no_simulation")
@pytest.mark.parametrize("held_dt, refused", [(0.30000000000000004 - 0.2, False),
                                              (0.1 * (1 + 1e-10), False), (0.1 * (1 + 1e-6), True),
                                              (0.1001, True)])
def test_a_held_out_dt_is_the_recordings_to_the_somas_tolerance(held_dt, refused):
    train = small_recording()
    held = Recording(train.currents, held_dt, potential=train.potential,
                     spike_times=train.spike_times)
    run = lambda: fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1), train,  # noqa: E731
                                   ["potential_tau"], held_out=held)
    if not refused:
        with pytest.raises(AssertionError, match="simulated before refusing"):
            run()
        return
    with pytest.raises(ConfigError) as info:
        run()
    message = str(info.value)
    assert message == (f"held_out.dt = {held.dt!r} violates the rule: the recording's sampling "
                       "interval, 0.1 ms"), message


def fake_result(params, initial):
    """A FitResult of one start, without a fit."""
    return fitting.FitResult(
        params=params, starts={n: np.array([v]) for n, v in params.items()},
        initial={n: np.array([v]) for n, v in initial.items()}, best=0,
        held_out_loss=np.zeros(1), history=(np.zeros((2, 1)),), evaluations=2,
        stages=(Stage(tuple(params)),), wall_s=0.0, soma=ss.AdaptiveExponentialSoma(units=1))


@pytest.mark.parametrize("field, units", [("adaptation_subthreshold", "nS"),
                                          ("adaptation_delta", "pA"), ("potential_rest", "mV")])
@pytest.mark.parametrize("fitted", [0.5, -2.0, 0.0])
def test_the_report_gives_an_absolute_error_with_units_where_the_truth_is_zero(field, units,
                                                                                fitted):
    result = fake_result({field: fitted, "potential_tau": 10.0},
                         {field: 1.0, "potential_tau": 12.0})
    lines = result.report(truth={field: 0.0, "potential_tau": 8.0}).splitlines()
    row = next(line for line in lines if line.startswith(field))
    assert row.endswith(f"{fitted:+.3g} {units}") and "%" not in row, row
    tau = next(line for line in lines if line.startswith("potential_tau"))
    assert tau.endswith("+25.00%"), tau


@pytest.mark.usefixtures("no_simulation")
@pytest.mark.parametrize("case, message", [
    (lambda r: fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1), r, ["potential_tau"],
                                bounds={"potential_tau": 20.0}),
     "bounds['potential_tau'] = 20.0 violates the rule: a pair (low, high) of real numbers"),
    (lambda r: fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1), r, ["potential_tau"],
                                bounds={"potential_tau": (1.0, 2.0, 3.0)}),
     "bounds['potential_tau'] = (1.0, 2.0, 3.0) violates the rule: a pair"),
    (lambda r: fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1), r, ["potential_tau"],
                                bounds={"potential_tau": "ab"}),
     "bounds['potential_tau'] = 'ab' violates the rule: a pair"),
    (lambda r: fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1), r, ["potential_tau"],
                                bounds={"potential_tau": (1.0, None)}),
     "bounds['potential_tau'] = (1.0, None) violates the rule: a pair"),
    (lambda r: fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1), r, ["potential_tau"],
                                bounds=[("potential_tau", (1.0, 2.0))]),
     "bounds = [('potential_tau', (1.0, 2.0))] violates the rule: None or a dict"),
    (lambda r: fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1), r, ["potential_tau"],
                                starts=2.0), "starts = 2.0 violates the rule: an int ≥ 1"),
    (lambda r: fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1), r, ["potential_tau"],
                                starts=np.int64(0)), "starts = np.int64(0) violates the rule"),
    (lambda r: Stage(5), "Stage.fields = 5 violates the rule: a field name or a sequence"),
    (lambda r: Stage(None), "Stage.fields = None violates the rule: a field name"),
    (lambda r: Stage(("potential_tau", 3)), "Stage.fields = ('potential_tau', 3) violates"),
    (lambda r: Stage(()), "Stage.fields = () violates the rule: a field name or a non-empty"),
    (lambda r: Stage("potential_tau", loss=1.0), "Stage.loss = 1.0 violates the rule: a "),
    (lambda r: Stage("potential_tau", sweeps=(0.7,)),
     "Stage.sweeps[0] = 0.7 violates the rule: a sweep index, an int"),
    (lambda r: Stage("potential_tau", sweeps=(0, np.float64(1.0))),
     "Stage.sweeps[1] = np.float64(1.0) violates the rule: a sweep index"),
    (lambda r: Stage("potential_tau", sweeps=3),
     "Stage.sweeps = 3 violates the rule: 'all', 'subthreshold', 'spiking' or sweep indices"),
    (lambda r: Stage("potential_tau", steps=2.5), "Stage.steps = 2.5 violates the rule: an int"),
    (lambda r: Stage("potential_tau", steps=np.int32(0)), "Stage.steps = np.int32(0) violates"),
    (lambda r: Stage("potential_tau", learning_rate=np.inf),
     "Stage.learning_rate = inf violates the rule: finite, > 0"),
])
def test_malformed_bounds_stages_and_starts_are_refused_by_name(case, message):
    with pytest.raises(ConfigError) as info:
        case(small_recording())
    assert message in str(info.value), str(info.value)


@pytest.mark.parametrize("integer", [np.int64, np.int32, np.uint8, jnp.int32])
def test_numpy_and_jax_integers_are_steps_sweeps_and_starts(integer):
    stage = Stage(("potential_tau",), Loss(potential=integer(1)), (integer(0), integer(1)),
                  "lbfgs", integer(2))
    assert stage.sweeps == (0, 1) and stage.steps == 2 and type(stage.steps) is int
    result = fitting.fit_soma(ss.AdaptiveExponentialSoma(units=1), small_recording(),
                              ["potential_tau"], stages=[stage], starts=integer(2),
                              bounds={"potential_tau": (np.float32(1.0), integer(50))})
    assert result.starts["potential_tau"].shape == (2,)
    assert np.all((result.starts["potential_tau"] >= 1.0) & (result.starts["potential_tau"] <= 50))


def test_more_starts_than_memory_holds_is_a_named_memory_error():
    """Starts whose very initial values exceed any machine: refused by the
    package's OutOfMemoryError naming the starts, the sweeps and the bytes."""
    with pytest.raises(ss.errors.OutOfMemoryError, match=re.escape(
            "fit_soma: starts = 1000000000000 (2 sweeps of up to 1000 steps each) needs about "
            "4.8e+16 bytes, more than the device could allocate")):
        fitting.fit_soma(ss.AdaptiveExponentialSoma, small_recording(), ("potential_tau",),
                         starts=10**12)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux's")
def test_a_fit_whose_run_exceeds_the_memory_limit_is_a_named_memory_error():
    """Starts that fit in the machine's memory but whose run of all at once
    does not fit the process: XLA's RESOURCE_EXHAUSTED becomes the named
    error (a process under a 6 GiB address-space limit; the run needs about
    10 GB, less than the machine has, so nothing refuses it beforehand).
    One field and two, in one process (one start-up of JAX), each fit's
    outcome on its own line. One Adam step: its gradient keeps every step
    of every sweep of every start as any stage's does, and compiles in a
    fraction of the time of the default L-BFGS stage."""
    cases = [("potential_tau",), ("potential_tau", "adaptation_delta")]
    code = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))
        import sys
        sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})
        import spark_somas as ss
        from spark_somas import fitting
        from test_fitting import small_recording
        for fields in {cases!r}:
            try:
                fitting.fit_soma(ss.AdaptiveExponentialSoma, small_recording(), fields,
                                 starts=2 * 10**5,
                                 stages=[fitting.Stage(fields, fitting.Loss(), "all", "adam", 1)])
                print(fields, "no error")
            except ss.errors.OutOfMemoryError as err:
                print(fields, err)
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    lines = done.stdout.splitlines()
    assert len(lines) == len(cases), done.stdout + done.stderr[-2000:]
    for fields, line in zip(cases, lines):
        assert re.fullmatch(re.escape(repr(fields)) + r" fit_soma: starts = 200000 \(2 sweeps of "
                            r"up to 1000 steps each\) needs about \S+ bytes, more than the "
                            r"device could allocate", line), done.stdout + done.stderr[-2000:]
