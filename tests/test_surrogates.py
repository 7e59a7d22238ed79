"""The shared spike function and its surrogate gradients (docs/models.md, "Spikes and gradients").

Each surrogate's pseudo-derivative g is read back through ``jax.grad`` of
``spike`` — what training actually sees — and checked against the ``peak``
``g(0)`` and ``integral`` ``∫g`` its docstring states, by trapezoidal
quadrature on a grid fine near 0 (step 1e-4 mV up to 50 mV) and geometric
out to 1e8 mV (the slowest tails, 1/x², leave < 1e-7 of the mass beyond).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spark_somas as ss

CLASSES = [ss.surrogates.FastSigmoid, ss.surrogates.ArcTan, ss.surrogates.Sigmoid,
           ss.surrogates.Triangle, ss.surrogates.Gaussian, ss.surrogates.StraightThrough]


def parameter(cls) -> str:
    """The shape's one width/slope parameter (damping and relative are every surrogate's)."""
    (field,) = [f for f in dataclasses.fields(cls) if not f.kw_only]
    return field.name


# Defaults and a non-default width/slope, so that peak and integral are seen to scale.
SURROGATES = [cls() for cls in CLASSES] + [
    cls(**{parameter(cls): 2.5 * getattr(cls(), parameter(cls))}) for cls in CLASSES]
IDS = [repr(s) for s in SURROGATES]

POSITIVE = np.concatenate([np.arange(0.0, 50.0, 1e-4), np.geomspace(50.0, 1e8, 20_001)])


def derivative(surrogate, x, dtype=jnp.float32) -> np.ndarray:
    """g(x) = d spike(x)/dx through jax.grad, elementwise."""
    grad = jax.vmap(jax.grad(lambda v: ss.spike(v, surrogate)))
    return np.asarray(grad(jnp.asarray(x, dtype)), np.float64)


@pytest.fixture(scope="module", params=SURROGATES, ids=IDS)
def curve(request):
    s = request.param
    return s, derivative(s, POSITIVE), derivative(s, -POSITIVE)


def test_every_surrogate_class_is_covered():
    defined = {obj for _, obj in inspect.getmembers(ss.surrogates, inspect.isclass)
               if issubclass(obj, ss.surrogates.Surrogate) and obj is not ss.surrogates.Surrogate}
    assert defined == set(CLASSES)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("surrogate", [None] + SURROGATES[:len(CLASSES)], ids=repr)
def test_forward_is_heaviside(surrogate, dtype):
    x = jnp.asarray([-jnp.inf, -1e4, -1.0, -1e-3, -0.0, 0.0, 1e-3, 1.0, 1e4, jnp.inf], dtype)
    s = ss.spike(x, surrogate)
    assert s.dtype == dtype
    np.testing.assert_array_equal(np.asarray(s, np.float32), [0, 0, 0, 0, 0, 0, 1, 1, 1, 1])


def test_default_is_fast_sigmoid_and_call_is_spike():
    assert ss.surrogates.DEFAULT == ss.surrogates.FastSigmoid()
    x = jnp.linspace(-3.0, 3.0, 13)
    np.testing.assert_array_equal(derivative(None, x), derivative(ss.surrogates.FastSigmoid(), x))
    s = ss.surrogates.Gaussian(sigma=0.5)
    np.testing.assert_array_equal(jax.vmap(jax.grad(s))(x), derivative(s, x).astype(np.float32))


def test_positive_and_finite_at_zero_and_equal_to_peak(curve):
    s, g, _ = curve
    assert np.isfinite(g[0]) and g[0] > 0
    np.testing.assert_allclose(g[0], s.peak, rtol=1e-6)
    assert g.max() <= s.peak * (1 + 1e-6)


def test_symmetric(curve):
    _, g, g_neg = curve
    np.testing.assert_array_equal(g, g_neg)


def test_non_increasing_away_from_zero(curve):
    _, g, _ = curve
    assert np.all(np.diff(g) <= 0), np.flatnonzero(np.diff(g) > 0)[:5]
    assert g[-1] < 1e-6 * g[0]


def test_integral_matches_docstring(curve):
    s, g, _ = curve
    np.testing.assert_allclose(2 * np.trapezoid(g, POSITIVE), s.integral, rtol=1e-3)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("surrogate", SURROGATES[:len(CLASSES)], ids=repr)
def test_derivative_finite_in_half_precision(surrogate, dtype):
    big = float(jnp.finfo(dtype).max)
    g = derivative(surrogate, [0.0, 1.0, -big, big, np.inf], dtype)
    assert np.all(np.isfinite(g)) and np.all(g >= 0)
    np.testing.assert_allclose(g[0], surrogate.peak, rtol=1e-2)


@pytest.mark.parametrize("surrogate", SURROGATES, ids=IDS)
def test_dict_round_trip(surrogate):
    d = surrogate.to_dict()
    assert ss.surrogates.from_dict(json.loads(json.dumps(d))) == surrogate
    assert d["name"] == type(surrogate).name


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf])
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_bad_width_raises_naming_field(cls, value):
    name = parameter(cls)
    with pytest.raises(ValueError) as info:
        cls(**{name: value})
    message = str(info.value)
    assert f"{cls.__name__}.{name}" in message and repr(value) in message
    assert f"1e-06 ≤ {name} ≤ 1e+06" in message


def test_unknown_name_raises():
    with pytest.raises(ValueError, match="'nope'"):
        ss.surrogates.by_name("nope")
