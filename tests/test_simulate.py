"""``simulate``: continues from the soma's state, equals stepping, composes with
jit/grad/vmap, rematerializes without changing anything, records what is asked."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import spark_somas as ss

MODELS = list(ss.SOMAS)
T, B, N = 60, 3, 4
# Fields whose gradient is structurally zero: n = floor(t_ref/dt + 1e-3) is an integer.
NO_GRADIENT = {"cooldown"}


def drive(steps: int = T, batch: tuple[int, ...] = (B,), seed: int = 0) -> jax.Array:
    """Noisy currents (pA) around 2.5 nA: several spikes in 6 ms for every model."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(2500.0, 1500.0, (steps, *batch, N)), jnp.float32)


def recordable(model: str) -> tuple[str, ...]:
    return ("spikes",) + ss.SOMAS[model].state_names


def trainable(model: str) -> tuple[str, ...]:
    return tuple(f.name for f in ss.SOMAS[model].config_class.quantity_fields())


@pytest.mark.parametrize("model", MODELS)
def test_two_halves_equal_one_whole(model):
    currents = drive()
    whole = ss.SOMAS[model](units=N)
    out = ss.simulate(whole, currents, record=recordable(model))
    halves = ss.SOMAS[model](units=N)
    first = ss.simulate(halves, currents[:T // 2], record=recordable(model))
    second = ss.simulate(halves, currents[T // 2:], record=recordable(model))
    assert float(first.spikes.sum()) > 0 and float(second.spikes.sum()) > 0
    joined = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), first, second)
    chex.assert_trees_all_equal(joined, out)
    chex.assert_trees_all_equal(nnx.state(halves, ss.SomaState), nnx.state(whole, ss.SomaState))


@pytest.mark.parametrize("model", MODELS)
def test_simulate_equals_stepping(model):
    """Bitwise equal to T compiled calls of ``soma(current)``; eager calls
    (op by op, unfused) agree to float32 rounding."""
    currents = drive(steps=25)
    scanned = ss.SOMAS[model](units=N)
    out = ss.simulate(scanned, currents, record=recordable(model))
    step = nnx.jit(lambda soma, current: (soma(current).spikes, soma.neuron_state()))
    jitted = ss.SOMAS[model](units=N)
    outs = [step(jitted, c) for c in currents]
    chex.assert_trees_all_equal(
        {"spikes": jnp.stack([s for s, _ in outs]),
         **jax.tree.map(lambda *xs: jnp.stack(xs), *[state for _, state in outs])},
        {k: getattr(out, k) for k in recordable(model)})
    chex.assert_trees_all_equal(jitted.neuron_state(), scanned.neuron_state())
    eager = ss.SOMAS[model](units=N)
    eager_outs = [eager(c) for c in currents]
    chex.assert_trees_all_equal(out.spikes, jnp.stack([o.spikes for o in eager_outs]))
    chex.assert_trees_all_close(out.potential, jnp.stack([o.potential for o in eager_outs]),
                                rtol=0, atol=1e-4)


@pytest.mark.parametrize("model", MODELS)
def test_batched_equals_unbatched_per_element(model):
    currents = drive()
    batched = ss.simulate(ss.SOMAS[model](units=N), currents, record=recordable(model))
    for b in range(B):
        single = ss.simulate(ss.SOMAS[model](units=N), currents[:, b], record=recordable(model))
        # Same spikes and counters; floats to the last bit but one: XLA's CPU
        # code may fuse a multiply-add into an FMA in its vector loop and not
        # in its scalar remainder, so the two shapes can round differently.
        chex.assert_trees_all_equal(batched.spikes[:, b], single.spikes)
        chex.assert_trees_all_close(jax.tree.map(lambda x: x[:, b], batched), single,
                                    rtol=1e-6, atol=0)


def test_first_batched_call_broadcasts_and_incompatible_batch_raises():
    soma = ss.AdaptiveExponentialSoma(units=N)
    ss.simulate(soma, drive(batch=()))  # unbatched: state stays (N,)
    assert soma.potential[...].shape == (N,)
    ss.simulate(soma, drive(batch=(B,)))
    for name in soma.state_names:
        assert getattr(soma, name)[...].shape == (B, N)
    with pytest.raises(ValueError) as error:
        ss.simulate(soma, drive(batch=(B + 1,)))
    assert str((T, B + 1, N)[1:]) in str(error.value) and str((B, N)) in str(error.value)


@pytest.mark.parametrize("model,record", [
    ("simplified", ("refractory",)), ("simplified", ("threshold_offset", "spikes")),
    ("adex", ("adaptation",)), ("expif", ("potential",))])
def test_record_options(model, record):
    soma = ss.SOMAS[model](units=N)
    out = ss.simulate(soma, drive(steps=5), record=record)
    for field in soma.output_names():
        assert (getattr(out, field) is None) == (field not in record), field
    for name in record:
        assert getattr(out, name).shape == (5, B, N)
        assert getattr(out, name).dtype == (jnp.int32 if name == "refractory" else jnp.float32)


@pytest.mark.parametrize("model", MODELS)
def test_record_rejects_what_the_model_lacks(model):
    soma = ss.SOMAS[model](units=N)
    others = {n for m in MODELS for n in ss.SOMAS[m].output_names()}
    for name in sorted(others - set(recordable(model))) + ["voltage"]:
        with pytest.raises(ValueError, match=name):
            ss.simulate(soma, drive(steps=5), record=(name,))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_outputs_come_in_the_state_dtype(dtype):
    """(tests/test_numerics.py checks the other models in every dtype as well.)"""
    model = "simplified"
    soma = ss.SOMAS[model](units=N, dtype=dtype)
    out = ss.simulate(soma, drive(steps=T), record=recordable(model))
    for name in recordable(model):
        expected = jnp.int32 if name == "refractory" else dtype
        assert getattr(out, name).dtype == expected, name
        if name != "spikes":
            assert getattr(soma, name)[...].dtype == expected, name
    assert float(out.spikes.sum()) > 0


def loss_fn(soma, currents, remat=False):
    out = ss.simulate(soma, currents, remat=remat)
    return jnp.mean(out.spikes) + jnp.mean(out.potential) / 100.0, out


@functools.cache
def grads_of(model: str, remat: bool | int = False, detach_reset: bool = True):
    """Forward output and the gradient of ``loss_fn`` for every field trained
    (each distinct call compiles a backward scan: the tests share them)."""
    soma = ss.SOMAS[model](units=N, trainable=trainable(model), detach_reset=detach_reset)
    grads, out = nnx.grad(loss_fn, has_aux=True)(soma, drive(), remat)
    return out, nnx.state(grads, nnx.Param)


@pytest.mark.parametrize("model", MODELS)
def test_grad_through_simulate_is_finite_and_nonzero(model):
    _, grads = grads_of(model)
    assert set(grads.keys()) == set(trainable(model))
    for name, g in grads.items():
        g = np.asarray(g[...])
        assert g.shape == (N,) and np.all(np.isfinite(g)), name
        assert np.any(g != 0) != (name in NO_GRADIENT), (name, g)


@pytest.mark.parametrize("remat", [True, 1000])  # 7 segments of 8 + a tail of 4; one segment
def test_remat_changes_nothing(remat):
    out, grads = grads_of("simplified")
    out_remat, grads_remat = grads_of("simplified", remat)
    chex.assert_trees_all_equal(out_remat, out)
    chex.assert_trees_all_close(grads_remat, grads, rtol=1e-6, atol=0)


def test_bad_remat_and_currents_raise():
    soma = ss.ExponentialSoma(units=N)
    for remat in (0, -3, 2.5, "yes"):
        with pytest.raises(ValueError, match="remat"):
            ss.simulate(soma, drive(steps=4), remat=remat)
    with pytest.raises(ValueError):
        ss.simulate(soma, jnp.float32(3.0))


def test_detach_reset_false_changes_gradients_not_values():
    out_detached, g_detached = grads_of("adex")
    out_attached, g_attached = grads_of("adex", detach_reset=False)
    chex.assert_trees_all_equal(out_detached, out_attached)
    changed = [name for name in g_detached.keys()
               if not np.allclose(g_detached[name][...], g_attached[name][...])]
    for name in ("potential_reset", "adaptation_delta", "threshold"):
        assert name in changed, changed
    assert all(np.all(np.isfinite(g[...])) for g in g_attached.values())


def test_jit_grad_vmap_compose():
    currents = drive()
    make = lambda: ss.AdaptiveExponentialSoma(units=N, trainable=trainable("adex"))  # noqa: E731
    graphdef, state = nnx.split(make())

    def run(state, currents):  # functional wrapper: the module never leaves the function
        module = nnx.merge(graphdef, state)
        out = ss.simulate(module, currents)
        return out.spikes, nnx.state(module, ss.SomaState)

    eager = ss.simulate(make(), currents).spikes
    spikes, final = jax.vmap(run, in_axes=(None, 1), out_axes=(1, 0))(state, currents)
    chex.assert_trees_all_equal(spikes, eager)
    assert final["potential"][...].shape == (B, N)

    jitted = nnx.jit(lambda m, c: ss.simulate(m, c).spikes)(make(), currents)
    chex.assert_trees_all_equal(jitted, eager)

    @nnx.jit
    def grads(m, c):
        return nnx.grad(lambda m: loss_fn(m, c)[0])(m)

    chex.assert_trees_all_close(nnx.state(grads(make(), currents), nnx.Param),
                                grads_of("adex")[1], rtol=1e-5)

    def input_grad(c):  # vmap of grad with respect to the input
        return jax.grad(lambda c: loss_fn(make(), c)[0])(c)

    g_in = jax.vmap(input_grad, in_axes=1, out_axes=1)(currents)
    assert g_in.shape == currents.shape and np.all(np.isfinite(g_in)) and np.any(g_in != 0)


def test_integer_currents_are_cast_to_the_state_dtype():
    a = ss.simulate(ss.ExponentialSoma(units=N), jnp.full((T, N), 2000, jnp.int32))
    b = ss.simulate(ss.ExponentialSoma(units=N), jnp.full((T, N), 2000.0, jnp.float32))
    chex.assert_trees_all_equal(a, b)


# bfloat16 keeps 8 significant bits: forward and reverse accumulate their
# roundings in different orders (measured 2.6 % apart on this sum).
@pytest.mark.parametrize("dtype, rtol", [(jnp.float32, 1e-4), (jnp.bfloat16, 5e-2)])
def test_forward_mode_matches_reverse_mode_in_float32_and_bfloat16(dtype, rtol):
    """jax.jvp through simulate (float32 and bfloat16 share an exponent range:
    no cotangent saturation, so no custom_vjp on the way)."""
    graphdef, state = nnx.split(ss.AdaptiveExponentialSoma(units=3, dtype=dtype))

    def total_potential(currents):
        return ss.simulate(nnx.merge(graphdef, state, copy=True), currents).potential.sum()

    currents = jnp.linspace(600.0, 900.0, 3) * jnp.ones((80, 3))
    tangent = jnp.cos(jnp.arange(240.0)).reshape(80, 3)
    _, forward = jax.jvp(total_potential, (currents,), (tangent,))
    reverse = jnp.vdot(jax.grad(total_potential)(currents), tangent)
    chex.assert_trees_all_close(forward, reverse, rtol=rtol)
