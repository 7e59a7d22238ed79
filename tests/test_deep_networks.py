"""Deep and recurrent networks, readouts, losses, metrics and epochs on the
device, each against a hand-written oracle (a Python loop of the somas, NumPy)."""

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

T, B, F, C = 12, 5, 7, 3


def deep_net(**kw) -> tr.SpikingNetwork:
    """Two recurrent layers of different kinds, synapses on both, per-layer trained fields."""
    layers = (tr.Layer(9, "adex", recurrent=True, synapse_tau=3.0, input_gain=4.0,
                       trainable_neurons=("threshold",)),
              tr.Layer(6, "refractory", recurrent=True, synapse_tau=2.0, input_gain=6.0,
                       trainable_neurons=True))
    net = tr.SpikingNetwork(F, layers, C, rngs=nnx.Rngs(0), **kw)
    for i, layer in enumerate(net.layers):
        n = layer.recurrent.kernel[...].shape[0]
        layer.recurrent.kernel[...] = 0.5 * jax.random.normal(jax.random.key(i), (n, n))
    return net


def inputs(seed=0):
    return jax.random.bernoulli(jax.random.key(seed), 0.4, (T, B, F)).astype(jnp.float32)


def reference_run(net, x):
    """Layer by layer, step by step, calling each soma alone: the equations of
    the network written out (Linear, recurrence, exponential synapse, soma,
    leaky readout)."""
    for layer in net.layers:
        layer.soma.reset((x.shape[1],))
    n = [layer.soma.units[0] for layer in net.layers]
    current = [jnp.zeros((x.shape[1], k)) for k in n]
    prev = [jnp.zeros((x.shape[1], k)) for k in n]
    u = jnp.zeros((x.shape[1], C))
    record, trace = [[] for _ in n], []
    for x_t in x:
        current, prev, u = _reference_step(net, current, prev, u, x_t)
        for r, h in zip(record, prev):
            r.append(h)
        trace.append(u)
    return [jnp.stack(r) for r in record], jnp.stack(trace)


@nnx.jit  # one program for the step, instead of one per operation
def _reference_step(net, current, prev, u, x_t):
    h, current, prev = x_t, list(current), list(prev)
    for i, layer in enumerate(net.layers):
        z = h @ layer.input.kernel[...] + layer.input.bias[...] + prev[i] @ layer.recurrent.kernel[...]
        current[i] = layer.decay * current[i] + layer.scale * z
        h = prev[i] = layer.soma(current[i]).spikes
    u = net.readout_decay * u + h @ net.output.kernel[...] + net.output.bias[...]
    return current, prev, u


def test_deep_recurrent_network_through_the_driver_equals_the_equations_written_out():
    net, x = deep_net(), inputs()
    out = net(x)
    spikes, potential = reference_run(deep_net(), x)
    assert all(float(s.sum()) > 0 for s in spikes), [float(s.sum()) for s in spikes]
    for got, want in zip(out.layer_spikes, spikes):
        chex.assert_trees_all_equal(got, want)
    chex.assert_trees_all_close(out.output_potential, potential, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(out.logits, potential.mean(0), rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_equal(out.hidden_spikes, jnp.concatenate(spikes, -1))


@nnx.jit  # one program for the step (and one for its backward pass), not one per operation
def _step(net, x_t):
    return net.step(x_t)


def test_deep_network_gradients_equal_a_python_loop_of_its_step():
    x = inputs(1)

    def loss(net, driver):
        if driver:
            return jnp.sum(net(x, remat=True).logits ** 2)
        net.reset(x.shape[1:-1])
        potential = jnp.stack([_step(net, x_t)[1] for x_t in x])
        return jnp.sum(potential.mean(0) ** 2)

    g_drive = nnx.grad(loss)(deep_net(), True)
    g_loop = nnx.grad(loss)(deep_net(), False)
    chex.assert_trees_all_close(nnx.state(g_drive, nnx.Param), nnx.state(g_loop, nnx.Param),
                                rtol=1e-3, atol=1e-5)


def test_per_layer_trained_fields_are_params_and_stay_inside_their_rules():
    net = deep_net()
    params = nnx.state(net, nnx.Param)
    assert set(params["layers"][0]["soma"]) == {"threshold"}
    assert set(params["layers"][1]["soma"]) == {"potential_tau", "threshold"}
    optimizer = tr.make_optimizer(net, tx=optax.sgd(1e4), clip_norm=None)
    grads = nnx.grad(lambda n: jnp.sum(n(inputs()).logits[:, 0]))(net)
    optimizer.update(net, grads)
    for soma in net.somas():
        soma.config.validate({k: np.asarray(v, np.float64) for k, v in soma.parameters().items()})
    assert float(net.layers[1].soma.potential_tau[...].min()) >= net.dt


def test_config_round_trips_and_old_single_layer_dicts_still_build():
    net = deep_net(readout_window=(-4, None))
    twin = tr.network_from_spec(net.spec)
    assert twin.spec == net.spec and twin.config == net.config
    chex.assert_trees_all_equal_shapes(nnx.state(twin), nnx.state(net))
    old = {"in_features": F, "hidden": 8, "n_classes": C, "soma": "ExponentialSoma", "dt": 1.0,
           "recurrent": True, "output": "leaky", "readout": "mean", "readout_tau": 10.0,
           "trainable_neurons": ["threshold"], "input_gain": 2.0, "synapse_tau": 5.0,
           "soma_kwargs": {}}
    built = tr.network_from_spec(old)
    (layer,) = built.config.layers
    # An older release's dict: no surrogate, exp_gradient or switch keys meant the soma's
    # own, and its one reset switch (detached by default) cut the adaptation jumps too.
    assert layer == tr.Layer(8, "expif", True, 5.0, ("threshold",), 2.0, surrogate=None,
                             exp_gradient=None, detach_reset=None, detach_adaptation=True)
    assert built.hidden.config.surrogate == ss.surrogates.DEFAULT
    assert built.hidden.config.exp_gradient == "exact"
    assert built.hidden.trainable == ("threshold",) and built.spec == old | {
        "readout_window": None, "remat": False, "backend": "auto", "surrogate": None,
        "exp_gradient": None, "detach_reset": None, "detach_adaptation": True,
        "adaptive_fraction": 1.0}
    fresh = tr.SpikingNetwork(F, 8, C, rngs=nnx.Rngs(0)).hidden.config
    assert fresh.surrogate == tr.TRAINING_SURROGATE and fresh.exp_gradient == "bounded"
    with pytest.raises(ValueError, match="hidden"):
        tr.NetworkConfig(F, (), C)
    with pytest.raises(ValueError, match="readout_window"):
        tr.NetworkConfig(F, 4, C, readout_window=(1.5, None))


def test_first_spike_time_counts_steps_before_the_first_spike_and_its_gradient():
    rng = np.random.default_rng(0)
    s = (rng.random((T, 4, C)) < 0.15).astype(np.float32)
    s[:, 0, 0] = 0.0  # never fires: T steps
    want = np.where(s.any(0), s.argmax(0), T) * 2.0
    chex.assert_trees_all_equal(tr.first_spike_time(jnp.asarray(s), dt=2.0), want)
    one = jnp.zeros((T,)).at[7].set(1.0)
    g = jax.grad(lambda s: tr.first_spike_time(s[:, None, None])[0, 0])(one)
    np.testing.assert_array_equal(g[:7], -(7 - np.arange(7)))  # firing at j < 7 gains 7 - j steps


def test_readouts_read_the_window_and_spike_readouts_need_a_readout_soma():
    x = inputs(2)
    full = deep_net()(x)
    windowed = deep_net(readout_window=(-5, -1))(x)
    chex.assert_trees_all_close(windowed.logits, full.output_potential[-5:-1].mean(0), rtol=1e-6)
    net = deep_net(output="soma", readout="first_spike", readout_window=(3, None))
    out = net(x)
    chex.assert_trees_all_equal(out.logits, -tr.first_spike_time(out.output_spikes[3:]))
    chex.assert_trees_all_equal(out.output_counts, out.output_spikes[3:].sum(0))
    with pytest.raises(ValueError, match="output = 'soma'"):
        deep_net(readout="first_spike")


def test_count_mse_and_rate_bounds_against_numpy():
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 10, (4, C)).astype(np.float32)
    labels = np.array([0, 2, 1, 2])
    target = np.where(np.arange(C) == labels[:, None], 6.0, 1.5)
    assert float(tr.count_mse(counts, labels, 6.0, 1.5)) == pytest.approx(
        np.mean((counts - target) ** 2))
    spikes = (rng.random((50, 4, 6)) < rng.random(6) * 0.2).astype(np.float32)  # dt = 2 ms: 100 ms
    zeta = spikes.sum(0).mean(0)
    lo, hi = 20.0 * 0.1, 60.0 * 0.1  # 20-60 Hz over 100 ms, in spikes
    want = np.mean(np.maximum(0, lo - zeta) ** 2 + np.maximum(0, zeta - hi) ** 2)
    assert want > 0
    assert float(tr.rate_bounds_loss(spikes, 2.0, 20.0, 60.0)) == pytest.approx(want, rel=1e-6)
    inside = np.zeros((50, 1, 1), np.float32)
    inside[::10] = 1.0  # 5 spikes in 100 ms: 50 Hz
    assert float(tr.rate_bounds_loss(inside, 2.0, 20.0, 60.0)) == 0.0


def tiny_data(n=12, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % C).astype(np.int32)
    x = 0.2 * rng.random((n, F)).astype(np.float32)
    x[np.arange(n), 2 * y] = 1.0
    return Dataset("tiny", x, y, x.copy(), y.copy(), n_classes=C, encoding="static")


@pytest.mark.parametrize("objective, net_kw", [
    (tr.Objective(loss="count_mse", count_target=(4.0, 0.0)), {"output": "soma", "readout": "count"}),
    (tr.Objective(), {"output": "soma", "readout": "first_spike"}),
    (tr.Objective(bounds_strength=1.0, rate_lower_hz=5.0, rate_upper_hz=200.0), {}),
], ids=["count_mse", "first_spike", "rate_bounds"])
def test_each_loss_trains_a_two_layer_network(objective, net_kw):
    data, enc = tiny_data(), tr.Encoder("current", 20)
    net = tr.SpikingNetwork(F, [16, tr.Layer(8, "expif", synapse_tau=3.0, input_gain=5.0)], C,
                            soma="adex", input_gain=4.0, rngs=nnx.Rngs(0), **net_kw)
    optimizer = tr.make_optimizer(net, tx=optax.adam(3e-2))
    losses = [float(tr.train_step(net, optimizer, data.x_train, data.y_train, jax.random.key(i),
                                  encoder=enc, objective=objective)["loss"]) for i in range(12)]
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0], losses


def test_evaluate_metrics_equal_numpy_on_the_recorded_logits():
    data, enc = tiny_data(10), tr.Encoder("current", T)
    net = deep_net()
    out = tr.record(net, data.x_test, jax.random.key(0), encoder=enc)
    logits = np.asarray(out.logits, np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    want_loss = -logp[np.arange(10), data.y_test].mean()
    want_acc = np.mean(logits.argmax(1) == data.y_test)
    want_rate = np.asarray(out.hidden_spikes).mean() * 1000.0
    got = tr.evaluate(net, data.x_test, data.y_test, encoder=enc, batch_size=4)  # 4 + 4 + 2 padded
    assert got["loss"] == pytest.approx(want_loss, rel=1e-5)
    assert got["accuracy"] == pytest.approx(want_acc)
    assert got["rate_hz"] == pytest.approx(want_rate, rel=1e-5)


def test_an_epoch_on_the_device_is_the_python_loop_of_train_steps():
    data, enc = tiny_data(24), tr.Encoder("poisson", T, rate_hz=400.0)
    objective = tr.Objective(rate_strength=0.1)

    def run(on_device):
        net = deep_net()
        opt = tr.make_optimizer(net, tx=optax.adam(1e-2))
        history = tr.fit(net, opt, data, encoder=enc, objective=objective, epochs=2,
                         batch_size=8, seed=3, progress=False, epoch_on_device=on_device)
        return net, opt, history

    net_d, opt_d, h_d = run(True)
    net_l, opt_l, h_l = run(False)
    assert int(opt_d.step[...]) == int(opt_l.step[...]) == 6
    chex.assert_trees_all_close(nnx.state(net_d, nnx.Param), nnx.state(net_l, nnx.Param),
                                rtol=1e-5, atol=1e-6)
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        np.testing.assert_allclose(h_d[key], h_l[key], rtol=1e-5, err_msg=key)
    assert tr.fits_on_device(1 << 20) and not tr.fits_on_device(1 << 60)


def test_the_default_optimizer_skips_a_batch_whose_gradient_overflowed():
    net = tr.SpikingNetwork(F, 4, C, rngs=nnx.Rngs(0))
    optimizer = tr.make_optimizer(net, 1e-2)
    before = jax.tree.map(np.array, nnx.state(net, nnx.Param))  # copies, not the live Variables
    grads = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.asarray(x).at[0].set(jnp.inf) if "kernel" in jax.tree_util.keystr(path)
        else jnp.ones_like(x), before)
    optimizer.update(net, jax.tree.map(jnp.asarray, grads))
    chex.assert_trees_all_equal(nnx.state(net, nnx.Param), before)  # skipped, nothing is NaN
    optimizer.update(net, jax.tree.map(jnp.ones_like, grads))
    moved = jax.tree.map(lambda a, b: bool(jnp.all(a < b)), nnx.state(net, nnx.Param), before)
    assert all(jax.tree.leaves(moved))  # a finite gradient moves every weight down
