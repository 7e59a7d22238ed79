"""The testing kit a model gets, ``spark_somas.testing``: the drawer of
legal parameter sets reads a config's rules alone, in dependency order,
and reaches the corners; rules that refer to each other in a cycle are
refused when the class is defined; ``check_model`` passes the models a user
writes — an Izhikevich neuron whose recovery rests at u₀ = b·v₀ (a rest
value that depends on two fields), a LIF behind an exponential current
synapse, and the adaptive LIF and the quadratic IF of docs/own-soma.md —
and names the capability and the parameter set that fail in a model that
is broken.

The adaptive LIF's gradient with the adaptation jump kept grows by
|e^(−dt/τ_a) − β·σ'(V − V_th − β·a)| per step along its threshold loop
a → V_th + β·a → spike → a; with β in the thousands of mV that overflows
float32 within tens of steps. The growth is checked against that float64
formula, and the gradient is checked finite wherever the loop cannot
amplify (β·σ' ≤ 1).
"""

from __future__ import annotations

import dataclasses
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import Phase, given, settings, strategies as st

import spark_somas as ss
from spark_somas import integrators, numerics, registry, testing
from spark_somas.errors import RuleTypeError
from spark_somas.models import configs
from spark_somas.models.configs import FINITE, NON_NEGATIVE, POSITIVE, Rule, quantity
from spark_somas.models.somas import Soma, StateVariable
from test_properties import SETTINGS
from test_protocol import page_models


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class IzhikevichConfig(configs.SomaConfig):
    """Izhikevich's simple model, regular spiking by default."""

    potential_rest: float = quantity(-65.0, symbol="v₀", units="mV", doc="initial potential")
    threshold: float = quantity(30.0, symbol="v_peak", units="mV", doc="spike cut-off",
                                rule=Rule(">", "potential_rest"))
    potential_reset: float = quantity(-65.0, symbol="c", units="mV", doc="potential after a spike",
                                      rule=Rule("<", "threshold"))
    potential_tau: float = quantity(1.0, symbol="τ_v", units="ms", doc="time unit of dv/dt",
                                    rule=POSITIVE, time_constant=True)
    recovery_tau: float = quantity(50.0, symbol="1/a", units="ms", doc="recovery time constant",
                                   rule=POSITIVE, time_constant=True)
    recovery_sensitivity: float = quantity(0.2, symbol="b", units="1",
                                           doc="sensitivity of u to v", rule=FINITE)
    recovery_jump: float = quantity(8.0, symbol="d", units="mV", doc="jump of u at a spike")
    resistance: float = quantity(0.01, symbol="R", units="GΩ", doc="input resistance",
                                 rule=POSITIVE)


class Izhikevich(Soma):
    """τ_v dv/dt = 0.04 v² + 5 v + 140 − u + R·I, (1/a) du/dt = b·v − u;
    v > v_peak ⇒ v ← c, u ← u + d; at rest u₀ = b·v₀."""

    config_class = IzhikevichConfig
    state_variables = {
        "potential": StateVariable("mV", rest="potential_rest", takes=("potential_reset",)),
        "recovery": StateVariable("mV", rest=lambda p: p.recovery_sensitivity * p.potential_rest),
    }
    default_trainable = ("threshold", "recovery_tau", "recovery_sensitivity", "recovery_jump")

    @staticmethod
    def time_constants(p):
        return {"potential": p.potential_tau, "recovery": p.recovery_tau}

    @staticmethod
    def drives(p, x, current, stage, options):
        # 0.04 v² + 5 v + 140 = 0.04 (v + 62.5)² − 16.25; the square is bounded
        # so that no stage moves v by more than EXP_CAP (the QIF's guard).
        reach = jnp.sqrt(numerics.EXP_CAP / (0.04 * stage.coefficients["potential"]
                                             * stage.smallest_weight))
        v = jnp.clip(x["potential"], -62.5 - reach, -62.5 + reach)
        return {"potential": 0.04 * (v + 62.5) ** 2 - 16.25 - x["recovery"]
                + p.resistance * current,
                "recovery": p.recovery_sensitivity * x["potential"] - x["recovery"]}

    @staticmethod
    def spike_threshold(p, x):
        return p.threshold

    @staticmethod
    def after_spike(p, x, spike, dt):
        return {"potential": x["potential"] * (1.0 - spike) + p.potential_reset * spike,
                "recovery": x["recovery"] + p.recovery_jump * spike}

    @staticmethod
    def cell_scale(p):
        return p.threshold - p.potential_rest

    @staticmethod
    def input_scale(p):
        return 10.0 / p.resistance  # Izhikevich's I = 10 of regular spiking, in pA


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class SynapticLIFConfig(configs.SomaConfig):
    """A LIF behind an exponential current synapse."""

    potential_rest: float = quantity(-70.0, symbol="E_L", units="mV", doc="resting potential")
    threshold: float = quantity(-50.0, symbol="V_th", units="mV", doc="spike cut-off",
                                rule=Rule(">", "potential_rest"))
    potential_reset: float = quantity(-70.0, symbol="V_r", units="mV",
                                      doc="potential after a spike", rule=Rule("<", "threshold"))
    potential_tau: float = quantity(20.0, symbol="τ_m", units="ms", doc="membrane time constant",
                                    rule=POSITIVE, time_constant=True)
    synapse_tau: float = quantity(5.0, symbol="τ_s", units="ms", doc="synaptic time constant",
                                  rule=POSITIVE, time_constant=True)
    resistance: float = quantity(0.1, symbol="R", units="GΩ", doc="membrane resistance",
                                 rule=POSITIVE)


class SynapticLIF(Soma):
    """τ_s dI_s/dt = −I_s + I, τ_m dV/dt = −(V − E_L) + R·I_s; V > V_th ⇒ V ← V_r."""

    config_class = SynapticLIFConfig
    state_variables = {
        "potential": StateVariable("mV", rest="potential_rest", takes=("potential_reset",)),
        "synaptic_current": StateVariable("pA"),
    }
    default_trainable = ("potential_tau", "synapse_tau", "threshold")

    @staticmethod
    def time_constants(p):
        return {"potential": p.potential_tau, "synaptic_current": p.synapse_tau}

    @staticmethod
    def drives(p, x, current, stage, options):
        return {"potential": -(x["potential"] - p.potential_rest)
                + p.resistance * x["synaptic_current"],
                "synaptic_current": current - x["synaptic_current"]}

    @staticmethod
    def spike_threshold(p, x):
        return p.threshold

    @staticmethod
    def after_spike(p, x, spike, dt):
        return {"potential": x["potential"] * (1.0 - spike) + p.potential_reset * spike,
                "synaptic_current": x["synaptic_current"]}

    @staticmethod
    def cell_scale(p):
        return p.threshold - p.potential_rest

    @staticmethod
    def input_scale(p):
        return (p.threshold - p.potential_rest) / p.resistance  # the LIF's rheobase, 200 pA


@pytest.fixture
def registered() -> dict[str, type[Soma]]:
    """The user models, registered as a user registers them (the registry is
    restored after this file, conftest.registry_as_found)."""
    models = {"izhikevich": Izhikevich, "synaptic_lif": SynapticLIF, **page_models()}
    for short, cls in models.items():
        registry.register_soma(cls, short)
    return models


def config_class(name: str, rules: dict[str, Rule]) -> type:
    """A config class declared as a user declares one, with these rules."""
    body = {n: quantity(0.0, symbol=n, units="mV", doc=n, rule=r) for n, r in rules.items()}
    body["__annotations__"] = {n: "float" for n in rules}
    return dataclasses.dataclass(frozen=True, kw_only=True, eq=False, repr=False)(
        type(name, (configs.SomaConfig,), body))


@pytest.mark.parametrize("rules, message", [
    ({"potential_reset": Rule("<", "threshold"), "threshold": Rule(">", "potential_reset")},
     r"potential_reset < threshold, threshold > potential_reset refer to each other in a cycle "
     r"\(potential_reset → threshold → potential_reset\)"),
    ({"a": Rule("<", "b"), "b": Rule(">=", "c"), "c": Rule(">", "a")},
     r"a < b, b >= c, c > a .* \(a → b → c → a\)"),
    ({"a": Rule("<", "a")}, r"a < a .* \(a → a\)"),
    ({"a": Rule("<", "thresh")}, r"the rule a < thresh names 'thresh'.*\['a'\]"),
])
def test_rules_that_cannot_be_drawn_in_order_are_refused_when_the_class_is_defined(rules, message):
    with pytest.raises(RuleTypeError, match=message):
        config_class("Cyclic", rules)


def test_a_subclass_cannot_close_a_cycle_and_the_order_follows_the_rules():
    base = config_class("Base", {"a": Rule(">", "b"), "b": FINITE, "c": Rule("<", "a")})
    assert configs.rule_order(base) == ("b", "a", "c")
    with pytest.raises(RuleTypeError, match=r"a > b, b > c, c < a .* \(a → b → c → a\)"):
        dataclasses.dataclass(frozen=True, kw_only=True, eq=False, repr=False)(type(
            "Closing", (base,), {"b": quantity(0.0, symbol="b", units="mV", doc="b",
                                               rule=Rule(">", "c")),
                                 "__annotations__": {"b": "float"}}))
    for cls in ss.SOMAS.values():  # the package's own configs state each relation once
        order = configs.rule_order(cls.config_class)
        for name, rule in configs.declared_rules(cls.config_class).items():
            if isinstance(rule.bound, str):
                assert order.index(rule.bound) < order.index(name)


def test_without_hypothesis_the_kit_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "hypothesis", None)
    with pytest.raises(ImportError, match=r"pip install spark_somas\[test\]"):
        testing.legal_params(IzhikevichConfig)


#: A config with a non-strict rule between fields: equality is a corner.
Chain = config_class("Chain", {"low": FINITE, "mid": Rule(">=", "low"),
                               "high": Rule(">", "mid"), "under": Rule("<", "low"),
                               "tau": POSITIVE, "count": NON_NEGATIVE})


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_drawn_sets_obey_the_rules_in_their_dtype_and_reach_every_corner(dtype):
    """Each set is accepted by the config (float64) and by a soma whose
    parameters are ``dtype``; the corners — ±10^6 (as ``dtype`` holds it),
    10^-6, 0, equality at the non-strict rule, the adjacent value at a
    strict one — are all drawn."""
    big = float(np.asarray(configs.LARGEST).astype(jnp.dtype(dtype)))
    big = big if big <= configs.LARGEST else float(np.nextafter(
        np.asarray(big, jnp.dtype(dtype)), np.asarray(0, jnp.dtype(dtype))))
    seen = {"equal": False, "adjacent": False, "values": set()}

    @settings(SETTINGS, max_examples=80)
    @given(params=testing.legal_params(Chain, units=4, dtype=dtype))
    def check(params):
        Chain(**params)  # raises if a rule is broken
        for name, v in params.items():
            assert v.shape == (4,) and v.dtype == np.float64
            np.testing.assert_array_equal(v, v.astype(jnp.dtype(dtype)).astype(np.float64))
            seen["values"].update(v.tolist())
        seen["equal"] |= bool(np.any(params["mid"] == params["low"]))
        gap = params["high"].astype(jnp.dtype(dtype))
        seen["adjacent"] |= bool(np.any(np.nextafter(params["mid"].astype(jnp.dtype(dtype)),
                                                     gap) == gap))

    check()
    assert seen["equal"] and seen["adjacent"]
    assert {big, -big, 0.0} <= seen["values"]
    assert min(v for v in seen["values"] if v > 0) <= 1.0000001e-6


def test_bounds_narrow_the_draw_and_an_empty_field_is_named():
    """A float16 state bounds the stored potentials (the soma's dtype_bounds):
    every drawn set builds such a soma, the chain threshold > V_r included."""
    soma = ss.AdaptiveExponentialSoma(units=1, dtype=jnp.float16)
    bounds = soma.dtype_bounds()

    @settings(SETTINGS, max_examples=30)
    @given(params=testing.legal_params(soma.config_class, units=3, bounds=bounds))
    def check(params):
        ss.AdaptiveExponentialSoma(units=3, dtype=jnp.float16, **params)

    check()
    # high > mid with high ≤ 0.5 leaves mid ≥ 1 no room.
    with pytest.raises(ValueError, match=r"Chain\): mid = '\[1, 0.5\] in float32'.*must leave room"):
        testing.legal_intervals(Chain, bounds={"mid": (1.0, 2.0), "high": (-5.0, 0.5)})


def test_a_rest_value_may_depend_on_other_fields():
    """u₀ = b·v₀ per neuron, at construction and after reset to a batch."""
    v0, b = np.array([-65.0, -70.0, 10.0]), np.array([0.2, 0.25, -3.0])
    soma = Izhikevich(units=3, potential_rest=v0, recovery_sensitivity=b)
    np.testing.assert_allclose(soma.recovery[...], np.float32(v0) * np.float32(b), rtol=1e-7)
    soma.reset((2,))
    np.testing.assert_allclose(soma.recovery[...], np.broadcast_to(v0 * b, (2, 3)), rtol=1e-6)


@pytest.mark.parametrize("name", ["izhikevich", "synaptic_lif", "alif", "qif"])
def test_user_models_pass_the_whole_check(registered, name):
    testing.check_model(registered[name], examples=4)


class Fragile(SynapticLIF):
    """√(V − E_L + 10³) in the drive: finite at rest and in a network, NaN
    more than 1000 mV below E_L, which a legal reset reaches."""

    @staticmethod
    def drives(p, x, current, stage, options):
        return {"potential": -(x["potential"] - p.potential_rest)
                + jnp.sqrt(x["potential"] - p.potential_rest + 1e3)
                + p.resistance * x["synaptic_current"],
                "synaptic_current": current - x["synaptic_current"]}


def test_a_broken_model_fails_naming_the_capability_and_the_parameters():
    """Its defaults pass; legal parameters where V falls far below E_L do not."""
    registry.register_soma(Fragile)
    with pytest.raises(AssertionError, match=r"check_model\(Fragile\): legal space failed, "
                                             r"method = euler, dtype = float32, dt = 0.1 with "
                                             r"parameters \{'potential_rest': \["):
        testing.check_model(Fragile, examples=6, methods=("euler",), dtypes=(jnp.float32,),
                            dts=(0.1,))


#: The corner set where the adaptive LIF's gradient first came out NaN
#: (found by the legal-space property): β = 38633 mV, 1 mV below threshold.
ALIF_CORNER = {"potential_rest": 10.0, "potential_reset": -30.362813841317646,
               "potential_tau": 115.11656338612246, "resistance": 0.05040233441648165,
               "threshold": 11.0, "adaptation_tau": 5.0433622901126993,
               "adaptation_strength": 38632.630709938436}


def alif_input_gradient(params: dict, steps: int, current: float = 400.0,
                        dt: float = 0.01) -> np.ndarray:
    """∂(spike count + mean V)/∂I of the page's adaptive LIF, exponential
    Euler, the adaptation jump's gradient kept (the default)."""
    soma = page_models()["alif"](units=1, dt=dt, method="exponential_euler", **params)
    x = jnp.full((steps, 1), current, jnp.float32)

    def loss(soma, x):
        rec = ss.simulate(soma, x)
        return rec.spikes.sum() + rec.potential.mean()

    return np.asarray(nnx.grad(loss, argnums=1)(soma, x), np.float64)


def threshold_loop_gain(params: dict, steps: int, current: float = 400.0,
                        dt: float = 0.01) -> np.ndarray:
    """|e^(−dt/τ_a) − β·σ'(V_{t+1} − V_th)| per step (float64), σ' the
    default fast sigmoid's 1/(1 + |x|)², along the subthreshold exponential
    Euler trajectory V_{t+1} = V∞ + (V_t − V∞)·e^(−dt/τ_m) (a = 0: no spike)."""
    p = {k: np.float64(np.float32(v)) for k, v in params.items()}
    v_inf = p["potential_rest"] + p["resistance"] * current
    t = np.arange(1, steps + 1)
    v = v_inf + (p["potential_rest"] - v_inf) * np.exp(-t * dt / p["potential_tau"])
    assert np.all(v < p["threshold"])
    sigma = 1.0 / (1.0 + np.abs(v - p["threshold"])) ** 2
    return np.abs(np.exp(-dt / p["adaptation_tau"]) - p["adaptation_strength"] * sigma)


def test_the_adaptive_lif_gradient_grows_by_its_threshold_loop_gain_then_overflows():
    """The NaN is no arithmetic accident: the true gradient of the surrogate
    model grows by the loop gain each step (about 10^4 here) until float32
    overflows, and amplification() sees it coming."""
    short = {n: alif_input_gradient(ALIF_CORNER, n) for n in (5, 6, 7)}
    gain = threshold_loop_gain(ALIF_CORNER, 7)
    for n in (5, 6):
        assert np.all(np.isfinite(short[n]))
        np.testing.assert_allclose(abs(short[n + 1][0, 0] / short[n][0, 0]), gain[n], rtol=1e-2)
    assert not np.all(np.isfinite(alif_input_gradient(ALIF_CORNER, 40)))
    soma = page_models()["alif"](units=1, dt=0.01, method="exponential_euler", **ALIF_CORNER)
    assert testing.amplification(soma, jnp.full((40, 1), 400.0)) > testing.OVERFLOWING_GAIN


@settings(SETTINGS, max_examples=12, phases=(Phase.explicit, Phase.generate))
@given(data=st.data())
def test_the_adaptive_lif_gradient_is_finite_wherever_its_loop_cannot_amplify(data):
    """With β·σ' ≤ 1 (β ≤ 1 mV under the fast sigmoid's peak 1/mV) and a
    stable step, every legal corner gives finite gradients, kept jump and all."""
    cls = page_models()["alif"]
    method = data.draw(st.sampled_from(integrators.METHODS), "method")
    dt = data.draw(st.sampled_from([0.01, 1.0]), "dt")
    params = data.draw(testing.legal_params(cls.config_class, units=4, bounds={
        "adaptation_strength": (0.0, 1.0),
        **({} if method == "exponential_euler" else
           {n: (dt, np.inf) for n in cls.config_class.time_constant_fields()})}), "params")
    current = data.draw(st.sampled_from([0.0, 400.0, 1e6, -1e6]), "current")
    soma = cls(units=4, dt=dt, method=method, trainable=tuple(params), **params)

    def loss(soma, x):
        rec = ss.simulate(soma, x)
        return rec.spikes.sum() + rec.potential.mean()

    # Jitted: one compiled program, where the forward and backward passes would be two.
    grad_soma, grad_x = nnx.jit(nnx.grad(loss, argnums=(0, 1)))(soma, jnp.full((40, 4), current))
    assert np.all(np.isfinite(np.asarray(grad_x))), params
    for leaf in nnx.state(grad_soma, nnx.Param).values():
        assert np.all(np.isfinite(np.asarray(leaf[...]))), params


@pytest.mark.parametrize("kwargs, message", [
    ({"methods": ("eulr",)}, r"check_model: methods = \['eulr'\]"),
    ({"examples": 0}, "check_model: examples = 0"),
    ({"units": 0}, "check_model: units = 0"),
])
def test_the_check_refuses_bad_settings_before_any_work(kwargs, message):
    with pytest.raises(ValueError, match=message):
        testing.check_model(SynapticLIF, **kwargs)
    with pytest.raises(TypeError, match="legal_params: config_class"):
        testing.legal_params(SynapticLIF)  # the soma class, not its config
