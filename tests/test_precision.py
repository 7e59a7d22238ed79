"""Half precision is faithful or refused.

The oracle is the float32 soma: a bfloat16 or float16 soma must reproduce its
spike counts along an f–I curve (200–3000 pA), or its constructor must
refuse the combination, naming the dtype, dt and what to do instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import spark_somas as ss
from spark_somas import numerics

CURRENTS = np.linspace(200.0, 3000.0, 15)
HALF = [jnp.bfloat16, jnp.float16]


def fi_counts(model: str, dtype, dt: float, steps: int, **fields) -> np.ndarray:
    soma = ss.SOMAS[model](units=len(CURRENTS), dtype=dtype, dt=dt, **fields)
    x = jnp.broadcast_to(jnp.asarray(CURRENTS, jnp.float32), (steps, len(CURRENTS)))
    spikes = ss.simulate(soma, x, record=("spikes",)).spikes
    assert spikes.dtype == dtype
    return np.asarray(spikes, np.float64).sum(0)


@pytest.mark.parametrize("dtype", HALF, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("model", list(ss.SOMAS))
def test_fi_curve_matches_float32_at_the_default_dt(model, dtype):
    """300 ms at dt = 0.1 ms: per current within 3 % (or one spike)."""
    reference = fi_counts(model, jnp.float32, 0.1, 3000)
    counts = fi_counts(model, dtype, 0.1, 3000)
    assert reference.sum() > 100
    np.testing.assert_array_less(np.abs(counts - reference),
                                 np.maximum(0.03 * reference, 1.0) + 1e-9)


def test_without_compensation_bfloat16_would_lose_spikes():
    """The failure the double-word state prevents: near rheobase, a bfloat16
    soma whose low words are dropped after every step stalls below
    threshold; with them it fires as float32 does."""
    x = jnp.array([600.0, 700.0, 800.0], jnp.float32)
    counts = {}
    for name, dtype, drop in (("float32", jnp.float32, False), ("bfloat16", jnp.bfloat16, False),
                              ("rounded", jnp.bfloat16, True)):
        graphdef, state = nnx.split(ss.ExponentialSoma(units=3, dtype=dtype))

        def one_step(state, _, drop=drop):
            soma = nnx.merge(graphdef, state)
            spikes = soma(x).spikes
            if drop:
                soma.potential_residual[...] = jnp.zeros_like(soma.potential_residual[...])
            return nnx.state(soma), spikes

        _, spikes = jax.jit(lambda state: jax.lax.scan(one_step, state, None, length=3000))(state)
        counts[name] = np.asarray(spikes, np.float64).sum(0)
    assert counts["float32"].sum() >= 20
    np.testing.assert_array_equal(counts["bfloat16"], counts["float32"])
    assert counts["rounded"].sum() < 0.5 * counts["float32"].sum(), counts


@pytest.mark.parametrize("dtype", HALF, ids=lambda d: jnp.dtype(d).name)
def test_faithful_near_the_resolution_limit(dtype):
    """A slow membrane, dt/τ_m just above the refusal margin: still faithful."""
    unit = 2.0 ** (-2 * (jnp.finfo(dtype).nmant + 1))
    tau = 0.1 / (2 * numerics.RESOLUTION_MARGIN * unit)
    fields = dict(potential_tau=tau, resistance=tau / 9.37 / 30.0)
    reference = fi_counts("expif", jnp.float32, 0.1, 2000, **fields)
    counts = fi_counts("expif", dtype, 0.1, 2000, **fields)
    np.testing.assert_array_less(np.abs(counts - reference),
                                 np.maximum(0.05 * reference, 1.0) + 1e-9)


@pytest.mark.parametrize("dtype", HALF, ids=lambda d: jnp.dtype(d).name)
def test_unresolvable_combination_is_refused_by_name(dtype):
    unit = 2.0 ** (-2 * (jnp.finfo(dtype).nmant + 1))
    tau = 1e-3 / (0.5 * numerics.RESOLUTION_MARGIN * unit)
    with pytest.raises(ValueError) as error:
        ss.AdaptiveExponentialSoma(units=2, dtype=dtype, dt=1e-3, adaptation_tau=tau)
    message = str(error.value)
    for part in (jnp.dtype(dtype).name, "dt = 0.001 ms", "adaptation_tau", "Use dt ≥",
                 "dtype=float32"):
        assert part in message, message
    ss.AdaptiveExponentialSoma(units=2, dtype=jnp.float32, dt=1e-3, adaptation_tau=tau)


@pytest.mark.parametrize("dtype", HALF, ids=lambda d: jnp.dtype(d).name)
def test_state_is_stored_in_the_dtype_as_hi_plus_lo(dtype):
    soma = ss.AdaptiveExponentialSoma(units=3, dtype=dtype)
    selected = {jax.tree_util.keystr(path) for path, _ in
                jax.tree_util.tree_leaves_with_path(nnx.state(soma, ss.SomaState))}
    assert any("potential_residual" in k for k in selected), selected
    assert soma.stored_names == soma.state_names + ("potential_residual", "adaptation_residual")
    for name in soma.stored_names:
        assert getattr(soma, name)[...].dtype == dtype, name
    ss.simulate(soma, jnp.full((50, 3), 900.0))
    v = np.asarray(soma.potential[...], np.float64) + np.asarray(soma.potential_residual[...],
                                                                 np.float64)
    reference = ss.AdaptiveExponentialSoma(units=3)
    ss.simulate(reference, jnp.full((50, 3), 900.0))
    np.testing.assert_allclose(v, np.asarray(reference.potential[...]), atol=2e-3)


def test_float32_soma_has_no_low_words():
    soma = ss.AdaptiveExponentialSoma(units=2)
    assert soma.stored_names == soma.state_names


@pytest.mark.parametrize("field", ["potential_rest", "potential_reset"])
def test_a_potential_the_state_dtype_cannot_hold_is_refused(field):
    """float16 holds ±65504 mV: a soma that would rest or reset beyond it is
    refused by name; float32 holds it."""
    values = {"potential_rest": -70.0, "potential_reset": -70.0, "threshold": 0.0,
              "rheobase_threshold": -1.0, field: -7e4}
    with pytest.raises(ValueError, match=f"{field} = -70000.0 violates the rule: "
                                         f"\\|{field}\\| ≤ 65504 mV"):
        ss.ExponentialSoma(units=1, dtype=jnp.float16, **values)
    ss.ExponentialSoma(units=1, dtype=jnp.float32, **values)
