"""Fused Pallas kernels (interpreted on CPU) against the scan: same spikes and
states bit for bit, gradients equal to float32 rounding, all four somas,
batched, every surrogate, every remat mode."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings, strategies as st

import spark_somas as ss
from spark_somas import integrators, kernels
from spark_somas import training as tr
from spark_somas.simulation import FusedBackendError, drive

STEPS = 40
BATCH = (2,)
UNITS = (3, 5)  # 30 neurons: not a power of two, so the neuron axis is padded


def _driven(name: str, **kw) -> tuple[ss.ExponentialSoma, jax.Array]:
    """A batched soma started at random potentials under a strong noisy
    current, so that every neuron spikes within STEPS (checked by callers)."""
    soma = ss.SOMAS[name](units=UNITS, **kw)
    soma.reset(BATCH)
    v0 = jax.random.uniform(jax.random.key(1), BATCH + UNITS, minval=-70.0, maxval=-42.0)
    soma.potential.set_value(v0.astype(soma.dtype))
    currents = 1500.0 + 800.0 * jax.random.normal(jax.random.key(0), (STEPS,) + BATCH + UNITS)
    return soma, currents.astype(soma.dtype)


def test_forward_half_precision_and_many_blocks():
    """bfloat16 state, unbatched current broadcast against a batched state,
    and a grid of several programs (block of 8 neurons, last one padded)."""
    soma, currents = _driven("simplified", dtype=jnp.bfloat16)
    params, state = soma.parameters(), soma.neuron_state()
    want = ss.simulate(soma, currents[:, 0], backend="scan")
    final, got = kernels.run(type(soma), params, state, currents[:, 0], soma.options, block=8)
    assert got["spikes"].dtype == jnp.bfloat16 and float(want.spikes.sum()) > 10
    np.testing.assert_array_equal(np.asarray(got["spikes"]), np.asarray(want.spikes))
    np.testing.assert_array_equal(np.asarray(got["potential"]), np.asarray(want.potential))
    np.testing.assert_array_equal(np.asarray(final["threshold_offset"]),
                                  np.asarray(soma.threshold_offset[...]))


# Each case: (soma, surrogate, remat, detach_reset). Together they cover the
# four somas, the six surrogates, remat off / √T segments / k segments, and
# the attached reset.
GRADIENT_CASES = [
    ("expif", ss.surrogates.FastSigmoid(), False, True),
    ("refractory", ss.surrogates.ArcTan(), 7, True),
    ("adex", ss.surrogates.Sigmoid(), True, True),
    ("simplified", ss.surrogates.Triangle(width=2.0), False, False),
    ("adex", ss.surrogates.Gaussian(sigma=2.0), 7, False),
    ("simplified", ss.surrogates.StraightThrough(width=2.0), True, True),
]


@pytest.mark.parametrize("name,surrogate,remat,detach", GRADIENT_CASES,
                         ids=[f"{c[0]}-{c[1].name}-remat{c[2]}" for c in GRADIENT_CASES])
def test_fused_equals_scan(name, surrogate, remat, detach, monkeypatch):
    """Recorded outputs and the final state bit for bit; gradients with
    respect to the trained parameters and the input to float32 rounding."""
    if remat is True:  # these cases run a grid of 4 programs of 16 neurons, the last one padded
        monkeypatch.setattr(kernels, "block_size", lambda neurons, interpret: 16)
    trainable = ("potential_tau", "threshold", "rheobase_threshold", "resistance")
    soma, currents = _driven(name, trainable=trainable, surrogate=surrogate, detach_reset=detach)
    record = ("spikes",) + soma.state_names
    weights = jax.random.normal(jax.random.key(2), currents.shape)

    def loss(model, currents, backend):
        # The scan's own remat is tested elsewhere; here it would only add compile time.
        rec = ss.simulate(model, currents, record=record, remat=remat if backend == "fused" else False,
                          backend=backend)
        value = (jnp.sum(weights * rec.spikes) + 1e-3 * jnp.sum(weights * rec.potential)
                 + jnp.sum(model.potential[...]))
        return value, ({r: getattr(rec, r) for r in record}, model.neuron_state())

    results = {}
    for backend in ("scan", "fused"):
        grad_fn = nnx.grad(loss, argnums=(0, 1), has_aux=True)
        results[backend] = jax.tree.map(np.asarray, grad_fn(nnx.clone(soma), currents, backend))
    (want_grads, want_out), (got_grads, got_out) = results["scan"], results["fused"]
    assert want_out[0]["spikes"].sum() > 10, "the test drive must make the neurons spike"
    chex.assert_trees_all_equal(got_out, want_out)
    assert np.abs(want_grads[1]).max() > 0 and all(
        np.abs(x).max() > 0 for x in jax.tree.leaves(nnx.state(want_grads[0], nnx.Param)))
    # Float32 rounding: the per-neuron accumulation order differs (the kernel
    # sums over time per neuron, then over the batch; the scan the other way).
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(want_grads))
    chex.assert_trees_all_close(got_grads, want_grads, rtol=2e-5, atol=1e-6 * scale)


def test_backend_choice(monkeypatch):
    assert kernels.resolve_backend("auto") == "scan"
    # No GPU run of the kernels is on record: "auto" keeps the scan on a GPU too.
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert kernels.FUSED_BY_DEFAULT == ()
    assert kernels.resolve_backend("auto") == "scan"
    assert kernels.resolve_backend("fused") == "fused"
    monkeypatch.undo()
    soma, currents = _driven("expif")
    with pytest.raises(ValueError, match="backend = 'triton'"):
        ss.simulate(soma, currents, backend="triton")
    with pytest.raises(ValueError, match="block = 12"):
        kernels.run(type(soma), soma.parameters(), soma.neuron_state(), currents, soma.options,
                    block=12)


@pytest.mark.parametrize("name", ["adex", "simplified"])
def test_kernels_lower_to_triton(name):
    """Without a GPU, the kernels (forward, and forward with checkpoints plus
    backward) are lowered to Triton IR for CUDA: every primitive in them has
    a Triton rule and every loaded tensor a power-of-two size."""
    soma = ss.SOMAS[name](units=64)
    params, state = soma.parameters(), soma.neuron_state()

    def loss(params, currents):
        final, rec = kernels.run(type(soma), params, state, currents, soma.options, segment=4,
                                 interpret=False)
        return jnp.sum(rec["spikes"]) + jnp.sum(rec["potential"]) + jnp.sum(final["potential"])

    lowered = jax.jit(jax.grad(loss, argnums=(0, 1))).trace(
        params, jnp.zeros((10, 64))).lower(lowering_platforms=("cuda",))
    assert lowered.as_text().count("__gpu$xla.gpu.triton") == 2  # forward and backward kernels


# A whole network through drive(backend="fused"): kernels.run_module.

NETWORKS = {
    # two recurrent AdEx layers with synapses and a leaky readout; remat segments
    # of 4 steps; blocks of 2 samples, so 2 programs, the second padded
    "recurrent-adex": (dict(hidden=[6, 4], soma="adex", recurrent=True, synapse_tau=5.0,
                            trainable_neurons=True), 4, 2),
    # mixed kinds, feed-forward, a spiking readout counted; remat ⌈√T⌉; one block
    "mixed-soma-readout": (dict(hidden=(tr.Layer(5, "refractory", input_gain=15.0),
                                        tr.Layer(4, "simplified", input_gain=15.0,
                                                 trainable_neurons=True)),
                                output="soma", readout="count"), True, None),
    # bfloat16 somas (compensated state, int refractory counter) in a recurrent
    # layer with a synapse; float32 weights, synaptic current and leaky readout
    "bfloat16-refractory": (dict(hidden=8, soma="refractory", recurrent=True, synapse_tau=3.0,
                                 input_gain=6.0, soma_kwargs={"dtype": jnp.bfloat16}), 7, None),
}


def _network(kwargs: dict) -> tr.SpikingNetwork:
    net = tr.SpikingNetwork(5, n_classes=3, rngs=nnx.Rngs(0), **({"input_gain": 4.0} | kwargs))
    for index, layer in enumerate(net.layers):  # recurrent weights start at 0: make them act
        if layer.recurrent is not None:
            shape = layer.recurrent.kernel[...].shape
            layer.recurrent.kernel[...] = 0.4 * jax.random.normal(jax.random.key(index), shape)
    return net


@pytest.mark.parametrize("name", NETWORKS)
def test_network_fused_equals_scan(name, monkeypatch):
    """Every layer's spikes, the readout and the final state bit for bit;
    gradients with respect to every weight, bias and trained neuron field
    and the input to float32 rounding."""
    kwargs, remat, block = NETWORKS[name]
    if block is not None:
        monkeypatch.setattr(kernels, "block_size", lambda rows, interpret: block)
    net = _network(kwargs)
    inputs = jax.random.uniform(jax.random.key(1), (30, 3, 5), maxval=2.0)

    def loss(net, inputs, backend):
        out = net(inputs, remat=remat if backend == "fused" else False, backend=backend)
        weights = [jnp.arange(s.shape[-1], dtype=s.dtype) for s in out.layer_spikes]
        value = jnp.sum(out.logits ** 2) + 1e-2 * jnp.sum(out.output_potential) + sum(
            jnp.sum(w * s) for w, s in zip(weights, out.layer_spikes))
        return value, (out, nnx.state(net, ss.SomaState))

    # Jitted: one program per backend, not one per operation outside the time loop.
    grad_fn = nnx.jit(nnx.grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2)
    results = {backend: jax.tree.map(np.asarray, grad_fn(nnx.clone(net), inputs, backend))
               for backend in ("scan", "fused")}
    (want_grads, want_out), (got_grads, got_out) = results["scan"], results["fused"]
    spikes = want_out[0].layer_spikes + (want_out[0].output_spikes,)
    assert all(s is None or s.sum() > 3 for s in spikes), "every layer must spike"
    chex.assert_trees_all_equal(got_out, want_out)
    params = jax.tree.leaves(nnx.state(want_grads[0], nnx.Param))
    assert len(params) >= 5 and all(np.abs(x).max() > 0 for x in params)
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(want_grads))
    chex.assert_trees_all_close(got_grads, want_grads, rtol=2e-5, atol=1e-6 * scale)


@st.composite
def networks(draw) -> tuple[dict, bool | int, int | None, tuple[int, int]]:
    """Any network the config accepts, small: 1–2 layers of any soma kind,
    recurrent or not, with or without a synapse, either readout, float32 or
    bfloat16 somas, any integration method; any remat; batch and block."""
    dtype = draw(st.sampled_from([jnp.float32, jnp.bfloat16]))
    method = draw(st.sampled_from(integrators.METHODS))
    layers = tuple(tr.Layer(
        draw(st.integers(1, 5)), draw(st.sampled_from(sorted(ss.SOMAS))),
        recurrent=draw(st.booleans()),
        synapse_tau=draw(st.sampled_from([None, 2.0, 10.0])),
        input_gain=draw(st.floats(2.0, 15.0)),
        trainable_neurons=draw(st.booleans()),
        soma_kwargs={"dtype": dtype, "method": method}) for _ in range(draw(st.integers(1, 2))))
    output = draw(st.sampled_from(["leaky", "soma"]))
    readout = draw(st.sampled_from(sorted(r for r, (_, trace) in tr.READOUTS.items()
                                          if output == "soma" or trace == "potential")))
    remat = draw(st.sampled_from([False, True, 1, 3, 7]))
    batch = draw(st.integers(1, 4))
    block = draw(st.sampled_from([None] + [b for b in (1, 2) if b <= batch]))
    return (dict(hidden=layers, output=output, readout=readout), remat, block,
            (draw(st.integers(1, 20)), batch))


@settings(derandomize=True, deadline=None, database=None, max_examples=4,
          suppress_health_check=list(HealthCheck))
@given(networks())
def test_any_network_fused_equals_scan(case):
    """Over drawn networks (above), the fused backend's spikes equal the
    scan's bit for bit, its readout and final state and its parameter
    gradients equal them to float32 rounding."""
    kwargs, remat, block, (steps, batch) = case
    net = _network(kwargs)
    inputs = jax.random.uniform(jax.random.key(steps), (steps, batch, 5), maxval=2.0)

    def loss(net, backend):
        net.reset((batch,))
        out = drive(net, net.layers[0].input(inputs), tr.SpikingNetwork.step_projected,
                    remat=remat if backend == "fused" else False, backend=backend)
        spikes, potential, _ = out
        value = jnp.sum(potential.astype(jnp.float32) ** 2) + sum(
            jnp.sum(s.astype(jnp.float32)) for s in spikes)
        return value, (out, nnx.state(net, ss.SomaState))

    results = {}
    with pytest.MonkeyPatch.context() as patch:
        if block is not None:  # the fused path's samples per program
            patch.setattr(kernels, "block_size", lambda rows, interpret: block)
        # Jitted: one program per backend, not one per operation outside the time loop.
        grad_fn = nnx.jit(nnx.grad(loss, has_aux=True), static_argnums=1)
        for backend in ("scan", "fused"):
            results[backend] = jax.tree.map(np.asarray, grad_fn(nnx.clone(net), backend))
    (want_grads, want_out), (got_grads, got_out) = results["scan"], results["fused"]
    (got_y, got_state), (want_y, want_state) = got_out, want_out
    chex.assert_trees_all_equal(got_y[0], want_y[0])  # every layer's spikes, bit for bit
    # A matrix product inside the kernel may round its sum in another order
    # (seen: one unit in the last place of a layer's input current on one
    # CPU, none on another); spikes are the same, the rest within rounding.
    chex.assert_trees_all_close((got_y[1:], got_state), (want_y[1:], want_state),
                                rtol=1e-6, atol=0.0)
    scale = max([float(np.abs(x).max()) for x in jax.tree.leaves(want_grads)] + [1e-30])
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(got_grads))
    chex.assert_trees_all_close(got_grads, want_grads, rtol=1e-4, atol=1e-5 * scale)


def test_network_fused_refuses_what_it_cannot_partition():
    """One sample without a batch axis, a step output without one or a step
    that captures a constant array is refused by name before any kernel
    runs; so is a non-power-of-two width on a GPU (Triton's rule)."""
    net = _network(dict(hidden=6, soma="expif", backend="fused"))
    with pytest.raises(FusedBackendError, match=r"inputs of shape \(4, 5\) violate"):
        net(jnp.ones((4, 5)))
    net.reset((2,))
    with pytest.raises(FusedBackendError, match=r"step output.* of shape \(\) violates"):
        drive(net, jnp.ones((4, 2, 6)), _total_spikes, backend="fused")
    with pytest.raises(FusedBackendError, match=r"captures constant arrays of shapes \[\(6,\)\]"):
        drive(net, jnp.ones((4, 2, 6)), _scaled_step, backend="fused")
    graphdef, state, rest = nnx.split(net, ss.SomaState, ...)
    with pytest.raises(FusedBackendError, match=r"potential.* of shape \(2, 6\) violates the "
                                                   r"rule: on a GPU"):
        kernels.run_module(graphdef, state, rest, jnp.ones((4, 2, 6)),
                           tr.SpikingNetwork.step_projected, interpret=False)
    with pytest.raises(ValueError, match="backend = 'pallas'"):
        tr.SpikingNetwork(5, 6, 3, backend="pallas", rngs=nnx.Rngs(0))


def _total_spikes(net: tr.SpikingNetwork, z: jax.Array) -> jax.Array:
    return jnp.sum(net.step_projected(z)[0][0])


def _scaled_step(net: tr.SpikingNetwork, z: jax.Array) -> tuple:
    return net.step_projected(z * jnp.asarray(np.linspace(0.5, 1.5, 6), z.dtype))


def test_network_kernels_lower_to_triton():
    """A recurrent AdEx network with synapses of power-of-two widths lowers
    to Triton IR for CUDA, forward and backward."""
    net = tr.SpikingNetwork(16, 32, 16, soma="adex", recurrent=True, synapse_tau=5.0,
                            rngs=nnx.Rngs(0))
    net.reset((32,))
    graphdef, state, rest = nnx.split(net, ss.SomaState, ...)

    def loss(rest, z):
        _, (spikes, potential, _) = kernels.run_module(
            graphdef, state, rest, z, tr.SpikingNetwork.step_projected, segment=4,
            interpret=False)
        return jnp.sum(potential) + jnp.sum(spikes[0])

    lowered = jax.jit(jax.grad(loss, argnums=(0, 1))).trace(
        rest, jnp.zeros((10, 32, 32))).lower(lowering_platforms=("cuda",))
    assert lowered.as_text().count("__gpu$xla.gpu.triton") == 2
