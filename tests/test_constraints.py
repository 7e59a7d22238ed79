"""Trained neuron parameters kept legal by the optimizer (spark_somas.constraints)
against the model's current fixed fields: after an edit, after a checkpoint
restore, inside compiled steps; a non-finite update keeps the previous value."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import spark_somas as ss
from spark_somas import training as tr
from spark_somas.checkpointing import Checkpointer

N = 16


def uniform(low, high):
    """An initializer (key, shape, dtype) -> U(low, high)."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, low, high)
    return init


def soma(seed: int) -> ss.ExponentialSoma:
    """Trained V_th; per-neuron fixed V_T and V_r drawn at random (the seed
    picks the draw), so checkpoints of two seeds restore into each other."""
    return ss.ExponentialSoma(units=N, trainable=("threshold",), rngs=nnx.Rngs(seed),
                              threshold=uniform(-30.0, -25.0),
                              rheobase_threshold=uniform(-60.0, -35.0),
                              potential_reset=uniform(-75.0, -40.0))


def lowest_threshold(vt, vr) -> np.ndarray:
    """The smallest legal V_th: the next float32 above max(V_T, V_r)."""
    bound = np.maximum(np.asarray(vt, np.float32), np.asarray(vr, np.float32))
    return np.nextafter(bound, np.float32(np.inf))


def fixed(model) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(model.rheobase_threshold[...]), np.asarray(model.potential_reset[...])


def projection_only(model, tx) -> nnx.Optimizer:
    """``tx`` then the projection, without make_optimizer's finite guard (which
    would skip a non-finite update whole): what the projection itself does."""
    return tr.NeuronOptimizer(model, optax.chain(tx, tr.neuron_constraints(model)), wrt=nnx.Param)


@nnx.jit
def descend(model, optimizer, g):
    """One optimizer update with gradient ``g`` on V_th (a compiled step)."""
    grads = nnx.grad(lambda m: jnp.sum(m.threshold[...] * g))(model)
    optimizer.update(model, grads)


DOWN = jnp.full((N,), 1e6)  # with sgd(1): V_th − 10^6, far below any legal value


def test_make_optimizer_returns_an_nnx_optimizer_that_passes_the_fixed_fields():
    model = soma(0)
    opt = tr.make_optimizer(model, tx=optax.sgd(1.0), clip_norm=None)
    assert isinstance(opt, tr.NeuronOptimizer) and isinstance(opt, nnx.Optimizer)


def test_compiled_update_projects_against_fixed_fields_edited_after_it_was_compiled():
    model = soma(0)
    opt = tr.make_optimizer(model, tx=optax.sgd(1.0), clip_norm=None)
    descend(model, opt, DOWN)  # compiles the step with the fixed fields as drawn
    np.testing.assert_array_equal(model.threshold[...], lowest_threshold(*fixed(model)))

    # Raise V_T on even neurons and V_r on odd ones above the trained V_th
    # (same shapes, so the compiled step is reused, not retraced).
    v_th = np.asarray(model.threshold[...])
    lift = v_th + 1.0 + np.arange(N, dtype=np.float32)
    vt, vr = fixed(model)
    vt = np.where(np.arange(N) % 2 == 0, lift, vt)
    vr = np.where(np.arange(N) % 2 == 1, lift, vr)
    model.rheobase_threshold[...] = jnp.asarray(vt)
    model.potential_reset[...] = jnp.asarray(vr)
    descend(model, opt, DOWN)
    after = np.asarray(model.threshold[...])
    assert (after > np.maximum(vt, vr)).all(), after - np.maximum(vt, vr)
    np.testing.assert_array_equal(after, lowest_threshold(vt, vr))


@pytest.mark.parametrize("with_optimizer", [False, True])
def test_update_after_restoring_other_fixed_fields_projects_against_the_restored_ones(
        tmp_path, with_optimizer):
    saved = soma(1)
    saved_opt = tr.make_optimizer(saved, tx=optax.sgd(1.0), clip_norm=None)
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(0, saved, saved_opt if with_optimizer else None)

    model = soma(0)
    opt = tr.make_optimizer(model, tx=optax.sgd(1.0), clip_norm=None)  # built before the restore
    descend(model, opt, DOWN)
    old_bound = lowest_threshold(*fixed(model))
    with Checkpointer(tmp_path, read_only=True) as ckpt:
        ckpt.restore(model, opt if with_optimizer else None)
    vt, vr = fixed(model)
    np.testing.assert_array_equal(vt, saved.rheobase_threshold[...])
    new_bound = lowest_threshold(vt, vr)
    assert (new_bound > old_bound).any()  # the stale bounds would break the rule there

    descend(model, opt, DOWN)
    after = np.asarray(model.threshold[...])
    assert (after > np.maximum(vt, vr)).all(), after - np.maximum(vt, vr)
    np.testing.assert_array_equal(after, new_bound)


def test_non_finite_update_keeps_the_previous_value_then_projects_it():
    """The projection alone (make_optimizer would skip the whole update)."""
    model = soma(0)
    opt = projection_only(model, optax.sgd(1.0))
    descend(model, opt, jnp.zeros((N,)))  # compiled before the edit below
    before = np.asarray(model.threshold[...])
    vt, vr = fixed(model)
    vt = vt.copy()
    vt[1] = before[1] + 2.0  # neuron 1's previous V_th is now below V_T
    model.rheobase_threshold[...] = jnp.asarray(vt)
    g = jnp.full((N,), 0.5).at[0].set(jnp.nan).at[1].set(jnp.inf).at[2].set(-jnp.inf)
    descend(model, opt, g)
    after = np.asarray(model.threshold[...])
    assert after[0] == before[0]  # NaN step: the previous value, which is legal
    assert after[1] == lowest_threshold(vt, vr)[1]  # the previous value, projected
    assert after[2] == before[2]  # +inf step (V_th − (−inf)): previous value
    np.testing.assert_array_equal(after[3:], np.maximum(before[3:] - np.float32(0.5),
                                                        lowest_threshold(vt, vr)[3:]))
    assert np.isfinite(after).all() and (after > np.maximum(vt, vr)).all()


def test_fresh_optimizer_and_plain_optax_chain_agree_with_the_rules():
    """A freshly built optimizer clips p − lr·g into [next above max(V_T, V_r),
    10^6]; the plain optax chain (no fixed fields passed) does the same, and
    reads an edit of the model when it runs eagerly."""
    model = soma(0)
    g = jax.random.normal(jax.random.key(3), (N,)) * 20.0
    params = jax.tree.map(lambda v: v[...], nnx.state(model, nnx.Param),  # plain arrays
                          is_leaf=lambda x: isinstance(x, nnx.Variable))
    p = np.asarray(params["threshold"])
    expected = np.maximum(p - np.asarray(g), lowest_threshold(*fixed(model)))
    assert (expected == lowest_threshold(*fixed(model))).any()  # some clip, some do not
    assert (expected > lowest_threshold(*fixed(model))).any()

    chain = optax.chain(optax.sgd(1.0), tr.neuron_constraints(model))
    state = chain.init(params)
    updates, _ = jax.jit(chain.update)(jax.tree.map(lambda _: g, params), state, params)
    np.testing.assert_array_equal(optax.apply_updates(params, updates)["threshold"], expected)

    opt = tr.make_optimizer(model, tx=optax.sgd(1.0), clip_norm=None)
    descend(model, opt, g)
    np.testing.assert_array_equal(model.threshold[...], expected)

    before = np.asarray(model.threshold[...])
    vt = np.asarray(model.rheobase_threshold[...]) + 30.0  # above some V_th
    model.rheobase_threshold[...] = jnp.asarray(vt)
    bound = lowest_threshold(vt, fixed(model)[1])
    assert (before < bound).any() and (before > bound).any()
    params = jax.tree.map(lambda v: v[...], nnx.state(model, nnx.Param),  # plain arrays
                          is_leaf=lambda x: isinstance(x, nnx.Variable))
    updates, _ = chain.update(jax.tree.map(jnp.zeros_like, params), state, params)
    after = np.asarray(optax.apply_updates(params, updates)["threshold"])
    moved = before < bound
    np.testing.assert_array_equal(after[~moved], before[~moved])
    # Moved up from far below: the nearest sum above V_T that p + u reaches.
    assert (after[moved] > np.maximum(vt, fixed(model)[1])[moved]).all()
    assert (after[moved] - bound[moved] <= 2 * np.spacing(np.float32(64.0))).all()


def test_a_value_moved_far_onto_a_strict_bound_lands_above_it():
    """V_th far below a raised V_T (|update| > |V_th|): the rounded sum
    p + u must still land strictly above V_T, not on it."""
    n = 4096
    model = ss.ExponentialSoma(units=n, trainable=("threshold",), rngs=nnx.Rngs(0),
                               threshold=uniform(-60.0, -45.0),
                               rheobase_threshold=uniform(-70.0, -61.0),
                               potential_reset=-80.0)
    opt = tr.make_optimizer(model, tx=optax.sgd(1.0), clip_norm=None)
    vt = np.asarray(jax.random.uniform(jax.random.key(1), (n,), jnp.float32, -20.0, -0.5))
    model.rheobase_threshold[...] = jnp.asarray(vt)
    grads = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
    opt.update(model, grads)
    after = np.asarray(model.threshold[...])
    assert (after > vt).all(), np.flatnonzero(after <= vt)
    ulp = np.spacing(np.float32(64.0))  # of the largest |u|
    assert (after - lowest_threshold(vt, -80.0) <= 2 * ulp).all()


@pytest.mark.parametrize("trainable", [("threshold", "rheobase_threshold"),
                                       ("rheobase_threshold", "threshold")])
def test_non_finite_step_on_one_of_two_coupled_fields_keeps_both_legal(trainable):
    """V_th and V_T both trained: a NaN or infinite step on V_T keeps V_T's
    previous value, and V_th is bounded by that, not by the NaN or inf."""
    model = ss.ExponentialSoma(units=4, trainable=trainable)
    opt = projection_only(model, optax.sgd(1.0))
    g = jnp.array([jnp.nan, jnp.inf, -jnp.inf, 1.0])
    grads = nnx.grad(lambda m: jnp.sum(m.rheobase_threshold[...] * g)
                     + jnp.sum(m.threshold[...] * 0.5))(model)
    opt.update(model, grads)
    np.testing.assert_array_equal(model.rheobase_threshold[...],
                                  np.float32([-50.4, -50.4, -50.4, -51.4]))
    np.testing.assert_array_equal(model.threshold[...], np.full(4, np.float32(-40.9)))


@pytest.mark.parametrize("epoch_on_device", [False, True])
def test_training_steps_of_a_network_project_against_an_edited_fixed_field(epoch_on_device):
    """loop.train_step, and the scanned epoch (train_epoch), each compiled
    before V_T is raised above every trained V_th: the next update lifts them."""
    model = tr.SpikingNetwork(3, 8, 2, soma="adex", trainable_neurons=("threshold",),
                              input_gain=2.0, rngs=nnx.Rngs(0))
    opt = tr.make_optimizer(model, tx=optax.sgd(1e-3), clip_norm=None)
    x, y = jnp.ones((8, 3)), jnp.array([0, 1] * 4, jnp.int32)
    encoder, objective = tr.Encoder("current", 8), tr.Objective()

    def step(i):
        if epoch_on_device:
            order = jnp.arange(8).reshape(2, 4)
            tr.train_epoch(model, opt, x, y, order, jax.random.split(jax.random.key(i), 2),
                           encoder=encoder, objective=objective)
        else:
            tr.train_step(model, opt, x[:4], y[:4], jax.random.key(i), encoder=encoder,
                          objective=objective)

    step(0)
    hidden = model.hidden
    v_t = float(np.max(hidden.threshold[...])) + 1.0  # above every neuron's V_th
    hidden.rheobase_threshold[...] = jnp.asarray(v_t, hidden.rheobase_threshold[...].dtype)
    step(1)
    after = np.asarray(hidden.threshold[...])
    bound = max(v_t, float(np.max(hidden.potential_reset[...])))
    assert (after > bound).all(), after - bound


@pytest.mark.parametrize("cls, dtype, field, push", [
    (ss.ExponentialSoma, jnp.float16, "potential_rest", -1e9),
    (ss.ExponentialSoma, jnp.float16, "potential_reset", -1e9),
    (ss.AdaptiveExponentialSoma, jnp.bfloat16, "adaptation_tau", 1e9),
    (ss.ExponentialSoma, jnp.bfloat16, "potential_tau", 1e9),
])
def test_training_keeps_half_precision_somas_where_their_constructor_accepts_them(
        cls, dtype, field, push):
    model = cls(units=3, dtype=dtype, trainable=(field,))
    # No gradient clipping: the step itself must reach the dtype's bound.
    opt = tr.make_optimizer(model, tx=optax.sgd(1.0), clip_norm=None)
    grads = jax.tree.map(lambda p: jnp.full_like(p, -push), nnx.state(model, nnx.Param))
    opt.update(model, grads)
    value = np.asarray(getattr(model, field)[...], np.float64)
    assert np.all(np.abs(value) < abs(push) / 10)  # held at its dtype bound,
    assert np.all(np.abs(value) > 1e3)  # having moved far towards it
    model.check_parameters(model.parameters())  # what the constructor checks
    cls(units=3, dtype=dtype, **{field: value})  # and builds


@pytest.mark.parametrize("trainable_neurons", [False, True])
def test_frozen_hidden_layers_never_move_and_their_gradients_do_not_shrink_the_readouts(
        trainable_neurons):
    """make_optimizer(frozen=HIDDEN): a train step leaves the hidden weights
    and trained neuron fields bit for bit as drawn, through a weight-decaying
    tx too, and moves the readout as it moves when it is the only parameter
    under the clip (its gradient norm alone decides the clipping)."""
    from spark_somas.training.network import HIDDEN
    net = tr.SpikingNetwork(6, [8], 3, recurrent=True, trainable_neurons=trainable_neurons,
                            input_gain=20.0, rngs=nnx.Rngs(0))
    x = jax.random.bernoulli(jax.random.key(1), 0.3, (4, 20, 6)).astype(jnp.float32)
    y = jnp.array([0, 1, 2, 0])
    encoder = tr.Encoder("spikes", 20)
    grads = nnx.grad(lambda m: tr.cross_entropy(m(encoder(x)).logits, y))(net)
    norm = lambda tree: float(np.sqrt(sum(np.sum(np.square(v)) for v in jax.tree.leaves(tree))))  # noqa: E731
    output = nnx.state(grads, nnx.PathContains("output"))
    assert norm(nnx.state(grads, HIDDEN)) > 0.1 * norm(output) > 0  # would count in a shared clip
    before = jax.tree.map(np.array, nnx.state(net, nnx.Param))
    decaying_sgd = optax.chain(optax.add_decayed_weights(0.5), optax.sgd(0.1))
    opt = tr.make_optimizer(net, tx=decaying_sgd, clip_norm=1e-3, frozen=HIDDEN)
    tr.train_step(net, opt, x, y, jax.random.key(2), encoder=encoder, objective=tr.Objective())
    now = dict(nnx.to_flat_state(nnx.state(net, nnx.Param)))
    for path, value in nnx.to_flat_state(nnx.state(before, HIDDEN)):
        np.testing.assert_array_equal(now[path][...], value[...], err_msg=str(path))
    expected = optax.chain(optax.clip_by_global_norm(1e-3), decaying_sgd)
    params = nnx.state(before, nnx.PathContains("output"))
    step, _ = expected.update(output, expected.init(params), params)
    for (path, p0), (_, u) in zip(nnx.to_flat_state(params), nnx.to_flat_state(step)):
        assert not np.array_equal(now[path][...], p0[...])
        np.testing.assert_allclose(now[path][...], p0[...] + u[...], rtol=1e-5, atol=1e-7)


def test_a_run_config_freezes_by_name_and_refuses_other_names():
    run = ss.runs.RunConfig(task="cues", frozen="hidden", recurrent=True, hidden=8,
                            data_option=(("n_samples", 20),), input_gain=12.0)
    assert run.network(run.build().data).input_gain == 12.0
    assert "--frozen hidden" in run.command() and "--input-gain 12.0" in run.command()
    with pytest.raises(ss.errors.RuleError, match="frozen = 'readout' violates the rule: one of"):
        ss.runs.RunConfig(frozen="readout")


@pytest.mark.parametrize("frozen", ["hiden", 3, 2.5, nnx.PathContains("nothing_here")])
def test_a_frozen_filter_that_selects_no_parameter_is_refused_by_name(frozen):
    net = ss.training.SpikingNetwork(4, 3, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ss.errors.RuleError, match="frozen = .* violates the rule: an NNX filter"):
        ss.training.make_optimizer(net, frozen=frozen)
    assert ss.training.make_optimizer(net, frozen=ss.training.HIDDEN) is not None
