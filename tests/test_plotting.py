"""Plot helpers: each returns a Figure whose artists carry the data given."""

import matplotlib

matplotlib.use("Agg")

import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import EventCollection, LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import spark_somas as ss  # noqa: E402
from spark_somas import plotting, presets  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_voltage_trace_draws_v_and_one_stroke_per_spike():
    v = np.array([-70.0, -60.0, -50.0, -70.0, -65.0, -70.0])
    s = np.array([0, 0, 0, 1, 0, 1])
    fig, ax = plotting.voltage_trace(v, s, dt=0.5, peak=20.0)
    assert isinstance(fig, Figure)
    np.testing.assert_allclose(ax.lines[0].get_xdata(), np.arange(6) * 0.5)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), v)
    (strokes,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    segments = strokes.get_segments()
    assert [tuple(seg[:, 0]) for seg in segments] == [(1.5, 1.5), (2.5, 2.5)]
    assert all(seg[1, 1] == 20.0 for seg in segments)
    with pytest.raises(ValueError, match="must match"):
        plotting.voltage_trace(v, s[:3])
    _, ax = plotting.voltage_trace(v, s, dt=0.5, start_ms=100.0)
    assert ax.lines[0].get_xdata()[0] == 100.0


def test_voltage_trace_draws_on_given_axes():
    fig, ax = plt.subplots()
    assert plotting.voltage_trace(np.zeros(4), ax=ax) == (fig, ax)


def test_raster_has_one_row_of_ticks_per_neuron_at_the_spike_times():
    spikes = np.zeros((10, 3))
    spikes[[2, 7], 0] = 1
    spikes[5, 2] = 1
    fig, ax = plotting.raster(spikes, dt=0.1)
    rows = [c for c in ax.collections if isinstance(c, EventCollection)]
    assert len(rows) == 3
    np.testing.assert_allclose(rows[0].get_positions(), [0.2, 0.7])
    assert list(rows[1].get_positions()) == []
    np.testing.assert_allclose(rows[2].get_positions(), [0.5])


def test_firing_rates_count_spikes_and_leave_the_soma_state_alone():
    soma = ss.ExponentialSoma(units=1)
    soma(jnp.full((1,), 300.0))  # move off rest: the state must come back unchanged
    before = soma.potential[...]
    rates = plotting.firing_rates(soma, [0.0, 800.0, 1600.0], duration_ms=200.0)
    assert rates.shape == (3, 1)
    np.testing.assert_array_equal(soma.potential[...], before)
    # Reference: one unbatched run per current.
    for current, rate in zip([0.0, 800.0, 1600.0], rates[:, 0]):
        ref = ss.ExponentialSoma(units=1)
        count = float(ss.simulate(ref, jnp.full((2000, 1), current)).spikes.sum())
        assert rate == pytest.approx(count / 0.2)
    assert rates[0, 0] == 0.0 and 0.0 < rates[1, 0] < rates[2, 0]
    with pytest.raises(ValueError, match="transient_ms"):
        plotting.firing_rates(soma, [0.0], duration_ms=10.0, transient_ms=10.0)


def test_fi_curve_plots_rates_against_currents():
    currents = [0.0, 400.0, 800.0, 1200.0]
    fig, ax = plotting.fi_curve(ss.AdaptiveExponentialSoma(units=1), currents, duration_ms=100.0)
    assert isinstance(fig, Figure)
    np.testing.assert_allclose(ax.lines[0].get_xdata(), currents)
    rates = plotting.firing_rates(ss.AdaptiveExponentialSoma(units=1), currents, duration_ms=100.0)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), rates[:, 0])


def test_phase_plane_nullclines_follow_the_adex_equations():
    cfg = presets.get("regular_bursting").config
    current = 210.0
    fig, ax = plotting.phase_plane(cfg, current)
    v_null, w_null = ax.lines[0], ax.lines[1]
    v = v_null.get_xdata()
    # dV/dt = 0 and dw/dt = 0 evaluated with the soma's own step: V and w stay put.
    soma = ss.AdaptiveExponentialSoma(cfg, units=len(v), dt=1.0)  # large: errors show
    soma.potential[...] = jnp.asarray(v, jnp.float32)
    soma.adaptation[...] = jnp.asarray(v_null.get_ydata(), jnp.float32)
    out = soma(jnp.full((len(v),), current))
    np.testing.assert_allclose(out.potential, v, atol=1e-3)
    np.testing.assert_allclose(w_null.get_ydata(), cfg.adaptation_subthreshold * (v - cfg.potential_rest))
    assert ax.get_xlim() == (v[0], v[-1])


def test_phase_plane_draws_a_recorded_trajectory_and_rejects_non_adex():
    p = presets.get("regular_bursting")
    soma = p.soma()
    rec = ss.simulate(soma, p.currents(duration_ms=50.0)[:, None],
                      record=("spikes", "potential", "adaptation"))
    fig, ax = plotting.phase_plane(soma, p.current_pA, potential=rec.potential[:, 0],
                                   adaptation=rec.adaptation[:, 0])
    (trajectory,) = [line for line in ax.lines if line.get_label() == "trajectory"]
    np.testing.assert_allclose(trajectory.get_ydata(), np.asarray(rec.adaptation[:, 0]))
    with pytest.raises(ValueError, match="AdEx"):
        plotting.phase_plane(ss.ExponentialSomaConfig(), 0.0)
    with pytest.raises(ValueError, match="adaptation"):
        plotting.phase_plane(soma, 0.0, potential=rec.potential[:, 0])
