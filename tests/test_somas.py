"""The soma modules: state and parameter Variables, dtypes, batching, reset,
split/merge, initializers, repr. One step at a time (``soma(current)``)."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import spark_somas as ss

MODELS = list(ss.SOMAS)
STATE = {"expif": {"potential"}, "refractory": {"potential", "refractory"},
         "adex": {"potential", "adaptation"},
         "simplified": {"potential", "refractory", "threshold_offset"}}
N = 3


def fields(model: str) -> list[str]:
    return [f.name for f in ss.SOMAS[model].config_class.quantity_fields()]


def steps(soma, currents) -> ss.SomaOutput:
    """``soma(current)`` for each step, stacked time-major."""
    outs = [soma(c) for c in currents]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


def drive(steps: int = 30, batch: tuple[int, ...] = (), seed: int = 0) -> jax.Array:
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(3000.0, 1500.0, (steps, *batch, N)), jnp.float32)


@pytest.mark.parametrize("model", MODELS)
def test_state_variables_hold_exactly_the_neuron_state_at_rest(model):
    soma = ss.SOMAS[model](units=N)
    state = nnx.state(soma, ss.SomaState)
    assert set(state.keys()) == STATE[model] == set(soma.state_names)
    np.testing.assert_array_equal(state["potential"][...], np.full(N, -70.6, np.float32))
    for name in STATE[model] - {"potential"}:
        assert not np.any(state[name][...]) and state[name][...].shape == (N,)
    if "refractory" in state:
        assert state["refractory"][...].dtype == jnp.int32
    # SomaState, Param and SomaConstant partition everything the module holds.
    everything = set(nnx.state(soma).keys())
    constants = set(nnx.state(soma, ss.SomaConstant).keys())
    assert everything == STATE[model] | constants and constants == set(fields(model))
    assert not set(nnx.state(soma, nnx.Param).keys())


@pytest.mark.parametrize("model", MODELS)
def test_trainable_gives_exactly_the_named_params(model):
    chosen = tuple(fields(model)[1::2])
    soma = ss.SOMAS[model](units=(2, N), trainable=chosen, param_dtype=jnp.float16)
    params = nnx.state(soma, nnx.Param)
    assert set(params.keys()) == set(chosen)
    for name in chosen:
        assert params[name][...].shape == (2, N) and params[name][...].dtype == jnp.float16
    assert set(nnx.state(soma, ss.SomaConstant).keys()) == set(fields(model)) - set(chosen)
    single = ss.SOMAS[model](units=N, trainable="potential_tau")
    assert set(nnx.state(single, nnx.Param).keys()) == {"potential_tau"}


@pytest.mark.parametrize("dtype,param_dtype", [(jnp.bfloat16, jnp.float32),
                                               (jnp.float16, jnp.float16),
                                               (jnp.float32, jnp.bfloat16)])
@pytest.mark.parametrize("model", MODELS)
def test_dtype_and_param_dtype(model, dtype, param_dtype):
    soma = ss.SOMAS[model](units=N, dtype=dtype, param_dtype=param_dtype,
                           trainable=("potential_tau",))
    assert soma.potential_tau[...].dtype == param_dtype
    assert soma.resistance[...].dtype == param_dtype
    out = steps(soma, drive())
    assert out.spikes.dtype == dtype and out.potential.dtype == dtype
    assert float(out.spikes.sum()) > 0
    for name, var in nnx.state(soma, ss.SomaState).items():
        assert var[...].dtype == (jnp.int32 if name == "refractory" else dtype), name


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("model", MODELS)
def test_casting_every_floating_leaf_keeps_that_dtype(model, dtype):
    soma = ss.SOMAS[model](units=N, trainable=("spike_slope",))
    cast = jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
        nnx.state(soma))
    nnx.update(soma, cast)
    out = steps(soma, drive(batch=(2,)))
    soma.reset()
    out_reset = soma(drive(steps=1)[0])
    for leaf in jax.tree.leaves(nnx.state(soma)) + [out.spikes, out.potential,
                                                     out_reset.potential]:
        assert leaf.dtype in (dtype, jnp.int32), leaf.dtype


@pytest.mark.parametrize("model", MODELS)
def test_batched_equals_unbatched_per_element(model):
    currents = drive(batch=(2,))
    batched = steps(ss.SOMAS[model](units=N), currents)
    for b in range(2):
        single = steps(ss.SOMAS[model](units=N), currents[:, b])
        chex.assert_trees_all_equal(jax.tree.map(lambda x: x[:, b], batched), single)


def test_batch_shapes_broadcast_and_incompatible_ones_raise():
    soma = ss.SimplifiedAdaptiveExponentialSoma(units=(2, N))
    step = nnx.jit(lambda soma, current: soma(current))  # one compile per shape, not per op
    out = step(soma, jnp.zeros((4, 2, N)))
    assert out.spikes.shape == out.potential.shape == (4, 2, N)
    assert all(getattr(soma, n)[...].shape == (4, 2, N) for n in soma.state_names)
    assert step(soma, jnp.zeros((2, N))).potential.shape == (4, 2, N)  # unbatched input broadcasts
    assert step(soma, jnp.zeros((5, 4, 2, N))).potential.shape == (5, 4, 2, N)
    with pytest.raises(ValueError) as error:
        soma(jnp.zeros((3, 2, N)))
    assert "(3, 2, 3)" in str(error.value) and "(5, 4, 2, 3)" in str(error.value)
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        soma(jnp.zeros((4, N, 2)))


def test_reset_restores_rest_with_or_without_batch():
    soma = ss.SimplifiedAdaptiveExponentialSoma(units=N, dtype=jnp.bfloat16,
                                                potential_rest=-65.0)
    steps(soma, drive(batch=(2,)))
    assert np.any(np.asarray(soma.refractory[...])) and np.any(
        np.asarray(soma.threshold_offset[...], np.float32))
    for batch, shape in ((None, (N,)), ((5, 2), (5, 2, N))):
        soma.reset(batch)
        state = soma.neuron_state()
        assert all(v.shape == shape for v in state.values())
        np.testing.assert_array_equal(np.asarray(state["potential"], np.float32), -65.0)
        assert not np.any(state["refractory"]) and not np.any(state["threshold_offset"])
        assert state["potential"].dtype == jnp.bfloat16 and state["refractory"].dtype == jnp.int32
    adex = ss.AdaptiveExponentialSoma(units=N)
    steps(adex, drive())
    adex.reset()
    assert not np.any(adex.adaptation[...])


@pytest.mark.parametrize("model", MODELS)
def test_split_merge_round_trip(model):
    def make():
        soma = ss.SOMAS[model](units=N, trainable=("threshold",))
        steps(soma, drive(steps=25))  # a state away from rest
        return soma

    soma, twin = make(), make()
    graphdef, state = nnx.split(soma)
    clone = nnx.merge(graphdef, state)
    assert type(clone) is type(soma) and clone.config == soma.config
    chex.assert_trees_all_equal(nnx.state(clone), nnx.state(twin))
    chex.assert_trees_all_equal(steps(clone, drive(seed=1)), steps(twin, drive(seed=1)))


def test_one_step_follows_the_equations_and_the_pure_step_agrees():
    """A spike is reported in the step that crosses V_th and V reads V_r
    after it; w jumps by b; the functional ``ss.step`` does the same."""
    soma = ss.AdaptiveExponentialSoma(units=N, potential_reset=-60.0)
    current = jnp.asarray([0.0, 600.0, 1e5])
    params, state = soma.parameters(), soma.neuron_state()
    new, spikes = ss.step(ss.AdaptiveExponentialSoma, params, state, current,
                          ss.StepOptions(dt=0.1))
    out = soma(current)
    chex.assert_trees_all_equal((out.spikes, out.potential), (spikes, new["potential"]))
    np.testing.assert_array_equal(out.spikes, [0.0, 0.0, 1.0])
    v = -70.6 + 0.1 / 9.37 * (2.0 * np.exp(-10.1) + 600.0 / 30.0)
    np.testing.assert_allclose(out.potential, [-70.6 + 0.1 / 9.37 * 2.0 * np.exp(-10.1), v, -60.0],
                               rtol=1e-6)
    np.testing.assert_allclose(soma.adaptation[...], [0.0, 0.0, 80.5], rtol=1e-6)


def uniform(low, high):
    """An initializer (key, shape, dtype) -> U(low, high), jax.nn.initializers style."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, low, high)
    return init


def test_initializers_build_heterogeneous_populations():
    kwargs = dict(units=64, potential_tau=uniform(5.0, 20.0),
                  rheobase_threshold=uniform(-52.0, -48.0), trainable=("potential_tau",))
    soma = ss.ExponentialSoma(rngs=nnx.Rngs(0), **kwargs)
    tau, v_t = np.asarray(soma.potential_tau[...]), np.asarray(soma.rheobase_threshold[...])
    assert tau.shape == v_t.shape == (64,) and isinstance(soma.potential_tau, nnx.Param)
    assert 5.0 <= tau.min() < 7.0 and 18.0 < tau.max() < 20.0 and np.ptp(v_t) > 3.0
    np.testing.assert_array_equal(ss.ExponentialSoma(rngs=nnx.Rngs(0), **kwargs).potential_tau[...],
                                  tau)
    assert not np.array_equal(ss.ExponentialSoma(rngs=nnx.Rngs(1), **kwargs).potential_tau[...],
                              tau)
    first_spike = np.argmax(np.asarray(ss.simulate(soma, jnp.full((200, 64), 900.0)).spikes), 0)
    assert len(set(first_spike.tolist())) > 10  # the population is heterogeneous in time too
    normal = ss.ExponentialSoma(units=8, rngs=nnx.Rngs(2),
                                potential_rest=jax.nn.initializers.normal(1.0))
    assert np.std(np.asarray(normal.potential_rest[...])) > 0.1


def test_bad_construction_arguments_raise():
    with pytest.raises(ValueError, match="units"):
        ss.ExponentialSoma(units=0)
    with pytest.raises(ValueError, match="dt"):
        ss.ExponentialSoma(units=N, dt=0.0)
    with pytest.raises(ValueError, match="dtype"):
        ss.ExponentialSoma(units=N, dtype=jnp.int32)
    with pytest.raises(ValueError, match="potential_tau"):
        ss.ExponentialSoma(units=N, potential_tau=np.ones(N + 1))


def test_repr_shows_units_and_trained_fields():
    soma = ss.AdaptiveExponentialSoma(units=(2, N), trainable=("potential_tau",),
                                      dtype=jnp.bfloat16)
    text = repr(soma)
    for fragment in ("AdaptiveExponentialSoma", "units=(2, 3)", "dt=0.1 ms", "bfloat16",
                     "(trained) ms", "resistance=0.0333333 GΩ", "adaptation_delta=80.5 pA",
                     "adaptation_subthreshold=4 nS", "threshold=-40.4 mV"):
        assert fragment in text, text
    assert "<table>" in soma._repr_html_() and "GΩ" in soma._repr_html_()


def test_soma_with_an_initializer_builds_inside_jit():
    """Drawn values are tracers under jit: construction must not read them."""

    def draw_tau(key, shape, dtype):
        return 5.0 + jax.random.uniform(key, shape, dtype)

    @jax.jit
    def first_potential(current):
        soma = ss.AdaptiveExponentialSoma(units=3, potential_tau=draw_tau, rngs=nnx.Rngs(0))
        return soma(current).potential

    eager = ss.AdaptiveExponentialSoma(units=3, potential_tau=draw_tau, rngs=nnx.Rngs(0))
    chex.assert_trees_all_close(first_potential(jnp.full(3, 800.0)), eager(jnp.full(3, 800.0)).potential)


# -- the protocol knows no family's names; methods are objects


def test_the_exponential_gradient_is_the_exponential_configs_own():
    assert "exp_gradient" not in {f.name for f in dataclasses.fields(ss.configs.SomaConfig)}
    assert ss.ExponentialSomaConfig(exp_gradient="bounded").settings() == (
        ("exp_gradient", "bounded"),)
    with pytest.raises(ss.ConfigError, match="ExponentialSomaConfig.exp_gradient = 'steep'"):
        ss.ExponentialSomaConfig(exp_gradient="steep")
    options = ss.AdaptiveExponentialSoma(units=1, exp_gradient="detached").options
    assert options.setting("exp_gradient", None) == "detached"


def test_a_config_dict_of_a_model_without_an_exponential_drops_exp_gradient():
    """Every config once held exp_gradient; a model without an exponential
    ignored it, so its older dict loads with the same meaning."""
    @dataclasses.dataclass(frozen=True, kw_only=True, eq=False, repr=False)
    class LeakConfig(ss.configs.SomaConfig):
        potential_tau: float = ss.configs.quantity(10.0, symbol="τ", units="ms", doc="leak",
                                                   rule=ss.configs.POSITIVE, time_constant=True)

    old = {"potential_tau": 12.0, "surrogate": "fast_sigmoid", "detach_reset": True,
           "detach_adaptation": False, "exp_gradient": "bounded"}
    assert LeakConfig.from_dict(old) == LeakConfig(potential_tau=12.0)
    assert ss.ExponentialSomaConfig.from_dict(
        {**ss.ExponentialSomaConfig().to_dict(), "exp_gradient": "bounded"}).exp_gradient == "bounded"


def test_a_soma_output_holds_what_the_model_declares():
    soma = ss.AdaptiveExponentialSoma(units=N)
    assert soma.output_names() == ("spikes", "potential", "adaptation")
    out = ss.simulate(soma, jnp.full((5, N), 800.0), record=("spikes", "adaptation"))
    assert out.keys() == ("spikes", "adaptation") and "potential" not in out
    assert out.potential is None                       # declared, not recorded
    assert set(dict(out)) == {"spikes", "adaptation"}
    np.testing.assert_array_equal(out.adaptation, out["adaptation"])
    with pytest.raises(AttributeError, match="threshold_offset"):
        out.threshold_offset                           # not this model's
    with pytest.raises(TypeError, match="read by name"):
        list(out)


def test_a_method_is_its_tableau_and_its_coefficient_rule():
    """advance runs any Method it is given: Heun's method on τ·dx/dt = −x
    against the float64 closed form of one Heun step, x·(1 − h + h²/2)."""
    heun = ss.integrators.Method(
        "heun", ss.integrators.Tableau(a=((), (1.0,)), b=(0.5, 0.5)))
    tau, dt = 7.0, 0.9
    x = jnp.asarray([1.0, -3.0], jnp.float32)
    got = ss.integrators.advance(heun, lambda y, ev: {"x": -y["x"]}, {"x": jnp.float32(tau)},
                                 {"x": x}, dt)
    h = dt / tau
    np.testing.assert_allclose(got["x"], np.asarray(x, np.float64) * (1 - h + h * h / 2),
                               rtol=1e-6)
    exp_euler = ss.integrators.method("exponential_euler")
    assert exp_euler is ss.integrators.INTEGRATORS["exponential_euler"]
    np.testing.assert_allclose(exp_euler.coefficients({"x": jnp.float32(tau)}, dt)["x"],
                               1 - np.exp(-dt / tau), rtol=1e-6)
    assert ss.StepOptions(dt=0.1, method="rk4").method.tableau == ss.integrators.TABLEAUS["rk4"]
    with pytest.raises(ValueError, match="method = 'rk3'"):
        ss.StepOptions(dt=0.1, method="rk3")


def test_a_model_gates_its_own_update():
    """The refractory soma's gate and counter, not the step, hold V and drop
    the spike: a subclass whose gate withholds nothing fires again at once."""
    class Leaky(ss.RefractoryExponentialSoma):
        @staticmethod
        def gate(p, counters, x, x_new, spike):
            return x_new, spike

    current = jnp.full((400, 1), 20000.0)
    held = ss.simulate(ss.RefractoryExponentialSoma(units=1, cooldown=2.0), current)
    free = ss.simulate(Leaky(units=1, cooldown=2.0), current)
    assert np.diff(np.flatnonzero(np.asarray(held.spikes[:, 0]))).min() >= 20
    assert np.diff(np.flatnonzero(np.asarray(free.spikes[:, 0]))).min() < 20
    with pytest.raises(TypeError, match="need an update_counters"):
        class Uncounted(ss.ExponentialSoma):
            state_variables = {**ss.ExponentialSoma.state_variables,
                               "timer": ss.somas.StateVariable("steps", integer=True,
                                                               integrated=False)}
