"""Multi-device checks, run by tests/test_sharding.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu, so that
the rest of the suite keeps one device. Each check raises on failure; the
script prints one JSON line {check name: "ok" | traceback}.

Usage: python tests/_sharding_worker.py TMPDIR
"""

from __future__ import annotations

import json
import sys
import traceback

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import spark_somas as ss
from spark_somas import sharding

T, B, N = 60, 8, 16
CHECKS = {}


def check(fn):
    CHECKS[fn.__name__] = fn
    return fn


def make_soma(cls):
    """A heterogeneous population: per-neuron τ_m and trained V_th, so the
    parameters are (N,) arrays that the neuron axis splits."""
    return cls(units=N, trainable=("threshold",), potential_tau=jnp.linspace(5.0, 15.0, N))


def currents():
    # 0 … 4000 pA around the 546 pA rheobase: every soma spikes, and refractory
    # and adaptive ones differ from plain ExpIF within T steps.
    return jax.random.uniform(jax.random.key(0), (T, B, N), minval=0.0, maxval=4000.0)


def simulate_twice(soma, drive):
    """Two consecutive runs: the second starts from the state the first left."""
    return [ss.simulate(soma, drive[: T // 2]), ss.simulate(soma, drive[T // 2:])]


@check
def simulation_matches_one_device():
    """Batch-, neuron- and 2-D-sharded runs of all four somas equal the
    one-device run bitwise, stay sharded and compile without collectives."""
    drive = currents()
    layouts = {"batch": ((8, 1), P(None, "data", None)),
               "neurons": ((1, 8), P(None, None, "neurons")),
               "both": ((4, 2), P(None, "data", "neurons"))}
    for name, cls in ss.SOMAS.items():
        reference_soma = make_soma(cls)
        reference = simulate_twice(reference_soma, drive)
        assert float(reference[0].spikes.sum()) > 0, f"{name}: no spikes, the check would be vacuous"
        assert reference[0].potential.sharding.num_devices == 1
        for layout, ((data, neurons), spec) in layouts.items():
            mesh = sharding.make_mesh(data, neurons)
            soma = sharding.shard_soma(make_soma(cls), mesh, batch_shape=(B,))
            sharded_drive = sharding.shard_currents(drive, mesh)
            runs = simulate_twice(soma, sharded_drive)
            where = f"{name}/{layout}"
            chex.assert_trees_all_equal(runs, reference, custom_message=where)
            chex.assert_trees_all_equal(soma.neuron_state(), reference_soma.neuron_state(),
                                        custom_message=where)
            expected = NamedSharding(mesh, spec)
            for out in runs:
                for field in ("spikes", "potential"):
                    got = getattr(out, field).sharding
                    assert got.is_equivalent_to(expected, 3), f"{where}: {field} sharded as {got}"
            state_sharding = NamedSharding(mesh, P(*spec[1:]))
            for state_name, value in soma.neuron_state().items():
                assert value.sharding.is_equivalent_to(state_sharding, 2), \
                    f"{where}: state {state_name} left as {value.sharding}"
            found = sharding.collectives(ss.simulate, soma, sharded_drive)
            assert not found, f"{where}: the compiled time loop communicates: {dict(found)}"


@check
def remat_keeps_sharding():
    """Rematerialized segments (remat=k) reshape the time axis; the batch and
    neuron split survives it."""
    mesh = sharding.make_mesh(4, 2)
    drive = currents()
    reference = ss.simulate(make_soma(ss.AdaptiveExponentialSoma), drive, remat=7)
    soma = sharding.shard_soma(make_soma(ss.AdaptiveExponentialSoma), mesh, batch_shape=(B,))
    out = ss.simulate(soma, sharding.shard_currents(drive, mesh), remat=7)
    chex.assert_trees_all_equal(out, reference)
    assert out.potential.sharding.is_equivalent_to(NamedSharding(mesh, P(None, "data", "neurons")), 3)
    assert not sharding.collectives(lambda s, x: ss.simulate(s, x, remat=7), soma,
                                    sharding.shard_currents(drive, mesh))


@check
def collectives_sees_communication():
    """The inspector is not blind: a sum over a split axis needs an all-reduce."""
    mesh = sharding.make_mesh(8, 1)
    found = sharding.collectives(jnp.sum, sharding.shard_batch(jnp.ones((8, 4)), mesh))
    assert found["all-reduce"] >= 1, dict(found)


def main(tmpdir: str) -> None:
    assert jax.device_count() == 8, f"needs 8 devices, has {jax.devices()}"
    results = {}
    for name, fn in CHECKS.items():
        try:
            fn()
            results[name] = "ok"
        except Exception:  # reported per check, so one failure does not hide the others
            results[name] = traceback.format_exc()
    print(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
