"""Configs: documented fields, inheritance, rules, skipping, dict/JSON round trip, defaults."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import spark_somas as ss

CONFIGS = [ss.ExponentialSomaConfig, ss.RefractoryExponentialSomaConfig,
           ss.AdaptiveExponentialSomaConfig, ss.SimplifiedAdaptiveExponentialSomaConfig]
SOMA_OF = {ss.ExponentialSomaConfig: ss.ExponentialSoma,
           ss.RefractoryExponentialSomaConfig: ss.RefractoryExponentialSoma,
           ss.AdaptiveExponentialSomaConfig: ss.AdaptiveExponentialSoma,
           ss.SimplifiedAdaptiveExponentialSomaConfig: ss.SimplifiedAdaptiveExponentialSoma}

# The documented fields (docs/models.md): field -> (units, rule as printed, values that break it).
NON_FINITE = [math.nan, math.inf, -math.inf]
DOCUMENTED_FIELDS = {
    "potential_rest": ("mV", ("finite",), [-2e6] + NON_FINITE),
    "potential_reset": ("mV", ("< threshold",), [-40.4, 0.0] + NON_FINITE),
    "potential_tau": ("ms", (">= 1e-06",), [0.0, -1.0, 1e-7, 2e6] + NON_FINITE),
    "resistance": ("GΩ", (">= 1e-06",), [0.0, -1.0, 1e-7, 2e6] + NON_FINITE),
    "threshold": ("mV", ("> rheobase_threshold",), [-50.4, -60.0] + NON_FINITE),
    "rheobase_threshold": ("mV", ("finite",), NON_FINITE),
    "spike_slope": ("mV", (">= 1e-06",), [0.0, -1.0, 1e-7, 2e6] + NON_FINITE),
    "cooldown": ("ms", (">= 0", "≥ 0"), [-1e-3] + NON_FINITE),
    "adaptation_tau": ("ms", (">= 1e-06",), [0.0, -1.0, 1e-7, 2e6] + NON_FINITE),
    "adaptation_delta": ("pA", ("finite",), [1.5e6] + NON_FINITE),
    "adaptation_subthreshold": ("nS", ("finite",), NON_FINITE),
    "threshold_tau": ("ms", (">= 1e-06",), [0.0, -1.0, 1e-7, 2e6] + NON_FINITE),
    "threshold_delta": ("mV", (">= 0", "≥ 0"), [-1e-3] + NON_FINITE),
}
EXPIF = ["potential_rest", "potential_reset", "potential_tau", "resistance", "threshold",
         "rheobase_threshold", "spike_slope"]
FIELDS_OF = {
    ss.ExponentialSomaConfig: EXPIF,
    ss.RefractoryExponentialSomaConfig: EXPIF + ["cooldown"],
    ss.AdaptiveExponentialSomaConfig: EXPIF + ["adaptation_tau", "adaptation_delta",
                                               "adaptation_subthreshold"],
    ss.SimplifiedAdaptiveExponentialSomaConfig: EXPIF + ["cooldown", "threshold_tau",
                                                         "threshold_delta"],
}
VALID_NON_DEFAULT = dict(
    potential_rest=-65.0, potential_reset=-68.0, potential_tau=12.5, resistance=0.05,
    threshold=-35.0, rheobase_threshold=-52.0, spike_slope=1.5, cooldown=1.5, adaptation_tau=100.0,
    adaptation_delta=40.0, adaptation_subthreshold=2.5, threshold_tau=30.0, threshold_delta=1.5)
CASES = [(cls, name, value) for cls in CONFIGS for name in FIELDS_OF[cls]
         for value in DOCUMENTED_FIELDS[name][2]]


def quantity_names(cls) -> list[str]:
    return [f.name for f in cls.quantity_fields()]


def assert_names(error: pytest.ExceptionInfo, field: str, value: str) -> None:
    """The message names the field, the value and the rule."""
    assert isinstance(error.value, ss.ConfigError) and isinstance(error.value, ValueError)
    message = str(error.value)
    assert field in message, message
    assert value in message, message
    assert any(rule in message for rule in DOCUMENTED_FIELDS[field][1]), message


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_fields_units_and_metadata_as_documented(cls):
    assert quantity_names(cls) == FIELDS_OF[cls]
    assert {f.name for f in dataclasses.fields(cls) if f.init} == set(FIELDS_OF[cls]) | {
        "surrogate", "detach_reset", "detach_adaptation", "exp_gradient"}
    for name in FIELDS_OF[cls]:
        info = cls.field_info(name)
        assert info["units"] == DOCUMENTED_FIELDS[name][0]
        assert info["symbol"] and info["doc"]


def test_inheritance_as_documented():
    assert issubclass(ss.RefractoryExponentialSomaConfig, ss.ExponentialSomaConfig)
    assert issubclass(ss.AdaptiveExponentialSomaConfig, ss.ExponentialSomaConfig)
    assert not issubclass(ss.AdaptiveExponentialSomaConfig, ss.RefractoryExponentialSomaConfig)
    assert issubclass(ss.SimplifiedAdaptiveExponentialSomaConfig,
                      ss.RefractoryExponentialSomaConfig)


@pytest.mark.parametrize("cls,name,value", CASES,
                         ids=[f"{c.__name__}-{n}-{v}" for c, n, v in CASES])
def test_rule_rejects_bad_scalar(cls, name, value):
    with pytest.raises(ss.ConfigError) as error:
        cls(**{name: value})
    assert_names(error, name, repr(value))


@pytest.mark.parametrize("name", list(DOCUMENTED_FIELDS))
def test_rule_rejects_one_bad_element_of_a_per_neuron_array(name):
    cls = (ss.AdaptiveExponentialSomaConfig if name.startswith("adaptation")
           else ss.SimplifiedAdaptiveExponentialSomaConfig)
    bad = DOCUMENTED_FIELDS[name][2][0]
    values = np.full(5, getattr(cls(), name))
    values[3] = bad
    with pytest.raises(ss.ConfigError) as error:
        cls(**{name: values})
    assert_names(error, name, repr(bad))
    assert "(3,)" in str(error.value)
    with pytest.raises(ss.ConfigError) as error:  # the same through a soma's overrides
        SOMA_OF[cls](units=5, **{name: values})
    assert_names(error, name, repr(bad))


@pytest.mark.parametrize("name,value", [("cooldown", 0.0), ("threshold_delta", 0.0),
                                        ("adaptation_subthreshold", -10.0),
                                        ("adaptation_delta", -5.0), ("potential_reset", -41.0)])
def test_boundary_values_that_keep_the_rule_are_accepted(name, value):
    cls = (ss.AdaptiveExponentialSomaConfig if name.startswith("adaptation")
           else ss.SimplifiedAdaptiveExponentialSomaConfig)
    assert getattr(cls(**{name: value}), name) == value


def test_cross_field_rules_name_both_values():
    with pytest.raises(ss.ConfigError) as error:  # V_T moved above V_th
        ss.ExponentialSomaConfig(rheobase_threshold=-30.0)
    assert "-30.0" in str(error.value) and "-40.4" in str(error.value)
    with pytest.raises(ss.ConfigError) as error:  # V_th moved below V_r
        ss.ExponentialSomaConfig(threshold=-75.0, rheobase_threshold=-80.0)
    assert "potential_reset" in str(error.value) and "-75.0" in str(error.value)


def test_replace_validates_again():
    config = ss.ExponentialSomaConfig()
    with pytest.raises(ss.ConfigError, match="potential_tau"):
        config.replace(potential_tau=-1.0)
    assert config.replace(potential_tau=20.0).potential_tau == 20.0


def draws(value):
    """An initializer (key, shape, dtype) -> array whose draws are all ``value``
    except one at a random place."""
    def init(key, shape, dtype=jnp.float32):
        where = jax.random.randint(key, (), 0, math.prod(shape))
        return jnp.where(jnp.arange(math.prod(shape)).reshape(shape) == where, value, -50.0
                         ).astype(dtype)
    return init


@pytest.mark.parametrize("trainable", [False, True])
@pytest.mark.parametrize("name,value", [("potential_tau", -50.0), ("threshold", -60.0),
                                        ("potential_rest", math.nan), ("spike_slope", math.inf)])
def test_initializer_drawing_a_bad_value_fails_at_soma_construction(name, value, trainable):
    # threshold: -50 everywhere (> V_T = -50.4) but one -60, drawn at a random neuron
    init = draws(value) if name == "threshold" else jax.nn.initializers.constant(value)
    config = ss.ExponentialSomaConfig(**{name: init})  # nothing drawn yet, nothing to check
    with pytest.raises(ss.ConfigError) as error:
        ss.ExponentialSoma(config, units=(2, 3), rngs=nnx.Rngs(0),
                           trainable=(name,) if trainable else ())
    assert_names(error, name, repr(value))


def test_initializer_needs_rngs():
    config = ss.ExponentialSomaConfig(potential_tau=jax.nn.initializers.constant(10.0))
    with pytest.raises(ss.ConfigError, match="rngs"):
        ss.ExponentialSoma(config, units=3)


def test_skip_validation_skips():
    config = ss.SimplifiedAdaptiveExponentialSomaConfig(
        __skip_validation__=True, potential_tau=-1.0, threshold=-80.0, cooldown=math.nan,
        threshold_delta=jax.nn.initializers.constant(-1.0))
    assert config.potential_tau == -1.0 and math.isnan(config.cooldown)
    soma = ss.SimplifiedAdaptiveExponentialSoma(config, units=2, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(soma.threshold_delta[...], [-1.0, -1.0])


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_dict_and_json_round_trip(cls):
    changed = {name: VALID_NON_DEFAULT[name] for name in FIELDS_OF[cls]}
    config = cls(**changed, surrogate=ss.surrogates.ArcTan(alpha=3.0, damping=0.5),
                 detach_reset=False, exp_gradient="bounded")
    d = config.to_dict()
    assert d["surrogate"] == {"name": "arctan", "alpha": 3.0, "damping": 0.5, "relative": False}
    assert d["exp_gradient"] == "bounded"
    assert json.loads(json.dumps(d)) == d
    for restored in (cls.from_dict(d), cls.from_json(config.to_json())):
        assert restored == config and type(restored) is cls
        assert restored.surrogate == ss.surrogates.ArcTan(alpha=3.0, damping=0.5)
        assert restored.detach_reset is False and restored.exp_gradient == "bounded"
    assert cls.from_dict(cls().to_dict()) == cls()
    assert config != cls()


def test_per_neuron_arrays_round_trip():
    config = ss.AdaptiveExponentialSomaConfig(adaptation_delta=np.array([0.0, 40.0, 80.5]),
                                              surrogate="triangle")
    restored = ss.AdaptiveExponentialSomaConfig.from_json(config.to_json())
    np.testing.assert_array_equal(restored.adaptation_delta, [0.0, 40.0, 80.5])
    assert restored == config and restored.surrogate == ss.surrogates.Triangle()


def test_unknown_fields_raise():
    with pytest.raises(ss.ConfigError, match="cooldown"):
        ss.ExponentialSomaConfig.from_dict({"cooldown": 2.0})
    with pytest.raises(ss.ConfigError, match="cooldown"):
        ss.AdaptiveExponentialSoma(units=3, cooldown=2.0)
    with pytest.raises((TypeError, ValueError), match="cooldown"):
        ss.ExponentialSomaConfig(cooldown=2.0)
    with pytest.raises(ss.ConfigError, match="cooldown"):
        ss.ExponentialSoma(units=3, trainable=("cooldown",))
    with pytest.raises(ss.ConfigError, match="RefractoryExponentialSomaConfig"):
        ss.RefractoryExponentialSoma(ss.ExponentialSomaConfig(), units=3)


@pytest.mark.parametrize("name,value", [("potential_tau", "fast"), ("threshold", True),
                                        ("surrogate", "nope"), ("detach_reset", 1)])
def test_wrong_kinds_of_value_raise_naming_the_field(name, value):
    with pytest.raises(ValueError) as error:
        ss.ExponentialSomaConfig(**{name: value})
    assert name in str(error.value) and repr(value) in str(error.value)


def test_default_expif_fires_at_the_documented_rate():
    """The docstring: a constant 800 pA makes the default soma fire at 56 Hz."""
    assert "800 pA" in ss.ExponentialSomaConfig.__doc__ and "56 Hz" in ss.ExponentialSomaConfig.__doc__
    soma = ss.ExponentialSoma(units=1)
    out = ss.simulate(soma, jnp.full((10_000, 1), 800.0), record=("spikes",))
    rate = float(out.spikes.sum()) / 1.0  # spikes in 10,000 × 0.1 ms = 1 s
    assert 50.0 <= rate <= 62.0, rate


def test_repr_shows_units():
    text = repr(ss.AdaptiveExponentialSomaConfig())
    for fragment in ("potential_tau=9.37 ms", "resistance=0.0333333 GΩ", "adaptation_delta=80.5 pA",
                     "adaptation_subthreshold=4 nS", "threshold=-40.4 mV"):
        assert fragment in text, text
