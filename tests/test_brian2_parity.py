"""Spike-time parity with Brian2 (``method='euler'``, numpy target, same dt).

Conventions, checked here rather than assumed:

* Step index. Brian2's clock runs ``t = k·dt``; in that time step its state
  updater integrates with the input at ``t`` (our ``currents[k]``; a
  ``TimedArray`` with the same dt returns sample k on [k·dt, (k+1)·dt)), then
  its thresholder tests ``v > Vth`` and a ``SpikeMonitor`` stamps the spike
  ``t = k·dt``. So ``round(t_spike/dt)`` is our step index k, the step whose
  update crossed V_th; the parity tests below compare exactly those indices,
  and a shift by one step in either direction would fail them. A
  ``StateMonitor`` (``when='start'``) sees V before the update, so Brian2's
  sample k+1 is our ``out.potential[k]``: :func:`test_potential_matches_state_monitor_shifted_by_one`.
* Precision. Brian2 computes in float64 (in SI units). The parity runs use
  the somas in float64 (``jax.enable_x64`` around building and running them,
  ``dtype=param_dtype=float64``), so the two differ only by float64 rounding
  and spike steps must agree exactly, for every neuron, on step and noisy
  currents. A float32 soma accumulates ~1e-7 relative rounding per step; on a
  noisy input that can move a spike by one step now and then, so for float32
  only the step currents (300 ms, far from rheobase) are required to agree
  exactly: :func:`test_float32_soma_matches_brian2_on_step_currents`.

Parameter sets (units mV, ms, pA, GΩ, nS): Brette & Gerstner (2005, J.
Neurophysiol. 94:3637; cut-off V_T + 5Δ_T as in Brian2's AdEx example) and
Naud, Marcille, Clopath & Gerstner (2008, Biol. Cybern. 99:335, Table 1:
"adaptation" and "regular bursting", cut-off 0 mV, i.e. (V_th − V_T)/Δ_T = 25).
The ExpIF and refractory models use the same sets without a, b, τ_w.

The simplified adaptive model has no Brian2 counterpart here; it is held to
``tests/reference.py`` (float64 NumPy loop of the documented equations), an oracle that is
itself held to Brian2 on the three other models in the same test.
"""

from __future__ import annotations

import functools

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
import spark_somas as ss

with warnings.catch_warnings():  # Brian2 2.9 still uses pyparsing's deprecated camelCase names
    warnings.simplefilter("ignore", DeprecationWarning)
    import brian2 as b2

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:(brian2|pyparsing)")

b2.prefs.codegen.target = "numpy"
b2.prefs.logging.file_log = False

DT = 0.1  # ms
T = 3000  # 300 ms
ONSET = 200  # step currents start after 20 ms

# (C pF, g_L nS) -> τ_m = C/g_L ms, R = 1/g_L GΩ.
SETS = {
    "brette_gerstner_2005": dict(
        potential_rest=-70.6, potential_reset=-70.6, potential_tau=281.0 / 30.0,
        resistance=1.0 / 30.0, threshold=-40.4, rheobase_threshold=-50.4, spike_slope=2.0,
        adaptation_tau=144.0, adaptation_delta=80.5, adaptation_subthreshold=4.0,
        cooldown=2.0, threshold_tau=50.0, threshold_delta=2.0, current=800.0),
    "naud_2008_adaptation": dict(
        potential_rest=-70.0, potential_reset=-58.0, potential_tau=200.0 / 12.0,
        resistance=1.0 / 12.0, threshold=0.0, rheobase_threshold=-50.0, spike_slope=2.0,
        adaptation_tau=300.0, adaptation_delta=60.0, adaptation_subthreshold=2.0,
        cooldown=1.0, threshold_tau=100.0, threshold_delta=4.0, current=500.0),
    "naud_2008_regular_bursting": dict(
        potential_rest=-58.0, potential_reset=-46.0, potential_tau=20.0,
        resistance=1.0 / 10.0, threshold=0.0, rheobase_threshold=-50.0, spike_slope=2.0,
        adaptation_tau=120.0, adaptation_delta=100.0, adaptation_subthreshold=2.0,
        cooldown=0.3, threshold_tau=20.0, threshold_delta=1.0, current=210.0),
}

# config field -> (Brian2 name, Brian2 unit)
BRIAN = {
    "potential_rest": ("EL", b2.mV), "potential_reset": ("Vr", b2.mV),
    "potential_tau": ("taum", b2.ms), "resistance": ("R", b2.Gohm),
    "threshold": ("Vth", b2.mV), "rheobase_threshold": ("VT", b2.mV),
    "spike_slope": ("DeltaT", b2.mV), "cooldown": ("t_ref", b2.ms),
    "adaptation_tau": ("tauw", b2.ms), "adaptation_delta": ("b", b2.pA),
    "adaptation_subthreshold": ("a", b2.nS),
}
BRIAN_MODELS = ("expif", "refractory", "adex")
FIELDS = {model: tuple(f.name for f in ss.SOMAS[model].config_class.quantity_fields())
          for model in reference.MODELS}


def brian2_run(model: str, params: dict[str, np.ndarray], currents: np.ndarray,
               dt: float = DT, method: str = "euler") -> tuple[list[np.ndarray], np.ndarray]:
    """Brian2 numpy run of ``model``; per-neuron spike step indices and V (N, T) in mV
    (V at the start of each step).

    ``I`` is a per-neuron variable set from the samples at the start of each
    step (``run_regularly(..., when="start")``), so that every stage of a
    multi-stage ``method`` sees the step's own current; a ``TimedArray`` read
    in the equations would be evaluated at t + c·dt and feed stage 4 of rk4
    the next step's sample. For Euler the two are the same.
    """
    steps, n = currents.shape
    adaptive, refractory = model == "adex", model == "refractory"
    eqs = ("dv/dt = (-(v - EL) + DeltaT*exp((v - VT)/DeltaT)"
           + (" - R*w" if adaptive else "") + " + R*I)/taum : volt"
           + (" (unless refractory)" if refractory else "") + "\nI : amp\n")
    if adaptive:
        eqs += "dw/dt = (a*(v - EL) - w)/tauw : amp\n"
    eqs += "".join(f"{BRIAN[f][0]} : {b2.get_unit(BRIAN[f][1].dim)!r}\n" for f in FIELDS[model])
    b2.defaultclock.dt = dt * b2.ms
    group = b2.NeuronGroup(
        n, eqs, threshold="v > Vth", reset="v = Vr" + ("; w += b" if adaptive else ""),
        refractory="t_ref" if refractory else False, method=method,
        namespace={"I_arr": b2.TimedArray(currents * b2.pA, dt=dt * b2.ms)})
    group.run_regularly("I = I_arr(t, i)", when="start")
    for field in FIELDS[model]:
        name, unit = BRIAN[field]
        setattr(group, name, params[field] * unit)
    group.v = params["potential_rest"] * b2.mV
    spikes, trace = b2.SpikeMonitor(group), b2.StateMonitor(group, "v", record=True)
    with np.errstate(over="ignore", invalid="ignore"):
        b2.Network(group, spikes, trace).run(steps * dt * b2.ms)
    assert trace.v.shape == (n, steps)
    trains = spikes.spike_trains()
    return ([np.round(np.asarray(trains[i] / (dt * b2.ms))).astype(int) for i in range(n)],
            np.asarray(trace.v / b2.mV))


def soma_run(model: str, params: dict[str, np.ndarray], currents: np.ndarray,
             dtype=jnp.float64, dt: float = DT,
             record: tuple[str, ...] = ("spikes", "potential")) -> dict[str, np.ndarray]:
    """Same run with our soma; the recorded fields as float64 arrays (T, N)."""
    with jax.enable_x64(jnp.dtype(dtype) == jnp.float64):
        soma = ss.SOMAS[model](units=currents.shape[1], dt=dt, dtype=dtype, param_dtype=dtype,
                               **{f: params[f] for f in FIELDS[model]})
        out = ss.simulate(soma, jnp.asarray(currents, dtype), record=record)
        return {k: np.asarray(getattr(out, k), np.float64) for k in record}


def spike_steps(spikes: np.ndarray) -> list[np.ndarray]:
    """Step indices of the spikes of each neuron of a (T, N) 0/1 raster."""
    return [np.flatnonzero(s) for s in np.asarray(spikes).T]


def population() -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """Per set: two step currents (I, 2I from 20 ms) and two frozen noisy ones
    (mean I, s.d. I/2 per 0.1 ms sample, seeded). Returns per-neuron
    parameters, currents (T, N) in pA and a label per neuron."""
    rng = np.random.default_rng(2005)
    params: dict[str, list[float]] = {f: [] for f in FIELDS["simplified"] + FIELDS["adex"]}
    columns, labels = [], []
    for name, s in SETS.items():
        step = np.where(np.arange(T) >= ONSET, s["current"], 0.0)
        for label, column in (("step", step), ("step", 2 * step),
                              ("noisy", rng.normal(s["current"], s["current"] / 2, T)),
                              ("noisy", rng.normal(s["current"], s["current"] / 2, T))):
            columns.append(column)
            labels.append(f"{name}/{label}")
            for f in params:
                params[f].append(s[f])
    return {f: np.asarray(v) for f, v in params.items()}, np.stack(columns, 1), labels


@functools.cache
def runs(model: str):
    params, currents, labels = population()
    return params, currents, labels, brian2_run(model, params, currents)


@pytest.mark.parametrize("model", BRIAN_MODELS)
def test_spike_steps_match_brian2(model):
    params, currents, labels, (b2_spikes, _) = runs(model)
    ours = spike_steps(soma_run(model, params, currents)["spikes"])
    for label, theirs, mine in zip(labels, b2_spikes, ours):
        assert len(theirs) >= 3, f"{label}: the test needs spikes, Brian2 gave {len(theirs)}"
        np.testing.assert_array_equal(mine, theirs, err_msg=f"{model} {label}")


@pytest.mark.parametrize("model", BRIAN_MODELS)
def test_potential_matches_state_monitor_shifted_by_one(model):
    """Brian2's StateMonitor sample k+1 (start of step k+1) is our V after step k."""
    params, currents, labels, (_, b2_v) = runs(model)
    ours = soma_run(model, params, currents)["potential"]
    np.testing.assert_allclose(ours[:-1], b2_v.T[1:], rtol=0, atol=1e-8)  # mV
    np.testing.assert_allclose(b2_v[:, 0], params["potential_rest"])


@pytest.mark.parametrize("model", BRIAN_MODELS)
def test_float32_soma_matches_brian2_on_step_currents(model):
    params, currents, labels, (b2_spikes, _) = runs(model)
    ours = spike_steps(soma_run(model, params, currents, dtype=jnp.float32)["spikes"])
    for label, theirs, mine in zip(labels, b2_spikes, ours):
        if label.endswith("/step"):
            np.testing.assert_array_equal(mine, theirs, err_msg=f"{model} {label}")


@pytest.mark.parametrize("model", reference.MODELS)
def test_reference_parity(model):
    """All four somas (float64) against the NumPy oracle: same spikes, same
    state after every step; and the oracle's spikes against Brian2's."""
    params, currents, labels = population()
    expected = reference.simulate(model, params, currents, DT)
    record = ("spikes", "potential") + tuple(
        k for k in ("adaptation", "threshold_offset") if k in ss.SOMAS[model].state_names)
    ours = soma_run(model, params, currents, record=record)
    for label, mine, theirs in zip(labels, spike_steps(ours["spikes"]),
                                   spike_steps(expected["spikes"])):
        assert len(theirs) >= 3, f"{label}: the test needs spikes, the oracle gave {len(theirs)}"
        np.testing.assert_array_equal(mine, theirs, err_msg=f"{model} {label}")
    for k in record[1:]:
        np.testing.assert_allclose(ours[k], expected[k], rtol=0, atol=1e-8, err_msg=k)
    if model in BRIAN_MODELS:
        for label, mine, theirs in zip(labels, spike_steps(expected["spikes"]), runs(model)[3][0]):
            np.testing.assert_array_equal(mine, theirs, err_msg=f"oracle vs Brian2 {label}")


COOLDOWNS = [0.0, 0.05, 0.1, 0.25, 0.3, 0.7, 1.0, 2.0]  # ms; 0.3/0.1 = 2.9999999999999996


def test_refractory_convention_matches_brian2():
    """A current that crosses V_th from V_r in one step makes every allowed
    step a spike: the interval is then the refractory period itself, max(n, 1)
    steps with n = floor(t_ref/dt + 1e-3), in Brian2 and in the soma."""
    steps, n = 500, len(COOLDOWNS)
    params = {f: np.full(n, v) for f, v in SETS["brette_gerstner_2005"].items()}
    params["cooldown"] = np.asarray(COOLDOWNS)
    currents = np.full((steps, n), 2e5)  # R·I·dt/τ_m ≈ 71 mV > V_th − V_r per step
    b2_spikes, _ = brian2_run("refractory", params, currents)
    ours = spike_steps(soma_run("refractory", params, currents, dtype=jnp.float32)["spikes"])
    for t_ref, theirs, mine in zip(COOLDOWNS, b2_spikes, ours):
        interval = max(int(np.floor(t_ref / DT + 1e-3)), 1)
        np.testing.assert_array_equal(theirs, np.arange(0, steps, interval), err_msg=f"{t_ref}")
        np.testing.assert_array_equal(mine, theirs, err_msg=f"t_ref = {t_ref} ms")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16])
def test_refractory_counter_never_wraps(dtype):
    """70,050 steps (> 65,535, where a 16-bit counter would wrap).

    Neuron 0: t_ref = 7000 ms is n = 70,000 steps under a current that fires
    whenever allowed: exactly two spikes, at steps 0 and 70,000. Neuron 1:
    t_ref = 2 ms, a one-step pulse at step 0, silence for 70,000 steps, then
    the strong current again: it fires at once and every 20 steps after.
    (bfloat16 scans are ~100x slower on XLA's CPU backend; it gets the short
    check below.)
    """
    steps, strong = 70_050, 2e5
    currents = np.zeros((steps, 2), np.float32)
    currents[:, 0] = strong
    currents[0, 1] = currents[70_000:, 1] = strong
    soma = ss.RefractoryExponentialSoma(units=2, dtype=dtype, cooldown=np.array([7000.0, 2.0]))
    out = ss.simulate(soma, jnp.asarray(currents), record=("spikes",))
    spikes = np.asarray(out.spikes, np.float32)
    np.testing.assert_array_equal(np.flatnonzero(spikes[:, 0]), [0, 70_000])
    np.testing.assert_array_equal(np.flatnonzero(spikes[:, 1]), [0, 70_000, 70_020, 70_040])
    # n − 1 steps left after the last spike (at 70,000 and 70,040), minus those run since.
    np.testing.assert_array_equal(np.asarray(soma.refractory[...]), [69_999 - 49, 19 - 9])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_refractory_counter_counts_exactly_beyond_the_state_dtype(dtype):
    """n = 70,000 steps in a bfloat16/float16 soma: after the spike at step 0
    and 100 more steps the counter reads exactly 69,999 − 100 (neither format
    can hold 69,899), and no second spike has come."""
    soma = ss.RefractoryExponentialSoma(units=1, dtype=dtype, cooldown=7000.0)
    out = ss.simulate(soma, jnp.full((101, 1), 2e5, jnp.float32), record=("spikes",))
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(out.spikes, np.float32)), [0])
    assert soma.refractory[...].dtype == jnp.int32
    assert int(soma.refractory[...][0]) == 69_999 - 100
