"""The model protocol: a soma written outside the package is one class.

The two models of docs/own-soma.md (an adaptive LIF and a quadratic IF, the
page's first two code blocks, executed here as user code) and the AdEx are
driven through the generic property check: parameter sets drawn by
``spark_somas.testing.legal_params`` from each config's own rules — it
knows no field name — for every integration method, in float32 and the
half precisions, with ordinary, huge and infinite inputs. Forward values,
spikes and gradients must be finite and spikes 0/1 (gradients wherever
they are representable: a stable step, dt ≤ τ or the exponential Euler,
and a run that does not amplify them past float32,
``testing.assert_finite_gradients``). Declarations that do not fit
together are refused when the class is defined.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import Phase, given, settings, strategies as st

import spark_somas as ss
from spark_somas import integrators, registry, testing
from spark_somas.models import configs
from spark_somas.somas import Soma, StateVariable
from test_docs import code_blocks
from test_numerics import assert_finite
from test_properties import SETTINGS, UNITS, currents

PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "own-soma.md"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
DTS = (0.01, 1.0)


@functools.cache
def page_models() -> dict[str, type[Soma]]:
    """The page's two model classes, defined and registered as a user would,
    once per process (another test file takes the same classes)."""
    namespace: dict = {"__name__": "user_models"}
    for block in code_blocks(PAGE)[:2]:
        exec(compile(block, str(PAGE), "exec", dont_inherit=True), namespace)
    return {"alif": namespace["AdaptiveLIF"], "qif": namespace["QuadraticSoma"]}


@pytest.fixture(scope="module")
def user_models() -> dict[str, type[Soma]]:
    models = page_models()
    for short, cls in models.items():  # again: the registry is restored after each file
        registry.register_soma(cls, short)
    return models


def build(cls: type[Soma], params: dict, dtype, dt: float, method: str) -> Soma:
    """The soma of a drawn set: the kit draws within the dtype's bounds, so
    the constructor accepts every set it draws."""
    return cls(units=UNITS, dt=dt, dtype=dtype, method=method, trainable=tuple(params), **params)


@pytest.mark.parametrize("method", integrators.METHODS)
@pytest.mark.parametrize("name", ["alif", "qif", "adex"])
@settings(SETTINGS, max_examples=4, phases=(Phase.explicit, Phase.generate))
@given(data=st.data())
def test_any_registered_model_is_finite_over_its_legal_space(user_models, name, method, data):
    cls = user_models.get(name) or ss.SOMAS[name]
    dtype = DTYPES[data.draw(st.sampled_from(sorted(DTYPES)), "dtype")]
    dt = data.draw(st.sampled_from(DTS), "dt")
    bounds = cls(units=1, dt=dt, dtype=dtype, __skip_validation__=True).dtype_bounds()
    params = data.draw(testing.legal_params(cls.config_class, units=UNITS, bounds=bounds),
                       "params")
    x = jnp.asarray(data.draw(currents(dtype), "currents"), dtype)
    soma = build(cls, params, dtype, dt, method)

    def loss(soma, x):
        rec = ss.simulate(soma, x)
        return jnp.sum(rec.spikes.astype(jnp.float32)) + jnp.mean(
            rec.potential.astype(jnp.float32)), rec

    # Jitted: one compiled program, where the forward and backward passes would be two.
    (grad_soma, grad_x), rec = nnx.jit(nnx.grad(loss, argnums=(0, 1), has_aux=True))(soma, x)
    assert_finite((rec.spikes, rec.potential, soma.neuron_state()), "forward")
    assert set(np.unique(np.asarray(rec.spikes, np.float64))) <= {0.0, 1.0}
    # Gradients are promised wherever they are representable: a stable step
    # and a run that does not amplify them past float32 (testing.amplification).
    grads = {"d/dI": grad_x}
    if dtype != jnp.float16:  # float16 parameter gradients may exceed the format
        grads["d/dparam"] = nnx.state(grad_soma, nnx.Param)
    testing.assert_finite_gradients(cls(units=UNITS, dt=dt, method=method, **params), x, grads,
                                    params)


def test_the_generator_reads_the_rules_and_reaches_the_corners(user_models):
    """Every drawn set obeys its config's rules, and the corners ±10^6 and
    10^-6 are drawn: the property above covers the whole legal space."""
    seen: set[float] = set()
    positive: set[float] = set()

    @settings(SETTINGS, max_examples=60)
    @given(params=testing.legal_params(user_models["qif"].config_class, units=UNITS))
    def check(params):
        user_models["qif"].config_class(**params)  # raises if a rule is broken
        assert np.all(params["threshold"] > params["critical"])
        for v in params.values():
            seen.update(float(x) for x in v)
        positive.update(params["potential_tau"].tolist() + params["resistance"].tolist())

    check()
    assert {configs.LARGEST, -configs.LARGEST} <= seen
    # 10^-6 as float32 parameters hold it: the float32 nearest above.
    assert min(positive) == float(np.nextafter(np.float32(configs.SMALLEST), np.float32(1)))


def test_a_user_model_is_registered_under_its_names(user_models):
    assert registry.soma_class("alif") is user_models["alif"]
    assert registry.soma_class("QuadraticSoma") is user_models["qif"]
    soma = registry.soma_from_spec(registry.soma_spec(user_models["alif"](units=2, threshold=-45.0)))
    assert type(soma) is user_models["alif"] and soma.config.threshold == -45.0


def test_derived_lists_come_from_the_declarations(user_models):
    alif = user_models["alif"](units=2)
    assert alif.state_names == ("potential", "threshold_adaptation")
    assert alif.config_class.time_constant_fields() == ("potential_tau", "adaptation_tau")
    assert alif.state_fields() == ("potential_rest", "potential_reset")
    assert ss.simulation.recordable(alif) == ("spikes", "potential", "threshold_adaptation")
    assert ss.somas.input_scale(alif) == pytest.approx(200.0)
    assert ss.network.trainable_neuron_params(type(alif)) == alif.default_trainable
    assert ss.network.rheobase_current(ss.AdaptiveExponentialSoma(units=1)) == pytest.approx(
        (-50.4 + 70.6 - 2.0) * 30.0, rel=1e-5)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class _Config(configs.SomaConfig):
    potential_rest: float = configs.quantity(0.0, symbol="E", units="mV", doc="rest")
    potential_tau: float = configs.quantity(10.0, symbol="τ", units="ms", doc="τ",
                                            rule=configs.POSITIVE, time_constant=True)


@pytest.mark.parametrize("body, message", [
    ({"state_variables": {"v": StateVariable("mV")}}, "membrane = 'potential'"),
    ({"state_variables": {"potential": StateVariable("mV", rest="resting")}}, "'resting'"),
    ({"state_variables": {"potential": StateVariable("mV")}, "default_trainable": ("gain",)},
     r"default_trainable \['gain'\]"),
    ({"state_variables": {"potential": StateVariable("mV"),
                          "timer": StateVariable("steps", integrated=False, integer=True)}},
     r"integer state variables \['timer'\] need an update_counters"),
])
def test_declarations_that_do_not_fit_are_refused_when_the_class_is_defined(body, message):
    with pytest.raises(TypeError, match=message):
        type("Broken", (Soma,), {"config_class": _Config, **body})


def test_time_constants_must_cover_exactly_the_integrated_variables():
    class TwoVariables(Soma):
        config_class = _Config
        state_variables = {"potential": StateVariable("mV", rest="potential_rest"),
                           "other": StateVariable("1")}

        @staticmethod
        def time_constants(p):
            return {"potential": p.potential_tau}

    with pytest.raises(TypeError, match=r"time_constants gives \['potential'\]; the integrated "
                                        r"state variables are \['other', 'potential'\]"):
        TwoVariables(units=1)(jnp.zeros(1))


def test_the_earlier_names_of_the_derived_lists_still_read_with_a_warning(user_models):
    """integrated_names, residual_names and stored_fields (each one quantity
    under a second name) keep working and name their replacement."""
    alif = user_models["alif"](units=2)
    half = ss.AdaptiveExponentialSoma(units=2, dtype=jnp.float16)
    expected = {
        (alif, "integrated_names"): ("potential", "threshold_adaptation"),
        (half, "residual_names"): ("potential_residual", "adaptation_residual"),
        (alif, "residual_names"): (),
    }
    for (soma, old), value in expected.items():
        with pytest.warns(DeprecationWarning, match=old):
            assert getattr(soma, old) == value
    with pytest.warns(DeprecationWarning, match="state_fields"):
        assert type(alif).stored_fields() == alif.state_fields()
