"""The exponential never overflows, and taming it changes nothing below V_th.

Extremes: ±1e6 pA (clipped to the input dtype's range) and the input dtype's
largest finite value, dt ∈ {0.01, 0.1, 1.0} ms, states in float32, bfloat16
and float16, all four somas. Forward values, spikes and gradients with
respect to the input must stay finite, and so must the parameter gradients
wherever the parameters are not float16 (documented: float16 parameter gradients
may exceed the format; the float16 somas here keep ``param_dtype=float32``).
The somas use a set as steep as Naud et al.'s, (V_th − V_T)/Δ_T = 25, where
e^25 ≈ 7·10^10 would overflow float16 arithmetic. The extreme runs step
eagerly (``soma(current)`` under ``nnx.grad``), so all 36 configurations
share compiled primitives; one compiled ``simulate`` per dtype checks the
scanned path too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import reference
import spark_somas as ss

MODELS = list(ss.SOMAS)
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
STEPS = 6

# Naud et al. (2008) "adaptation" with the cut-off at 0 mV: (V_th − V_T)/Δ_T = 25.
STEEP = dict(potential_rest=-70.0, potential_reset=-58.0, potential_tau=200.0 / 12.0,
             resistance=1.0 / 12.0, threshold=0.0, rheobase_threshold=-50.0, spike_slope=2.0,
             cooldown=2.0, adaptation_tau=300.0, adaptation_delta=60.0,
             adaptation_subthreshold=2.0, threshold_tau=50.0, threshold_delta=2.0)


def extreme_currents(dtype, magnitude: float | None = None) -> jax.Array:
    """(STEPS, 6) currents in ``dtype``: +I, −I, alternating ±I, +I then 0,
    0 then −I, and 0, with I = min(1e6 pA, dtype max) or ``magnitude``."""
    big = min(1e6, float(jnp.finfo(dtype).max)) if magnitude is None else magnitude
    t = np.arange(STEPS)
    columns = [np.full(STEPS, big), np.full(STEPS, -big), big * (-1.0) ** t,
               np.where(t < STEPS // 2, big, 0.0), np.where(t < STEPS // 2, 0.0, -big),
               np.zeros(STEPS)]
    return jnp.asarray(np.stack(columns, 1), dtype)


def make(model: str, dtype, dt: float):
    """A soma of the STEEP set, every field trained (float32 parameters for float16)."""
    param_dtype = jnp.float32 if dtype == jnp.float16 else dtype
    fields = tuple(f.name for f in ss.SOMAS[model].config_class.quantity_fields())
    return ss.SOMAS[model](units=6, dt=dt, dtype=dtype, param_dtype=param_dtype, trainable=fields,
                           **{n: STEEP[n] for n in fields})


def run_and_grad(soma, currents):
    """Steps ``soma`` through ``currents``; returns the outputs, the final state
    and the gradients of a loss of spikes and potentials with respect to the
    parameters and to the input."""
    def loss(module, currents):
        outs = [module(c) for c in currents]
        spikes = jnp.stack([o.spikes for o in outs])
        potential = jnp.stack([o.potential for o in outs])
        value = jnp.sum(spikes.astype(jnp.float32)) + jnp.mean(potential.astype(jnp.float32))
        return value, (spikes, potential)

    (grad_params, grad_input), (spikes, potential) = nnx.grad(
        loss, argnums=(0, 1), has_aux=True)(soma, currents)
    return spikes, potential, soma.neuron_state(), nnx.state(grad_params, nnx.Param), grad_input


def assert_finite(tree, what: str) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        values = np.asarray(leaf, np.float64)
        assert np.all(np.isfinite(values)), f"{what} {jax.tree_util.keystr(path)}: {values}"


@pytest.mark.parametrize("dt", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("model", MODELS)
def test_extreme_inputs_stay_finite_forward_and_backward(model, dtype, dt):
    currents = extreme_currents(dtype)
    spikes, potential, final, grad_params, grad_input = run_and_grad(make(model, dtype, dt),
                                                                     currents)
    assert spikes.dtype == potential.dtype == dtype
    assert set(np.unique(np.asarray(spikes, np.float32))) <= {0.0, 1.0}
    if dt >= 0.1:  # +I crosses within the run (not at dt = 0.01 with 65504 pA in float16)
        assert np.asarray(spikes, np.float32)[:, 0].sum() >= 1
    assert_finite(potential, "potential")
    assert_finite(final, "state")
    assert_finite(grad_input, "d loss / d current")
    assert set(grad_params.keys()) == {f.name for f in ss.SOMAS[model].config_class.quantity_fields()}
    assert_finite(grad_params, "d loss / d param")
    assert np.any(np.asarray(grad_input, np.float32) != 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("model", MODELS)
def test_largest_finite_input_stays_finite(model, dtype):
    """The dtype's largest current, from a state also set to ±its largest value
    (a hand-set or restored V far beyond V_th: the capped exponential's case)."""
    big = float(jnp.finfo(dtype).max)
    currents = extreme_currents(dtype, magnitude=big)
    soma = make(model, dtype, 0.1)
    soma.potential[...] = jnp.asarray([big, -big] * 3, dtype)
    outs = [soma(c) for c in currents]
    assert_finite([(o.spikes, o.potential) for o in outs], "output")
    assert_finite(soma.neuron_state(), "state")
    spikes = np.asarray(jnp.stack([o.spikes for o in outs]), np.float32)
    assert spikes[:, 0].sum() >= 1 and spikes[:, 1].sum() == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_compiled_simulate_stays_finite(dtype):
    soma = ss.AdaptiveExponentialSoma(units=6, dt=1.0, dtype=dtype)  # the default set
    currents = extreme_currents(dtype)

    def loss(soma, currents):
        out = ss.simulate(soma, currents)
        return jnp.mean(out.potential.astype(jnp.float32)) + jnp.sum(out.spikes), out

    grad_input, out = nnx.grad(loss, argnums=1, has_aux=True)(soma, currents)
    assert_finite((out.spikes, out.potential, grad_input), "simulate")
    assert out.potential.dtype == dtype


def steep(model: str, units: int, dtype) -> ss.ExponentialSoma:
    names = [f.name for f in ss.SOMAS[model].config_class.quantity_fields()]
    return ss.SOMAS[model](units=units, dtype=dtype, param_dtype=dtype,
                           **{n: STEEP[n] for n in names})


@pytest.mark.parametrize("model", MODELS)
def test_one_step_from_anywhere_up_to_threshold_is_the_plain_equation(model):
    """V0 on a grid from E_L up to V_th itself (u = (V0 − V_T)/Δ_T up to 25),
    with 0 and 200 pA: one float64 step of the soma equals the untamed
    NumPy equation, spike flags and potentials."""
    v0 = np.concatenate([np.linspace(-70.0, 0.0, 141), [-1e-9, -41.0, -30.5]])
    currents = np.stack([np.zeros_like(v0), np.full_like(v0, 200.0)])[:, None]  # (2, 1, V)
    expected = [reference.simulate(model, STEEP, c, 0.1, potential=v0) for c in currents]
    with jax.enable_x64(True):
        soma = steep(model, len(v0), jnp.float64)
        for c, e in zip(currents, expected):
            soma.reset()
            soma.potential[...] = jnp.asarray(v0)
            out = soma(jnp.asarray(c[0]))
            np.testing.assert_array_equal(np.asarray(out.spikes), e["spikes"][0])
            np.testing.assert_allclose(np.asarray(out.potential), e["potential"][0],
                                       rtol=1e-13, atol=1e-12)
    assert 0 < expected[0]["spikes"].sum() < len(v0)  # both sides of the runaway are seen


@pytest.mark.parametrize("model", MODELS)
def test_subthreshold_trajectory_is_the_plain_equation(model):
    """2000 steps of a noisy current below rheobase (mean 200 pA, s.d. 120 pA;
    I_rh ≈ g_L(V_T − E_L − Δ_T) = 216 pA): the float64 soma follows the
    untamed equation to rounding, the float32 soma to 1e-3 mV."""
    rng = np.random.default_rng(25)
    currents = rng.normal(200.0, 120.0, (2000, 4))
    expected = reference.simulate(model, STEEP, currents, 0.1)
    assert expected["spikes"].sum() == 0 and expected["potential"].max() > -56.0
    with jax.enable_x64(True):
        out = ss.simulate(steep(model, 4, jnp.float64), jnp.asarray(currents))
        np.testing.assert_allclose(np.asarray(out.potential), expected["potential"],
                                   rtol=1e-12, atol=1e-10)
    out = ss.simulate(steep(model, 4, jnp.float32), jnp.asarray(currents, jnp.float32))
    assert float(out.spikes.sum()) == 0
    np.testing.assert_allclose(np.asarray(out.potential), expected["potential"], rtol=0, atol=1e-3)
