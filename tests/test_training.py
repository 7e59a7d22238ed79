"""Training toolkit: encoders, readouts, losses, steps, constraints, fit."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import spark_somas as ss
from spark_somas import training as tr
from spark_somas.datasets import Dataset

STEPS, HIDDEN, CLASSES, FEATURES, BATCH = 16, 16, 3, 6, 12
# One optimizer transformation object for every test: equal graph definitions
# let nnx.jit reuse a compiled train step across tests (the learning rate is
# optimizer state, set per test), which keeps this file within its time budget.
TX = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
ENCODER, OBJECTIVE = tr.Encoder("current", STEPS), tr.Objective(rate_strength=0.1)


def tiny_data(n: int = BATCH, seed: int = 0) -> Dataset:
    """Three separable classes: each lights up its own pair of features."""
    rng = np.random.default_rng(seed)
    y = np.arange(n, dtype=np.int32) % CLASSES
    x = 0.2 * rng.uniform(size=(n, FEATURES)).astype(np.float32)
    x[np.arange(n), 2 * y] = 1.0
    x[np.arange(n), 2 * y + 1] = 1.0
    return Dataset("tiny", x, y, x.copy(), y.copy(), n_classes=CLASSES, encoding="static")


def tiny_net(soma="adex", seed=0, **kw) -> tr.SpikingNetwork:
    kw = {"input_gain": 2.0, "trainable_neurons": True} | kw
    return tr.SpikingNetwork(FEATURES, HIDDEN, CLASSES, soma=soma, rngs=nnx.Rngs(seed), **kw)


def optimizer(model, learning_rate: float) -> nnx.Optimizer:
    opt = tr.make_optimizer(model, tx=TX)
    opt.opt_state[0].inner_state[1].hyperparams["learning_rate"][...] = learning_rate  # finite guard, clip, TX
    return opt


def steps(model, opt, data, n):
    return [float(tr.train_step(model, opt, data.x_train, data.y_train, jax.random.key(i),
                                encoder=ENCODER, objective=OBJECTIVE)["loss"]) for i in range(n)]


def test_encoders_shapes_and_codes():
    x = jnp.array([[0.0, 0.1, 0.2, 0.6, 1.0]])
    cur = tr.Encoder("current", 4)(x)
    chex.assert_shape(cur, (4, 1, 5))
    chex.assert_trees_all_equal(cur[3], x)

    lat = np.asarray(tr.Encoder("latency", 11, threshold=0.2)(x))[:, 0]  # (T, F)
    chex.assert_shape(lat, (11, 5))
    assert lat[:, :2].sum() == 0  # below threshold: silent
    assert (lat[:, 2:].sum(0) == 1).all()  # one spike each
    assert list(lat[:, 2:].argmax(0)) == [10, 5, 0]  # x = threshold -> last, x = 1 -> first

    spikes = jnp.zeros((2, 7, 3))
    chex.assert_shape(tr.Encoder("spikes", 7)(spikes), (7, 2, 3))
    with pytest.raises(ValueError, match="steps=5"):
        tr.Encoder("spikes", 5)(spikes)
    with pytest.raises(ValueError, match="kind"):
        tr.Encoder("morse")
    with pytest.raises(ValueError, match="rate_hz"):
        tr.Encoder("poisson", rate_hz=2000.0, dt=1.0)


def test_poisson_encoder_rate_matches_and_depends_on_key():
    x = jnp.array([[0.0, 0.25, 1.0]])
    enc = tr.Encoder("poisson", 20_000, dt=1.0, rate_hz=200.0)
    s = enc(x, jax.random.key(0))
    p = np.asarray(s.mean(axis=(0, 1)))  # spikes per step
    np.testing.assert_allclose(p, [0.0, 0.05, 0.2], atol=0.01)  # x · 200 Hz · 1 ms
    assert not np.array_equal(s, enc(x, jax.random.key(1)))
    chex.assert_trees_all_equal(s, enc(x, jax.random.key(0)))


def test_readouts_and_rate_loss():
    v = jnp.array([[[1.0, -2.0]], [[3.0, 0.0]]])  # (T=2, B=1, C=2)
    chex.assert_trees_all_close(tr.max_potential(v), jnp.array([[3.0, 0.0]]))
    chex.assert_trees_all_close(tr.mean_potential(v), jnp.array([[2.0, -1.0]]))
    chex.assert_trees_all_close(tr.spike_count(jnp.ones((5, 1, 2))), jnp.full((1, 2), 5.0))
    # one spike in 4 steps of 2 ms: 125 Hz; at the target rate the penalty vanishes
    s = jnp.array([1.0, 0.0, 0.0, 0.0]).reshape(4, 1, 1)
    chex.assert_trees_all_close(tr.firing_rate(s, 2.0), 125.0)
    assert float(tr.firing_rate_loss(s, 2.0, 125.0)) == pytest.approx(0.0)
    assert float(tr.firing_rate_loss(s, 2.0, 250.0)) == pytest.approx(0.25)


def recurrent_net(output):
    model = tiny_net("refractory", recurrent=True, output=output, synapse_tau=4.0)
    model.layers[0].recurrent.kernel[...] = 0.3 * jax.random.normal(jax.random.key(2),
                                                                    (HIDDEN, HIDDEN))
    return model


@nnx.jit  # one program for the step (and one for its backward pass), not one per operation
def _step(model, x_t):
    return model.step(x_t)


@functools.lru_cache(maxsize=None)
def python_loop(output):
    """The reference of the test below, the same for every remat: the loss,
    spikes, potential and gradient of the network stepped by a Python loop."""
    def loss(model, x):
        model.reset(x.shape[1:-1])
        traces = [_step(model, x_t) for x_t in x]
        spikes = jnp.stack([t[0][0] for t in traces])
        potential = jnp.stack([t[1] for t in traces])
        return jnp.sum(jnp.mean(potential, 0)), (spikes, potential)

    return nnx.value_and_grad(loss, has_aux=True)(recurrent_net(output),
                                                  ENCODER(tiny_data().x_train))


@pytest.mark.parametrize("remat", [False, True, 3])
@pytest.mark.parametrize("output", ["leaky", "soma"])
def test_recurrent_network_through_the_driver_equals_a_python_loop(remat, output):
    model = recurrent_net(output)
    x = ENCODER(tiny_data().x_train)

    def loss(model, x):
        out = model(x, remat=remat)
        return jnp.sum(out.logits), out

    (l_drive, out), g_drive = nnx.value_and_grad(loss, has_aux=True)(model, x)
    (l_loop, (spikes, potential)), g_loop = python_loop(output)
    assert float(out.hidden_spikes.sum()) > 0
    chex.assert_trees_all_close(out.hidden_spikes, spikes)
    chex.assert_trees_all_close(out.output_potential, potential, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(l_drive, l_loop, rtol=1e-5)
    # atol: summation order differs (the driver projects the input of all steps at once)
    chex.assert_trees_all_close(nnx.state(g_drive, nnx.Param), nnx.state(g_loop, nnx.Param),
                                rtol=1e-3, atol=5e-4)


def test_network_rejects_bad_settings():
    with pytest.raises(ValueError, match="soma"):
        tiny_net("lif")
    with pytest.raises(ValueError, match="count"):
        tiny_net(readout="count")
    with pytest.raises(ValueError, match="input_gain"):
        tiny_net(input_gain=-1.0)


@pytest.mark.parametrize("soma", sorted(ss.SOMAS))
def test_few_steps_reduce_loss(soma):
    data = tiny_data()
    model = tiny_net(soma)
    losses = steps(model, optimizer(model, 5e-2), data, 10)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses
    chex.assert_shape(model.hidden.potential[...], (HIDDEN,))  # the step leaves somas at rest


def _assert_inside_rules(soma):
    params = {k: np.asarray(v, np.float64) for k, v in soma.parameters().items()}
    soma.config.validate(params)  # raises ConfigError on any broken rule
    for name in soma.trainable:
        if name.endswith("_tau"):
            assert params[name].min() >= soma.dt, name


@pytest.mark.parametrize("soma", sorted(ss.SOMAS))
def test_huge_learning_rate_keeps_neuron_params_inside_rules(soma):
    data = tiny_data()
    model = tiny_net(soma)
    before = {k: np.asarray(v) for k, v in model.hidden.parameters().items()}
    opt = optimizer(model, 1e3)
    for _ in range(3):
        steps(model, opt, data, 1)
        _assert_inside_rules(model.hidden)
    after = model.hidden.parameters()
    moved = [n for n in model.hidden.trainable if np.abs(after[n] - before[n]).max() > 5.0]
    assert moved, "lr = 1e3 should have moved some neuron parameter far"


def test_constrain_neurons_projects_and_keeps_previous_for_non_finite():
    model = tiny_net("simplified")
    soma = model.hidden
    previous = tr.trained_neuron_values(model)
    bad = {"potential_tau": -5.0, "threshold": -80.0, "threshold_tau": 0.0,
           "threshold_delta": -1.0}
    for name, value in bad.items():
        getattr(soma, name)[...] = jnp.full((HIDDEN,), value).at[0].set(jnp.nan)
    tr.constrain_neurons(model, previous)
    _assert_inside_rules(soma)
    p = soma.parameters()
    assert float(p["potential_tau"][1]) == soma.dt  # clipped to the Euler floor
    assert float(p["threshold"][1]) > soma.rheobase_threshold[...]  # strictly above V_T
    assert float(p["threshold_delta"][1]) == 0.0
    for name in bad:  # NaN entries take their value from before the step
        assert float(p[name][0]) == float(previous[(("layers", 0, "soma"), name)][0]), name


@pytest.mark.parametrize("soma", ["adex", "simplified"])
def test_neuron_constraints_is_an_optax_projection_after_the_update(soma):
    model = tiny_net(soma)
    tx = optax.chain(optax.sgd(1e3), tr.neuron_constraints(model))
    params = jax.tree.map(lambda v: v[...], nnx.state(model, nnx.Param),  # plain arrays
                          is_leaf=lambda x: isinstance(x, nnx.Variable))
    state = tx.init(params)
    key = jax.random.key(1)
    grads = jax.tree.map(lambda p: 1e3 * jax.random.normal(key, p.shape, p.dtype), params)
    hidden = grads["layers"][0]["soma"]
    hidden["threshold"] = hidden["threshold"].at[0].set(jnp.nan)
    updates, _ = jax.jit(tx.update)(grads, state, params)
    new = optax.apply_updates(params, updates)
    nnx.update(model, new)
    _assert_inside_rules(model.hidden)
    assert (float(new["layers"][0]["soma"]["threshold"][0])
            == float(params["layers"][0]["soma"]["threshold"][0]))
    chex.assert_trees_all_equal(new["output"], jax.tree.map(lambda p, g: p - 1e3 * g,
                                                            params["output"], grads["output"]))


def test_constrain_neurons_without_previous_makes_non_finite_values_finite():
    model = tiny_net("adex")
    soma = model.hidden
    soma.adaptation_delta[...] = jnp.full((HIDDEN,), jnp.nan)
    soma.adaptation_subthreshold[...] = jnp.full((HIDDEN,), -jnp.inf)
    soma.adaptation_tau[...] = jnp.full((HIDDEN,), jnp.inf)
    tr.constrain_neurons(model)
    _assert_inside_rules(soma)
    assert float(soma.adaptation_delta[...][0]) == 0.0
    assert float(soma.adaptation_subthreshold[...][0]) == -ss.configs.LARGEST


def test_fit_resume_equals_uninterrupted_and_evaluate_pads():
    data = tiny_data(2 * BATCH)

    def run(stops):
        model = tiny_net(seed=3)
        opt = optimizer(model, 1e-2)
        history, start = None, 0
        for stop in stops:
            history = tr.fit(model, opt, data, encoder=ENCODER, objective=OBJECTIVE, epochs=stop,
                             batch_size=BATCH, seed=7, start_epoch=start, history=history,
                             progress=False)
            start = stop
        return model, history

    whole, h_whole = run([3])
    parts, h_parts = run([1, 3])
    chex.assert_trees_all_equal(nnx.state(whole, nnx.Param), nnx.state(parts, nnx.Param))
    assert h_parts["epoch"] == [1, 2, 3]
    assert h_parts["train_loss"] == h_whole["train_loss"]
    assert np.all(np.isfinite(h_whole["test_loss"]))

    full = tr.evaluate(whole, data.x_test, data.y_test, encoder=ENCODER, batch_size=2 * BATCH)
    padded = tr.evaluate(whole, data.x_test, data.y_test, encoder=ENCODER, batch_size=10)
    for k in full:
        assert padded[k] == pytest.approx(full[k], rel=1e-5), k


def test_epoch_order_is_a_function_of_seed_and_epoch():
    np.testing.assert_array_equal(tr.epoch_order(1, 2, 50), tr.epoch_order(1, 2, 50))
    assert not np.array_equal(tr.epoch_order(1, 2, 50), tr.epoch_order(1, 3, 50))
    assert not np.array_equal(tr.epoch_order(1, 2, 50), tr.epoch_order(2, 2, 50))
    assert sorted(tr.epoch_order(1, 2, 50)) == list(range(50))


def test_recurrent_network_with_readout_somas_trains():
    data = tiny_data()
    model = tiny_net("refractory", recurrent=True, output="soma", readout="count",
                     synapse_tau=5.0)
    losses = steps(model, optimizer(model, 5e-2), data, 10)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses


def test_network_spec_rebuilds_the_architecture():
    model = tiny_net("simplified", trainable_neurons=("threshold",), synapse_tau=4.0,
                     soma_kwargs={"config": ss.SimplifiedAdaptiveExponentialSomaConfig(
                         threshold_delta=3.0)})
    twin = tr.network_from_spec(model.spec)
    assert twin.spec == model.spec
    assert type(twin.hidden) is type(model.hidden)
    assert twin.hidden.config == model.hidden.config
    chex.assert_trees_all_equal_shapes(nnx.state(twin), nnx.state(model))
