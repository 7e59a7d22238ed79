"""What BPTT keeps per step, and that keeping less changed no derivative.

Oracles: ``jax.grad`` of the plain expression exp(min(u, cap)) (what the
exact mode's custom derivative replaces) in float64, and the forward-Euler
AdEx loop written inline in plain JAX (``benchmarks/guards.py``), whose
residuals ``jax.vjp``'s backward function holds.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spark_somas as ss
from spark_somas.dynamics import numerics
from spark_somas.models import protocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import guards  # noqa: E402


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


# u − cap: below, exactly at (jnp.minimum's tie: half the slope) and beyond the cap.
OFFSETS = [-5.0, -0.5, 0.0, 0.5, 38.0]


def plain_capped_exp(u, scale):
    return jnp.exp(jnp.minimum(u, math.log(numerics.EXP_CAP) - jnp.log(scale)))


@pytest.mark.parametrize("offset", OFFSETS)
def test_exact_exponential_derivatives_are_the_plain_expressions(offset):
    scale = jnp.float64(1e-3)
    cap = math.log(numerics.EXP_CAP) - jnp.log(scale)

    def ours(u, scale):
        return numerics.capped_exp(u, scale, "exact")

    plain = plain_capped_exp
    args = (cap + offset, scale)
    np.testing.assert_array_equal(ours(*args), plain(*args))
    for argnum in (0, 1):
        np.testing.assert_allclose(jax.grad(ours, argnum)(*args), jax.grad(plain, argnum)(*args),
                                   rtol=1e-14, atol=0)
    tangents = (jnp.float64(0.3), jnp.float64(-0.7 * scale))
    np.testing.assert_allclose(jax.jvp(ours, args, tangents)[1],
                               jax.jvp(plain, args, tangents)[1], rtol=1e-14, atol=0)


def _stacked_bytes(f, x: jax.Array, steps: int) -> int:
    """Bytes per step of the residuals a scan over ``steps`` steps stacks; the
    input itself, which the caller holds anyway, is not counted."""
    _, backward = jax.vjp(f, x)
    return sum(int(np.prod(r.shape[1:])) * r.dtype.itemsize for r in jax.tree.leaves(backward)
               if r.shape[:1] == (steps,) and not (r.shape == x.shape and np.array_equal(r, x)))


def test_adex_step_keeps_no_more_per_step_than_the_hand_written_loop():
    with jax.enable_x64(False):
        steps, batch, units = 8, 4, 16
        soma = ss.AdaptiveExponentialSoma(units=units, dt=1.0)
        soma.reset((batch,))
        params, state0, options = soma.parameters(), soma.neuron_state(), soma.options
        plain_params = {k: jnp.asarray(v) for k, v in params.items() if k in guards.FIELDS}
        currents = guards.currents_for((steps, batch, units))

        def library(c):
            def one(state, current):
                new, s = protocol.step(type(soma), params, state, current, options)
                return new, s
            return jnp.sum(jax.lax.scan(one, state0, c)[1])

        def plain(c):
            return jnp.sum(guards.plain_run(plain_params, 1.0, c)[0])

        ours, theirs = (_stacked_bytes(f, currents, steps) for f in (library, plain))
        assert 0 < ours <= theirs, (ours, theirs)
        np.testing.assert_allclose(jax.grad(library)(currents), jax.grad(plain)(currents),
                                   rtol=1e-4, atol=1e-6)


def test_narrow_all_gives_narrows_values_and_derivatives():
    b = numerics.bound(jnp.float16)
    xs = [jnp.array([0.5, -b, b, 2.0 * b, -jnp.inf, jnp.inf, 7.0]),
          jnp.array([b, 3.0, -2.0 * b, -1.0, 0.0, 1e6, -b])]
    dtypes = [jnp.float16, jnp.float32]
    ts = [jnp.arange(1.0, 8.0), -jnp.arange(1.0, 8.0)]

    def ours(*xs):
        return tuple(numerics.narrow_all(list(xs), dtypes))

    def each(*xs):
        return tuple(numerics.narrow(x, d) for x, d in zip(xs, dtypes))

    ours_out, ours_t = jax.jvp(ours, xs, ts)
    each_out, each_t = jax.jvp(each, xs, ts)
    for a, e in zip(ours_out + ours_t, each_out + each_t):
        assert a.dtype == e.dtype
        np.testing.assert_array_equal(a, e)
    cotangents = tuple(jnp.linspace(-1.0, 1.0, 7).astype(d) for d in dtypes)
    for a, e in zip(jax.vjp(ours, *xs)[1](cotangents), jax.vjp(each, *xs)[1](cotangents)):
        np.testing.assert_array_equal(a, e)
