"""Multi-device checks, run by tests/test_sharding.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu, so that
the rest of the suite keeps one device. Each check raises on failure; the
script prints one JSON line {check name: "ok" | traceback}.

Usage: python tests/_sharding_worker.py TMPDIR
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys
import tempfile
import time
import traceback

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

import spark_somas as ss
from spark_somas import checkpointing, datasets, sharding, training

T, B, N = 60, 8, 16
CHECKS = {}
TMPDIR = pathlib.Path(tempfile.gettempdir())  # main() sets the caller's


def check(fn):
    CHECKS[fn.__name__] = fn
    return fn


def make_soma(cls):
    """A heterogeneous population: per-neuron τ_m and trained V_th, so the
    parameters are (N,) arrays that the neuron axis splits."""
    return cls(units=N, trainable=("threshold",), potential_tau=jnp.linspace(5.0, 15.0, N))


# 0 … 4000 pA around the 546 pA rheobase: every soma spikes, and refractory
# and adaptive ones differ from plain ExpIF within T steps.
DRIVE = np.random.default_rng(0).uniform(0.0, 4000.0, (T, B, N)).astype(np.float32)
HALVES = (slice(0, T // 2), slice(T // 2, T))


def currents(mesh=None, steps=slice(None)):
    """Steps of DRIVE, on ``mesh`` if given (sliced in numpy: slicing sharded
    arrays would compile a program per layout)."""
    return DRIVE[steps] if mesh is None else sharding.shard_currents(DRIVE[steps], mesh)


def simulate_twice(soma, mesh=None, run=ss.simulate):
    """Two consecutive runs: the second starts from the state the first left
    (the first call also broadcasts an unbatched state to the batch)."""
    return [run(soma, currents(mesh, half)) for half in HALVES]


@functools.cache
def references():
    """Per soma name: the one-device run (two halves) and its final state."""
    out = {}
    for name, cls in ss.SOMAS.items():
        soma = make_soma(cls)
        out[name] = simulate_twice(soma), soma.neuron_state()
        assert float(out[name][0][0].spikes.sum()) > 0, f"{name}: no spikes, a vacuous check"
        assert out[name][0][0].potential.sharding.num_devices == 1
    return out


def assert_matches_and_stays_sharded(runs, soma, mesh, spec, where):
    """Bitwise the one-device run; outputs and final state laid out as ``spec``."""
    chex.assert_trees_all_equal((runs, soma.neuron_state()), references()[where.split("/")[0]],
                                custom_message=where)
    for out in runs:
        for field in ("spikes", "potential"):
            got = getattr(out, field).sharding
            assert got.is_equivalent_to(NamedSharding(mesh, spec), 3), f"{where}: {field} {got}"
    for state_name, value in soma.neuron_state().items():
        assert value.sharding.is_equivalent_to(NamedSharding(mesh, P(*spec[1:])), 2), \
            f"{where}: state {state_name} left as {value.sharding}"


@check
def simulation_matches_one_device():
    """Batch- and neuron-sharded runs of all four somas equal the one-device
    run bitwise, stay sharded and compile without collectives."""
    for layout, ((data, neurons), spec) in {"batch": ((8, 1), P(None, "data", None)),
                                            "neurons": ((1, 8), P(None, None, "neurons"))}.items():
        mesh = sharding.make_mesh(data, neurons)
        drive = currents(mesh)
        somas = {name: sharding.shard_soma(make_soma(cls), mesh, batch_shape=(B,))
                 for name, cls in ss.SOMAS.items()}
        for name, soma in somas.items():
            runs = simulate_twice(soma, mesh)
            assert_matches_and_stays_sharded(runs, soma, mesh, spec, f"{name}/{layout}")
        found = sharding.collectives(
            lambda *args: [ss.simulate(soma, args[-1]) for soma in args[:-1]], *somas.values(), drive)
        assert not found, f"{layout}: the compiled time loops communicate: {dict(found)}"


@check
def shard_map_blocks_match_one_device():
    """simulate_sharded (one simulate per device block, batch × neurons) equals
    the one-device run bitwise for all four somas and for the fused kernels,
    without collectives."""
    mesh = sharding.make_mesh(4, 2)
    drive = currents(mesh)
    for name, cls in ss.SOMAS.items():
        soma = sharding.shard_soma(make_soma(cls), mesh, batch_shape=(B,))
        runs = simulate_twice(soma, mesh, lambda s, x: sharding.simulate_sharded(s, x, mesh))
        assert_matches_and_stays_sharded(runs, soma, mesh, P(None, "data", "neurons"),
                                         f"{name}/shard_map")
    found = sharding.collectives(lambda s, x: sharding.simulate_sharded(s, x, mesh), soma, drive)
    assert not found, dict(found)
    # The fused kernels (interpreted off a GPU), which the compiler cannot
    # partition: one kernel per block, equal to the one-device kernel run.
    reference = make_soma(ss.AdaptiveExponentialSoma)
    want = ss.simulate(reference, currents(), backend="fused")
    soma = sharding.shard_soma(make_soma(ss.AdaptiveExponentialSoma), mesh, batch_shape=(B,))
    got = sharding.simulate_sharded(soma, drive, mesh, backend="fused")
    chex.assert_trees_all_equal((got, soma.neuron_state()), (want, reference.neuron_state()))
    assert got.spikes.sharding.is_equivalent_to(NamedSharding(mesh, P(None, "data", "neurons")), 3)
    found = sharding.collectives(
        lambda s, x: sharding.simulate_sharded(s, x, mesh, backend="fused"), soma, drive)
    assert not found, f"fused: {dict(found)}"


@check
def remat_keeps_sharding():
    """Rematerialized segments (remat=k) reshape the time axis; the batch and
    neuron split survives it."""
    mesh = sharding.make_mesh(4, 2)
    reference = ss.simulate(make_soma(ss.AdaptiveExponentialSoma), currents(), remat=7)
    soma = sharding.shard_soma(make_soma(ss.AdaptiveExponentialSoma), mesh, batch_shape=(B,))
    out = ss.simulate(soma, currents(mesh), remat=7)
    chex.assert_trees_all_equal(out, reference)
    assert out.potential.sharding.is_equivalent_to(NamedSharding(mesh, P(None, "data", "neurons")), 3)
    assert not sharding.collectives(lambda s, x: ss.simulate(s, x, remat=7), soma, currents(mesh))


@check
def collectives_sees_communication():
    """The inspector is not blind: a sum over a split axis needs an all-reduce."""
    mesh = sharding.make_mesh(8, 1)
    found = sharding.collectives(jnp.sum, sharding.shard_batch(jnp.ones((8, 4)), mesh))
    assert found["all-reduce"] >= 1, dict(found)


def network(place=lambda module: module):
    """A small network with per-neuron trained thresholds and an input gain
    that makes its hidden layer fire, and its optimizer, both passed to ``place``."""
    model = training.SpikingNetwork(12, 16, 4, soma="expif", trainable_neurons=("threshold",),
                                    input_gain=4.0, rngs=nnx.Rngs(0))
    return place(model), place(training.make_optimizer(model, tx=TX))


ENCODER, OBJECTIVE = training.Encoder("current", steps=10), training.Objective(rate_strength=0.1)
# One transformation for every optimizer: it is static in the optimizer's graph,
# so equal networks then share one compiled train step per layout.
TX = optax.adam(1e-2)


def train(model, optimizer, place=lambda batch: batch, steps=range(3)):
    """Train steps on fixed random batches of 16 (batch i from seed i), keyed
    as fit keys them (so fit's compiled step is reused); the metrics."""
    metrics = []
    for i in steps:
        rng = np.random.default_rng(i)
        x, y = place((rng.random((16, 12), np.float32), rng.integers(0, 4, 16)))
        metrics.append(training.train_step(model, optimizer, x, y, training.batch_key(0, 0, i),
                                           encoder=ENCODER, objective=OBJECTIVE))
    return metrics


def assert_float32_close(got, want, where):
    """Equal up to float32 rounding: a data-parallel gradient all-reduce sums
    per-device partial gradients in another order than one device does."""
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6, custom_message=where)


@check
def data_parallel_training_matches_one_device():
    """training.fit(mesh=...) — model and Adam state replicated, batches and
    padded test batches split over 8 devices, the train step unchanged —
    gives the history, parameters and optimizer state of fit on one device
    up to float32 rounding (the gradient all-reduce sums in another order);
    the parameters stay replicated; the compiled step holds the all-reduce
    and gathers nothing."""
    rng = np.random.default_rng(0)
    data = datasets.Dataset("random", rng.random((64, 12), np.float32), rng.integers(0, 4, 64),
                            rng.random((20, 12), np.float32), rng.integers(0, 4, 20), 4, "static")
    mesh = sharding.make_mesh(8, 1)
    runs = []
    for on in (None, mesh):
        model, optimizer = network()
        history = training.fit(model, optimizer, data, encoder=ENCODER, objective=OBJECTIVE,
                               epochs=1, batch_size=16, progress=False, mesh=on)
        del history["seconds"]
        runs.append((history, nnx.state(model, nnx.Param), nnx.state(optimizer)))
    assert runs[0][0]["train_rate_hz"][0] > 0, "silent hidden layer: a weak check"
    assert_float32_close(runs[1], runs[0], "fit on 8 devices vs 1")
    for leaf in jax.tree.leaves(runs[1][1]):
        assert leaf.sharding.is_equivalent_to(NamedSharding(mesh, P()), leaf.ndim), leaf.sharding
    x, y = sharding.shard_batch((data.x_train[:16], data.y_train[:16]), mesh)
    found = sharding.collectives(
        lambda m, o, x, y: training.train_step(m, o, x, y, jax.random.key(0), encoder=ENCODER,
                                               objective=OBJECTIVE),
        model, optimizer, x, y)
    assert found["all-reduce"] >= 1 and not found["all-gather"], dict(found)


def restore_on(directory, place):
    """A fresh network laid out by ``place``, restored from ``directory``."""
    model, optimizer = network(place)
    with checkpointing.Checkpointer(directory, read_only=True) as ckpt:
        ckpt.restore(model, optimizer)
    return model, optimizer


@check
def training_checkpoint_reshards():
    """Network and Adam state saved from 8 devices restore bit for bit onto
    2 devices (replicated there) and onto 1, and training continues there as
    on the 8 devices, to float32 rounding."""
    mesh8, mesh2 = sharding.make_mesh(8, 1), sharding.make_mesh(2, 1)
    model, optimizer = network(lambda module: sharding.replicate(module, mesh8))
    train(model, optimizer, lambda batch: sharding.shard_batch(batch, mesh8))
    directory = TMPDIR / "network"
    with checkpointing.Checkpointer(directory, async_save=False) as ckpt:
        ckpt.save(3, model, optimizer)
    saved = jax.device_get((nnx.state(model), nnx.state(optimizer)))
    continued = train(model, optimizer, lambda batch: sharding.shard_batch(batch, mesh8), range(3, 5))
    for name, mesh in (("2 devices", mesh2), ("1 device", None)):
        place = (lambda module: sharding.replicate(module, mesh)) if mesh else (lambda module: module)
        restored = restore_on(directory, place)
        chex.assert_trees_all_equal(jax.device_get(tuple(map(nnx.state, restored))), saved,
                                    custom_message=name)
        devices = {d for leaf in jax.tree.leaves(nnx.state(restored[0]))
                   for d in leaf.sharding.device_set}
        assert devices == (set(mesh.devices.flat) if mesh else {jax.devices()[0]}), (name, devices)
        batch = (lambda b: sharding.shard_batch(b, mesh)) if mesh else (lambda b: b)
        assert_float32_close(train(*restored, batch, range(3, 5)), continued, name)


@check
def neuron_state_checkpoint_reshards():
    """A soma's state mid-run, split over batch × neurons on 8 devices, saved
    and restored onto 2 devices (one layout per axis) and onto 1: the rest of
    the run is bitwise the run that never stopped, on the new layout."""
    make = lambda: make_soma(ss.SimplifiedAdaptiveExponentialSoma)  # noqa: E731
    mesh8 = sharding.make_mesh(4, 2)
    soma = sharding.shard_soma(make(), mesh8, batch_shape=(B,))
    ss.simulate(soma, currents(mesh8, HALVES[0]))
    directory = TMPDIR / "soma"
    with checkpointing.Checkpointer(directory, async_save=False) as ckpt:
        ckpt.save(T // 2, soma)
    rest = ss.simulate(soma, currents(mesh8, HALVES[1]))
    for data, neurons in ((2, 1), (1, 2), (1, 1)):
        mesh = sharding.make_mesh(data, neurons)
        restored = sharding.shard_soma(make(), mesh, batch_shape=(B,))
        with checkpointing.Checkpointer(directory, read_only=True) as ckpt:
            ckpt.restore(restored)
        spec = P("data" if data > 1 else None, "neurons" if neurons > 1 else None)
        for value in restored.neuron_state().values():
            assert value.sharding.is_equivalent_to(NamedSharding(mesh, spec), 2), value.sharding
        out = ss.simulate(restored, currents(mesh, HALVES[1]))
        chex.assert_trees_all_equal((out, restored.neuron_state()), (rest, soma.neuron_state()),
                                    custom_message=f"restored on {data}×{neurons}")


def main(tmpdir: str) -> None:
    global TMPDIR
    TMPDIR = pathlib.Path(tmpdir)
    assert jax.device_count() == 8, f"needs 8 devices, has {jax.devices()}"
    results = {}
    for name, fn in CHECKS.items():
        start, cpu = time.perf_counter(), time.process_time()
        try:
            fn()
            results[name] = "ok"
        except Exception:  # reported per check, so one failure does not hide the others
            results[name] = traceback.format_exc()
        print(f"{name}: {time.perf_counter() - start:.1f} s wall, {time.process_time() - cpu:.1f} s CPU",
              file=sys.stderr)
    print(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
