"""Property-based checks of the numerics guarantees over the legal space.

Hypothesis draws legal configs — shallow and steep spike initiation
(Δ_T from 10^-3 to 10 mV, cut-offs up to 10^4 Δ_T above V_T), per-neuron
arrays, the corners of the representable range (every field at ±10^6 or
10^-6) — with dtypes, dt and input currents (normal, Ornstein–Uhlenbeck,
±huge, ±the dtype's largest value, an isolated ±inf). It asserts

* finiteness of values, spikes and gradients, spikes in {0, 1};
* the reset and refractory rules on every trajectory;
* equality with the float64 NumPy loop of ``reference.py`` wherever that
  loop's state stays finite and within the state range.

Derandomised (the same examples on every run) and bounded; dt is drawn from a
few values so that compiled programs are shared between examples. Each
example is a population of UNITS neurons whose fields are drawn neuron by
neuron, so one compiled run checks UNITS parameter sets at once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, reject, settings, strategies as st

import reference
from test_numerics import assert_finite
import spark_somas as ss
from spark_somas import configs, numerics

MODELS = list(ss.SOMAS)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
DTS = (0.001, 0.01, 0.1, 1.0, 2.0)
UNITS, STEPS = 8, 40
SETTINGS = settings(derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def fields_of(model: str) -> tuple[str, ...]:
    return tuple(f.name for f in ss.SOMAS[model].config_class.quantity_fields())


def per_neuron(draw, low: float, high: float, log: bool = False) -> np.ndarray:
    """UNITS values in [low, high] (log-uniform when ``log``), the ends included."""
    corner = st.sampled_from([low, high])
    inner = st.floats(np.log10(low), np.log10(high)).map(lambda e: 10.0**e) if log else \
        st.floats(low, high)
    return np.array([draw(st.one_of(corner, inner, inner)) for _ in range(UNITS)])


@st.composite
def physical_params(draw, model: str) -> dict[str, np.ndarray]:
    """Legal sets a modeller would write, steep ones included: the float64
    Euler run of them stays within the state range for ordinary inputs."""
    v_t = per_neuron(draw, -70.0, -30.0)
    delta_t = per_neuron(draw, 1e-3, 10.0, log=True)
    ratio = per_neuron(draw, 0.5, 1e4, log=True)
    p = {
        "potential_rest": per_neuron(draw, -90.0, -50.0),
        "potential_tau": per_neuron(draw, 1.0, 100.0, log=True),
        "resistance": per_neuron(draw, 0.01, 1.0, log=True),
        "rheobase_threshold": v_t,
        "spike_slope": delta_t,
        "threshold": np.minimum(v_t + ratio * delta_t, 100.0),
        "cooldown": per_neuron(draw, 0.0, 5.0),
        "adaptation_tau": per_neuron(draw, 10.0, 500.0, log=True),
        "adaptation_delta": per_neuron(draw, 0.0, 200.0),
        "adaptation_subthreshold": per_neuron(draw, -2.0, 10.0),
        "threshold_tau": per_neuron(draw, 5.0, 200.0, log=True),
        "threshold_delta": per_neuron(draw, 0.0, 5.0),
    }
    p["potential_reset"] = np.minimum(per_neuron(draw, -90.0, -40.0), p["threshold"] - 1.0)
    return {k: p[k] for k in fields_of(model)}


@st.composite
def extreme_params(draw, model: str) -> dict[str, np.ndarray]:
    """Anywhere in the representable range, its corners included."""
    big, small = configs.LARGEST, configs.SMALLEST

    def signed():
        return per_neuron(draw, -big, big)

    def positive():
        return per_neuron(draw, small, big, log=True)

    p = {"potential_rest": signed(), "rheobase_threshold": signed(),
         "potential_tau": positive(), "resistance": positive(), "spike_slope": positive(),
         "cooldown": per_neuron(draw, 0.0, big), "adaptation_tau": positive(),
         "adaptation_delta": signed(), "adaptation_subthreshold": signed(),
         "threshold_tau": positive(), "threshold_delta": per_neuron(draw, 0.0, big)}
    gap = positive()
    p["threshold"] = np.minimum(p["rheobase_threshold"] + gap, big)
    p["rheobase_threshold"] = np.minimum(p["rheobase_threshold"], p["threshold"] - 1.0)
    p["potential_reset"] = np.maximum(p["threshold"] - positive(), -big)
    return {k: p[k] for k in fields_of(model)}


@st.composite
def currents(draw, dtype) -> np.ndarray:
    """(STEPS, UNITS) input of one kind, in pA."""
    kind = draw(st.sampled_from(["normal", "ou", "huge", "dtype_max", "isolated_inf"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    top = float(jnp.finfo(dtype).max)
    if kind == "normal":
        x = rng.normal(draw(st.floats(0.0, 3000.0)), draw(st.floats(0.0, 500.0)),
                       (STEPS, UNITS))
    elif kind == "ou":  # τ = 5 ms at dt = 1 ms, mean 800 pA, sd 300 pA
        x = np.empty((STEPS, UNITS))
        x[0] = 800.0
        for t in range(1, STEPS):
            x[t] = x[t - 1] + 0.2 * (800.0 - x[t - 1]) + 300.0 * np.sqrt(0.4) * rng.normal(
                size=UNITS)
    elif kind == "huge":
        x = draw(st.sampled_from([1e6, 1e12, 1e30])) * rng.choice([-1.0, 1.0], (STEPS, UNITS))
    elif kind == "dtype_max":
        x = top * rng.choice([-1.0, 1.0], (STEPS, UNITS))
    else:
        x = rng.normal(500.0, 200.0, (STEPS, UNITS))
        x[draw(st.integers(0, STEPS - 1)), draw(st.integers(0, UNITS - 1))] = \
            draw(st.sampled_from([np.inf, -np.inf]))
    return np.clip(x, -top, top) if kind != "isolated_inf" else x


def build(model: str, params: dict, dtype, dt: float, trainable=()):
    """The soma, or a rejected example where the constructor refuses it by
    name: a rule broken once the values are rounded to float32 parameters, or
    a half precision that cannot resolve dt/τ (both are documented refusals)."""
    param_dtype = jnp.float64 if dtype == jnp.float64 else jnp.float32
    try:
        return ss.SOMAS[model](units=UNITS, dt=dt, dtype=dtype, param_dtype=param_dtype,
                               trainable=trainable, **params)
    except ValueError as error:
        assert "violates the rule" in str(error) or "cannot resolve" in str(error), error
        reject()


def assert_reset_and_refractory(model: str, soma, spikes: np.ndarray, potential: np.ndarray,
                                dt: float) -> None:
    """After a spike V reads V_r; a refractory soma then holds V_r for n − 1
    steps and cannot spike for max(n, 1) steps."""
    v_r = np.broadcast_to(np.asarray(soma.potential_reset[...].astype(soma.dtype), np.float64),
                          (UNITS,))
    assert set(np.unique(spikes)) <= {0.0, 1.0}
    for t, n in zip(*np.nonzero(spikes)):
        assert potential[t, n] == v_r[n], (t, n, potential[t, n], v_r[n])
    if model in ("refractory", "simplified"):
        steps = np.floor(np.asarray(soma.cooldown[...], np.float64) / dt + 1e-3)
        steps = np.broadcast_to(np.minimum(steps, STEPS), (UNITS,)).astype(int)
        for t, n in zip(*np.nonzero(spikes)):
            hold = slice(t + 1, min(t + steps[n], STEPS))
            assert not spikes[hold, n].any(), (t, n, steps[n])
            np.testing.assert_array_equal(potential[hold, n], v_r[n])


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("model", MODELS)
@settings(SETTINGS, max_examples=5)
@given(data=st.data())
def test_finite_and_rule_abiding_for_any_legal_set_and_input(model, dtype, data):
    """Forward and backward through ``simulate``: finite, spikes 0/1, reset and
    refractory rules, for parameters anywhere in the legal range."""
    dtype = DTYPES[dtype]
    dt = data.draw(st.sampled_from(DTS), "dt")
    params = data.draw(st.one_of(physical_params(model), extreme_params(model)), "params")
    x = jnp.asarray(data.draw(currents(dtype), "currents"), dtype)
    soma = build(model, params, dtype, dt, trainable=fields_of(model))

    def loss(soma, x):
        rec = ss.simulate(soma, x)
        value = jnp.sum(rec.spikes.astype(jnp.float32)) + jnp.mean(
            rec.potential.astype(jnp.float32))
        return value, rec

    # Jitted: one compiled program, where the forward and backward passes would be two.
    (grad_soma, grad_x), rec = nnx.jit(nnx.grad(loss, argnums=(0, 1), has_aux=True))(soma, x)
    assert_finite((rec.spikes, rec.potential, soma.neuron_state()), "forward")
    assert_finite(grad_x, "d/dI")
    if dtype != jnp.float16:  # float16 parameter gradients may exceed the format
        assert_finite(nnx.state(grad_soma, nnx.Param), "d/dparam")
    assert_reset_and_refractory(model, soma, np.asarray(rec.spikes, np.float64),
                                np.asarray(rec.potential, np.float64), dt)


@pytest.mark.parametrize("model", MODELS)
@settings(SETTINGS, max_examples=10)
@given(data=st.data())
def test_equal_to_the_float64_euler_loop_wherever_it_is_representable(model, data):
    """In float64, the soma is the plain Euler loop (no taming) step for step,
    steep sets included, until that loop leaves the state range."""
    dt = data.draw(st.sampled_from(DTS), "dt")
    params = data.draw(physical_params(model), "params")
    x = data.draw(currents(jnp.float32), "currents")
    with np.errstate(over="ignore", invalid="ignore"):
        ref = reference.simulate(model, params, x, dt)
    state = np.stack([ref["potential"], ref["adaptation"], ref["threshold_offset"]])
    inside = np.all(np.isfinite(state) & (np.abs(state) <= numerics.STATE_LIMIT), axis=(0, 2))
    horizon = STEPS if inside.all() else int(np.argmin(inside))
    with jax.enable_x64(True):
        soma = build(model, params, jnp.float64, dt)
        rec = ss.simulate(soma, jnp.asarray(x, jnp.float64))
        spikes, potential = np.asarray(rec.spikes), np.asarray(rec.potential)
    np.testing.assert_array_equal(spikes[:horizon], ref["spikes"][:horizon])
    # Equal to float64 rounding of the largest term of the run: where a
    # 10^10 mV excursion cancels back to −90 mV, a fused multiply-add in one
    # and not the other leaves a few units in the last place of 10^10.
    terms = [np.abs(ref["potential"][:horizon]), np.abs(x[:horizon]) * params["resistance"],
             np.abs(ref["adaptation"][:horizon]) * params["resistance"]]
    scale = max(float(t.max(initial=0.0)) for t in terms) * max(1.0, dt / params[
        "potential_tau"].min())
    np.testing.assert_allclose(potential[:horizon], ref["potential"][:horizon],
                               rtol=1e-9, atol=1e-9 + 1e-14 * scale)


@pytest.mark.parametrize("ratio", [100.8, 1e4])
def test_steep_neurons_spike_where_the_float64_loop_overflows(ratio):
    """(V_th − V_T)/Δ_T of 100.8 and 10^4: where e^u overflows even float64,
    the equations have crossed V_th; the soma spikes and resets there, and
    agrees with the float64 loop everywhere, in float32 too."""
    delta_t = 50.4 / ratio
    params = dict(spike_slope=delta_t, threshold=0.0, rheobase_threshold=-50.4)
    x = np.full((400, 1), 1500.0)
    with np.errstate(over="ignore", invalid="ignore"):
        ref = reference.simulate("expif", dict(ss.ExponentialSomaConfig(**params).to_dict()), x,
                                 0.1, potential=np.array([-45.9]))
    assert ref["spikes"].sum() >= 2
    soma = ss.ExponentialSoma(units=1, **params)
    soma.potential[...] = jnp.array([-45.9])
    rec = ss.simulate(soma, jnp.asarray(x, jnp.float32))
    np.testing.assert_array_equal(np.flatnonzero(rec.spikes), np.flatnonzero(ref["spikes"]))
    grad = jax.grad(lambda x: ss.simulate(ss.ExponentialSoma(units=1, **params), x)
                    .potential.sum())(jnp.asarray(x, jnp.float32))
    assert_finite(grad, "d/dI")
