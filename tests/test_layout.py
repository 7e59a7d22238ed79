"""One time-axis switch, ``time_major``, over every entry point that takes a
sequence: a batch-major run equals the time-major run transposed, bit for
bit (the oracle is the time-major run, the layout every entry point had
before the switch); a wrongly shaped sequence is refused naming the time
axis and the layout expected; the dt defaults are refused when mixed."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings, strategies as st

import spark_somas as ss
from spark_somas import datasets, layout, loop, sharding
from spark_somas.training.encoders import Encoder, encode_current, encode_latency, encode_poisson
from spark_somas.training.network import Layer, SpikingNetwork

N = 4


def currents(shape, seed=0):
    """Noisy currents (pA) around 2.5 nA: several spikes in a few ms for every model."""
    return jnp.asarray(np.random.default_rng(seed).normal(2500.0, 1500.0, shape), jnp.float32)


def batch_major(out: ss.SomaOutput, units_ndim: int) -> ss.SomaOutput:
    """The oracle: a time-major result with its time axis moved before the units."""
    return jax.tree.map(lambda x: np.moveaxis(np.asarray(x), 0, x.ndim - units_ndim - 1), out)


@pytest.mark.parametrize("model", list(ss.SOMAS))
def test_simulate_batch_major_is_time_major_transposed(model):
    record = ("spikes",) + ss.SOMAS[model].state_names
    x = currents((30, 3, N))
    expected = ss.simulate(ss.SOMAS[model](units=N), x, record=record)
    assert float(expected.spikes.sum()) > 0
    soma = ss.SOMAS[model](units=N)
    got = ss.simulate(soma, jnp.swapaxes(x, 0, 1), time_major=False, record=record)
    assert got.spikes.shape == (3, 30, N)
    chex.assert_trees_all_equal(got, batch_major(expected, 1))
    # The final state is the same too: continuing in the other layout agrees.
    again = ss.simulate(soma, x[:5], record=record)
    reference = ss.SOMAS[model](units=N)
    ss.simulate(reference, x, record=record)
    chex.assert_trees_all_equal(again, ss.simulate(reference, x[:5], record=record))


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.integers(1, 12), batch=st.lists(st.integers(1, 3), max_size=2),
       units=st.lists(st.integers(1, 3), min_size=1, max_size=2))
def test_simulate_layouts_agree_over_shapes(steps, batch, units):
    """Any number of batch axes and units axes: time sits just before the units."""
    units = tuple(units)
    x = currents((steps, *batch, *units), seed=steps)
    expected = ss.simulate(ss.AdaptiveExponentialSoma(units=units), x,
                           record=("spikes", "potential", "adaptation"))
    x_batch_major = jnp.moveaxis(x, 0, len(batch))
    got = ss.simulate(ss.AdaptiveExponentialSoma(units=units), x_batch_major, time_major=False,
                      record=("spikes", "potential", "adaptation"))
    assert got.potential.shape == x_batch_major.shape
    chex.assert_trees_all_equal(got, batch_major(expected, len(units)))


def test_simulate_batch_major_gradient_and_fused_backend():
    x = currents((12, 2, N))

    def loss(x, time_major):
        soma = ss.AdaptiveExponentialSoma(units=N)
        out = ss.simulate(soma, x if time_major else jnp.swapaxes(x, 0, 1),
                          time_major=time_major)
        return jnp.sum(out.potential) + jnp.sum(out.spikes)

    chex.assert_trees_all_equal(jax.grad(loss)(x, True), jax.grad(loss)(x, False))
    expected = ss.simulate(ss.AdaptiveExponentialSoma(units=N), x, backend="fused")
    got = ss.simulate(ss.AdaptiveExponentialSoma(units=N), jnp.swapaxes(x, 0, 1),
                      time_major=False, backend="fused")
    chex.assert_trees_all_equal(got, batch_major(expected, 1))


def test_simulate_sharded_batch_major():
    mesh = sharding.make_mesh(1, 1)
    x = currents((20, 2, N))
    expected = sharding.simulate_sharded(ss.ExponentialSoma(units=N), x, mesh)
    got = sharding.simulate_sharded(ss.ExponentialSoma(units=N), jnp.swapaxes(x, 0, 1), mesh,
                                    time_major=False)
    chex.assert_trees_all_equal(got, batch_major(expected, 1))


@pytest.mark.parametrize("time_major, shape", [(True, (20, 3, 5)), (False, (3, 20, 5)),
                                               (True, (4,)), (False, (4,))])
def test_simulate_names_the_time_axis_and_the_layout(time_major, shape):
    expected = "(T, *batch, *units)" if time_major else "(*batch, T, *units)"
    other = "(*batch, T, *units)" if time_major else "(T, *batch, *units)"
    where = "the time axis first" if time_major else "the time axis just before the units axes"
    with pytest.raises(ValueError) as err:
        ss.simulate(ss.ExponentialSoma(units=4), jnp.ones(shape), time_major=time_major)
    message = str(err.value)
    for part in (f"currents of shape {shape} violate the rule: {expected} with units = (4,)",
                 where, f"time_major={time_major}; time_major={not time_major} reads {other}"):
        assert part in message, (part, message)


@pytest.mark.parametrize("output, readout, window", [
    ("leaky", "mean", None), ("soma", "count", (-5, None)), ("soma", "first_spike", None)])
def test_network_batch_major_is_time_major_transposed(output, readout, window):
    net = SpikingNetwork(6, (Layer(8, "adex", recurrent=True, synapse_tau=5.0), 5), 3,
                         output=output, readout=readout, readout_window=window, input_gain=3.0,
                         rngs=nnx.Rngs(1))
    x = jnp.asarray(np.random.default_rng(2).random((15, 4, 6)), jnp.float32)
    expected = net(x)
    assert float(expected.layer_spikes[0].sum()) > 0
    got = net(jnp.swapaxes(x, 0, 1), time_major=False)
    assert got.output_potential.shape == (4, 15, 3) and got.logits.shape == (4, 3)
    chex.assert_trees_all_equal(got.logits, expected.logits)
    chex.assert_trees_all_equal(got.output_counts, expected.output_counts)
    chex.assert_trees_all_equal(
        (got.layer_spikes, got.output_potential, got.output_spikes, got.hidden_spikes),
        jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1),
                     (expected.layer_spikes, expected.output_potential, expected.output_spikes,
                      expected.hidden_spikes)))


def test_network_batch_major_gradient():
    net = SpikingNetwork(6, 8, 3, input_gain=3.0, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(3).random((10, 4, 6)), jnp.float32)

    def loss(net, x, time_major):
        return jnp.sum(net(x, time_major=time_major).logits ** 2)

    expected = nnx.grad(loss)(net, x, True)
    got = nnx.grad(loss)(net, jnp.swapaxes(x, 0, 1), False)
    chex.assert_trees_all_equal(got, expected)


def test_network_names_the_time_axis_and_in_features():
    net = SpikingNetwork(6, 8, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"inputs of shape \(4, 6, 10\) violate the rule: "
                       r"\(T, \*batch, in_features\) with in_features = \(6,\), the time axis "
                       r"first \(time_major=True; time_major=False reads \(\*batch, T, "
                       r"in_features\)\)"):
        net(jnp.ones((4, 6, 10)))


@pytest.mark.parametrize("encoder", [
    Encoder("current", 7), Encoder("poisson", 7, rate_hz=300.0), Encoder("latency", 7),
    Encoder("current", 7, noise=0.3)])
def test_encoders_batch_major_is_time_major_transposed(encoder):
    x = jnp.asarray(np.random.default_rng(4).random((5, 6)), jnp.float32)
    key = jax.random.key(3)
    expected = encoder(x, key, train=True)
    assert expected.shape == (7, 5, 6)
    got = encoder(x, key, train=True, time_major=False)
    chex.assert_trees_all_equal(got, jnp.swapaxes(expected, 0, 1))
    # The batch-major encoding feeds the batch-major network to the same logits.
    net = SpikingNetwork(6, 8, 3, input_gain=3.0, rngs=nnx.Rngs(0))
    chex.assert_trees_all_equal(net(got, time_major=False).logits, net(expected).logits)


def test_encoding_functions_and_spike_samples_batch_major():
    x = jnp.asarray(np.random.default_rng(5).random((5, 6)), jnp.float32)
    key = jax.random.key(0)
    for fn in (lambda **k: encode_current(x, 9, **k),
               lambda **k: encode_poisson(x, 9, key, rate_hz=400.0, **k),
               lambda **k: encode_latency(x, 9, **k)):
        chex.assert_trees_all_equal(fn(time_major=False), jnp.swapaxes(fn(), 0, 1))
    samples = (np.random.default_rng(6).random((5, 9, 6)) < 0.2).astype(np.float32)
    spikes = Encoder("spikes", 9)
    chex.assert_trees_all_equal(spikes(samples, time_major=False), jnp.asarray(samples))
    chex.assert_trees_all_equal(spikes(samples), jnp.swapaxes(samples, 0, 1))
    with pytest.raises(ValueError, match=r"\(B, T=9, F\), time on axis 1"):
        spikes(np.swapaxes(samples, 0, 1))


def test_layout_helpers():
    assert layout.layout_name("F", True) == "(T, *batch, F)"
    assert layout.layout_name("F", False) == "(*batch, T, F)"
    assert layout.time_axis("x", (2, 3, 7, 4, 5), (4, 5), False) == 2
    assert layout.time_axis("x", (7, 4, 5), (4, 5), False) == 0
    with pytest.raises(ValueError, match="just before the units axes"):
        layout.time_axis("x", (4, 5), (4, 5), False)


def test_mixing_the_soma_and_network_dt_is_refused():
    with pytest.raises(ValueError, match=r"soma_kwargs\['dt'\] = 0.1 violates the rule: .*"
                       r"network's dt .*1 ms by default.*0.1 ms"):
        SpikingNetwork(6, 8, 3, soma_kwargs={"dt": 0.1}, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"soma_kwargs\['dt'\]"):
        Layer(8, "adex", soma_kwargs={"dt": 0.1})


@pytest.mark.parametrize("net_dt, encoder_dt", [(1.0, 0.1), (0.1, 1.0), (0.5, 0.25)])
def test_fit_refuses_a_poisson_encoder_at_another_dt(net_dt, encoder_dt):
    net = SpikingNetwork(64, 8, 10, dt=net_dt, rngs=nnx.Rngs(0))
    data = datasets.load_digits().limit(40)
    before = jax.tree.map(np.asarray, nnx.state(net))
    with pytest.raises(ValueError, match=rf"Encoder.dt = {encoder_dt} violates the rule: the "
                       rf"model's dt = {net_dt} ms"):
        loop.fit(net, loop.make_optimizer(net), data, epochs=1, progress=False,
                 encoder=Encoder("poisson", 10, dt=encoder_dt, rate_hz=100.0))
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, nnx.state(net)), before)
    if net_dt == 1.0:  # the same dt trains (once: each run compiles an epoch)
        loop.fit(net, loop.make_optimizer(net), data, epochs=1, progress=False, batch_size=20,
                 encoder=Encoder("poisson", 10, dt=net_dt, rate_hz=100.0))
