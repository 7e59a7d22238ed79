"""The other process of tests/test_checkpointing.py and
tests/test_checkpoint_crashes.py, the setups both sides share, and how a
test starts it (run_worker).

Usage:
  python tests/_checkpoint_worker.py resume TMPDIR
      Loads the four somas saved under TMPDIR/sim/<kind> from their metadata
      alone and simulates the rest of TMPDIR/currents.npz; restores the
      training run saved under TMPDIR/train into a fresh template and trains
      the remaining steps. Writes TMPDIR/resumed.npz.
  python tests/_checkpoint_worker.py crash TMPDIR POINT
      Saves step 1 of a soma under TMPDIR/ckpt (and its state to
      TMPDIR/step1.npz), then saves step 2 asynchronously and stops it at
      POINT, one of CRASH_POINTS: writes TMPDIR/blocked when the save has
      reached that point and waits there to be killed (kill -9).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import spark_somas as ss
from spark_somas import checkpointing as ck


T, K, BATCH, UNITS = 300, 137, 3, 5  # steps, cut, batch, neurons
SOMAS = {
    "expif": ss.ExponentialSoma,
    "refractory": ss.RefractoryExponentialSoma,
    "adex": ss.AdaptiveExponentialSoma,
    "simplified": ss.SimplifiedAdaptiveExponentialSoma,
}


def tau_init(key, shape, dtype):
    """Per-neuron τ_m in 6…14 ms, an initializer (metadata records the draw)."""
    return 6.0 + 8.0 * jax.random.uniform(key, shape, dtype)


def make_soma(kind: str):
    cls = SOMAS[kind]
    extra = {"cooldown": 5.0} if "cooldown" in {f.name for f in cls.config_class.quantity_fields()} else {}
    return cls(units=UNITS, trainable=("threshold",), potential_tau=tau_init,
               rngs=nnx.Rngs(3), **extra)


def make_currents(kind: str) -> np.ndarray:
    """A noisy current around 3 nA (rheobase ≈ 0.55 nA), fresh noise each step.
    (Data come from numpy: no PRNG compilation in either process.)"""
    rng = np.random.default_rng(list(SOMAS).index(kind))
    return (3000.0 + 2000.0 * rng.standard_normal((T, BATCH, UNITS))).astype(np.float32)


N_TRAIN, M_TRAIN = 3, 3  # steps before the save, steps after
STEPS_IN, B_TRAIN, F_IN, HIDDEN, CLASSES = 20, 4, 4, 8, 2


def lecun_numpy(key, shape, dtype):
    """LeCun-normal weights drawn by numpy from the key's data (cheaper to
    compile than jax.random's truncated normal)."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)))
    return jnp.asarray(rng.normal(0.0, shape[0] ** -0.5, shape), dtype)


class Net(nnx.Module):
    """Linear → AdEx (trained τ_m and V_th) → linear readout of the mean V and rate."""

    def __init__(self, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.inp = nnx.Linear(F_IN, HIDDEN, kernel_init=lecun_numpy, rngs=rngs)
        self.soma = ss.AdaptiveExponentialSoma(units=HIDDEN, dt=0.5,
                                               trainable=("potential_tau", "threshold"))
        self.soma.reset((B_TRAIN,))  # the batched state from the start: one compilation
        self.out = nnx.Linear(2 * HIDDEN, CLASSES, kernel_init=lecun_numpy, rngs=rngs)

    def __call__(self, x):  # x: (T, B, F); the soma's state carries over between calls
        rec = ss.simulate(self.soma, 1000.0 * jax.nn.softplus(self.inp(x)))
        features = jnp.concatenate([rec.spikes.mean(0), (rec.potential.mean(0) + 60.0) / 10.0], -1)
        return self.out(features)


def batch(step: int):
    """The data of ``step``: fixed by the seed and the step, as a resume needs."""
    rng = np.random.default_rng([11, step])
    return (rng.standard_normal((STEPS_IN, B_TRAIN, F_IN)).astype(np.float32),
            rng.integers(0, CLASSES, B_TRAIN))


def make_training():
    model = Net()
    return model, nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)


@nnx.jit
def train_step(model, optimizer, x, y):
    def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def train(model, optimizer, start: int, stop: int) -> None:
    for step in range(start, stop):
        train_step(model, optimizer, *batch(step))


def run_worker(*args: str, background: bool = False
               ) -> subprocess.Popen | subprocess.CompletedProcess:
    """This file in a new process on the CPU: in the background (output
    piped) or to its end, which must succeed."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, __file__, *args]
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def assert_states_equal(expected: dict, actual: dict) -> None:
    """The same arrays under the same names, dtype and bits."""
    assert sorted(expected) == sorted(actual)
    for key in expected:
        assert expected[key].dtype == actual[key].dtype, key
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


def flat_state(prefix: str, module) -> dict[str, np.ndarray]:
    """Every leaf of ``nnx.state(module)`` by its path, as numpy (keys as raw data)."""
    leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(module)))[0]
    return {prefix + jax.tree_util.keystr(path): np.asarray(
        jax.random.key_data(v) if jnp.issubdtype(v.dtype, jax.dtypes.prng_key) else v)
        for path, v in leaves}


def resume(tmp: pathlib.Path) -> None:
    currents = np.load(tmp / "currents.npz")
    out = {}
    for kind in SOMAS:
        soma = ck.load(tmp / "sim" / kind)
        rec = ss.simulate(soma, currents[kind][K:])
        out[f"{kind}/spikes"], out[f"{kind}/potential"] = np.asarray(rec.spikes), np.asarray(rec.potential)
    model, optimizer = make_training()
    with ck.Checkpointer(tmp / "train") as ckpt:
        start = ckpt.restore(model, optimizer)
    train(model, optimizer, start, N_TRAIN + M_TRAIN)
    out |= flat_state("model", model) | flat_state("optimizer", optimizer)
    np.savez(tmp / "resumed.npz", **out)


#: Where an asynchronous save of step 2 is stopped, in the order Orbax
#: reaches them: (file-system call, path it acts on, before or after the call).
CRASH_POINTS = {
    "step directory created": ("mkdir", "2.orbax-checkpoint-tmp", "after"),
    "array metadata written": ("write_text", "array_metadatas/process_0", "after"),
    "state item committed": ("rename", "2.orbax-checkpoint-tmp/state", "after"),
    "before the final rename": ("rename", "ckpt/2", "before"),
    "after the final rename": ("rename", "ckpt/2", "after"),
}


def crash(tmp: pathlib.Path, point: str) -> None:
    from orbax.checkpoint._src.path import async_path  # Orbax's file-system calls

    def away_from_rest(soma, step: int):  # a different state at each step
        soma.potential[...] = jnp.linspace(-70.0, -45.0, UNITS) + step
        soma.refractory[...] = jnp.arange(UNITS, dtype=jnp.int32) * step
        soma.threshold_offset[...] = jnp.full((UNITS,), 0.5 * step)
        return soma

    soma = away_from_rest(make_soma("simplified"), 1)
    ckpt = ck.Checkpointer(tmp / "ckpt")
    ckpt.save(1, soma)
    ckpt.wait()
    np.savez(tmp / "step1.npz", **flat_state("model", soma))
    away_from_rest(soma, 2)
    np.savez(tmp / "step2.npz", **flat_state("model", soma))
    name, suffix, when = CRASH_POINTS[point]
    call = getattr(async_path, name)

    async def stopped(*args, **kwargs):
        path = str(args[1] if name == "rename" else args[0])
        if not path.endswith(suffix):
            return await call(*args, **kwargs)
        if when == "after":
            await call(*args, **kwargs)
        (tmp / "blocked").write_text(f"{name} {path}\n")
        await asyncio.sleep(3600)

    setattr(async_path, name, stopped)
    ckpt.save(2, soma)
    ckpt.wait()  # never returns: the test kills this process


if __name__ == "__main__":
    if sys.argv[1] == "crash":
        crash(pathlib.Path(sys.argv[2]), sys.argv[3])
    else:
        resume(pathlib.Path(sys.argv[2]))
