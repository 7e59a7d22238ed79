"""spark_somas.sharding: layout rules here, multi-device behaviour in one
subprocess with 8 forced CPU devices (tests/_sharding_worker.py), so the
rest of the suite keeps its single device."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec as P

import spark_somas as ss
from spark_somas import sharding

WORKER = pathlib.Path(__file__).with_name("_sharding_worker.py")
CHECKS = [
    "simulation_matches_one_device",
    "shard_map_blocks_match_one_device",
    "remat_keeps_sharding",
    "collectives_sees_communication",
    "data_parallel_training_matches_one_device",
    "training_checkpoint_reshards",
    "neuron_state_checkpoint_reshards",
]
MESH = AbstractMesh((4, 2), (sharding.DATA, sharding.NEURONS))


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"))
    proc = subprocess.run([sys.executable, str(WORKER), str(tmp_path_factory.mktemp("sharding"))],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_worker_ran_every_check(worker):
    assert sorted(worker) == sorted(CHECKS)


@pytest.mark.parametrize("name", CHECKS)
def test_on_eight_devices(worker, name):
    assert worker[name] == "ok", worker[name]


@pytest.mark.parametrize("shape, kwargs, spec", [
    ((3, 8, 16), dict(units_ndim=1, lead=1), P(None, "data", "neurons")),     # currents (T, B, N)
    ((8, 16), dict(units_ndim=1), P("data", "neurons")),                      # state (B, N)
    ((16,), dict(units_ndim=1), P("neurons")),                                # per-neuron parameter
    ((), dict(units_ndim=1), P()),                                            # scalar field
    ((8, 1), dict(units_ndim=1), P("data", None)),                            # broadcast neuron dim
    ((8, 4, 6), dict(units_ndim=2), P("data", "neurons", None)),              # units (4, 6)
    ((8, 16), dict(units_ndim=1, batch_axis=None), P(None, "neurons")),
    ((16,), dict(units_ndim=1, neuron_axis=("data", "neurons")), P(("data", "neurons"))),
    ((5, 8), dict(units_ndim=0, lead=1, neuron_axis=None), P(None, "data")),  # batch on dim 1
])
def test_partition_spec(shape, kwargs, spec):
    assert sharding.partition_spec(shape, MESH, **kwargs) == spec


def test_uneven_split_names_array_shape_and_axis():
    with pytest.raises(ValueError, match=r"potential: dimension 1 of shape \(8, 5\) is 5.*'neurons'"):
        sharding.partition_spec((8, 5), MESH, units_ndim=1, name="potential")


def test_unknown_axis_is_refused():
    with pytest.raises(ValueError, match="neuron_axis = 'model'"):
        sharding.partition_spec((16,), MESH, units_ndim=1, neuron_axis="model")


@pytest.mark.parametrize("data, neurons", [(2, 1), (1, 0), (None, 2)])
def test_make_mesh_refuses_more_devices_than_exist(data, neurons):
    with pytest.raises(ValueError, match="violates the rule"):
        sharding.make_mesh(data, neurons, devices=jax.devices()[:1])


def test_shard_soma_broadcasts_state_to_the_batch():
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    soma = sharding.shard_soma(ss.RefractoryExponentialSoma(units=4), mesh, batch_shape=(3,))
    assert soma.potential[...].shape == soma.refractory[...].shape == (3, 4)
    assert soma.potential[...].sharding.mesh == mesh


def test_replicate_places_an_optimizer_in_place():
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    assert sharding.replicate(optimizer, mesh) is optimizer
    for leaf in jax.tree.leaves(nnx.state(optimizer)):
        assert leaf.sharding.mesh == mesh, leaf.sharding


def test_make_mesh_takes_numpy_and_jax_integers():
    mesh = sharding.make_mesh(np.int64(1), jnp.int32(1), devices=jax.devices()[:1])
    assert dict(mesh.shape) == {sharding.DATA: 1, sharding.NEURONS: 1}
    with pytest.raises(ValueError, match="make_mesh: data = 1.0 violates the rule: an int"):
        sharding.make_mesh(1.0, 1, devices=jax.devices()[:1])


def test_simulate_sharded_reads_one_field_name_as_a_string_and_checks_the_currents():
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    soma = ss.AdaptiveExponentialSoma(units=4)
    currents = jnp.full((20, 2, 4), 900.0)
    out = sharding.simulate_sharded(soma, currents, mesh, record="adaptation")
    expected = ss.simulate(ss.AdaptiveExponentialSoma(units=4), currents, record="adaptation")
    np.testing.assert_array_equal(np.asarray(out.adaptation), np.asarray(expected.adaptation))
    assert out.spikes is None and out.potential is None
    with pytest.raises(ValueError, match=r"record = \('spike',\): \['spike'\] not recordable"):
        sharding.simulate_sharded(soma, currents, mesh, record="spike")
    with pytest.raises(ValueError, match=r"currents of shape \(20,\) violate the rule: \(T, "
                                         r"\*batch, \*units\) with units = \(4,\)"):
        sharding.simulate_sharded(soma, jnp.ones(20), mesh)
