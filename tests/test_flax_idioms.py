"""A soma inside Flax's and JAX's own idioms: scanned, exported with a
symbolic batch, built abstractly, built from traced values, unpacked."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import spark_somas as ss

SOMAS = [ss.ExponentialSoma, ss.RefractoryExponentialSoma, ss.AdaptiveExponentialSoma,
         ss.SimplifiedAdaptiveExponentialSoma]
RESET_HINT = "call soma.reset(batch_shape) before nnx.scan / jax.lax.scan"


def currents(shape, seed=0):
    """Steps of 0 to 1200 pA: enough to spike, in ``shape``."""
    return jnp.asarray(np.random.default_rng(seed).uniform(0.0, 1200.0, shape), jnp.float32)


def eager_spikes(soma, xs):
    return jnp.stack([soma(x).spikes for x in xs])


# -- a batched call inside a loop body, whose carry keeps its shape

def nnx_scan(soma, xs):
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def run(soma, x):
        return soma, soma(x).spikes

    return run(soma, xs)[1]


def lax_scan(soma, xs):
    graphdef, state = nnx.split(soma)

    def body(state, x):
        soma = nnx.merge(graphdef, state)
        spikes = soma(x).spikes
        return nnx.state(soma), spikes

    return jax.lax.scan(body, state, xs)[1]


def fori_loop(soma, xs):
    def body(i, soma):
        soma(xs[i])
        return soma

    nnx.fori_loop(0, len(xs), body, soma)
    return None


def lax_cond(soma, xs):
    graphdef, state = nnx.split(soma)

    def spiking(state):
        soma = nnx.merge(graphdef, state)
        soma(xs[0])
        return nnx.state(soma)

    return jax.lax.cond(True, spiking, lambda state: state, state)


@pytest.mark.parametrize("loop", [nnx_scan, lax_scan, fori_loop, lax_cond])
@pytest.mark.parametrize("batch", [(2,), (4, 2)])
def test_a_state_that_would_change_shape_in_a_loop_names_the_reset(loop, batch):
    soma = ss.AdaptiveExponentialSoma(units=3)
    xs = currents((5, *batch, 3))
    message = (f"the neuron state of shape (3,), broadcast to a current of shape {(*batch, 3)} "
               f"inside a")
    with pytest.raises(ss.errors.RuleError, match=re.escape(message)) as info:
        loop(soma, xs)
    assert RESET_HINT in str(info.value) and f"soma.reset({batch})" in str(info.value)


@pytest.mark.parametrize("cls", SOMAS)
@pytest.mark.parametrize("batch", [(2,), (4, 2)])
@pytest.mark.parametrize("loop", [nnx_scan, lax_scan])
def test_after_the_reset_a_scan_is_the_eager_loop(cls, batch, loop):
    xs = currents((40, *batch, 3))
    eager = cls(units=3)
    scanned = cls(units=3)
    scanned.reset(batch)
    np.testing.assert_array_equal(loop(scanned, xs), eager_spikes(eager, xs))


@pytest.mark.parametrize("state_batch, current", [((2,), (3,)), ((2,), (2, 3)),
                                                  ((4, 2), (2, 3))])
def test_a_current_that_leaves_the_state_shape_is_scanned_without_a_reset(state_batch, current):
    """Only a change of the state's shape is refused: a current that
    broadcasts to the state as it is runs in the scan."""
    soma = ss.ExponentialSoma(units=3)
    soma.reset(state_batch)
    xs = currents((6, *current))
    eager = ss.ExponentialSoma(units=3)
    eager.reset(state_batch)
    np.testing.assert_array_equal(nnx_scan(soma, xs), eager_spikes(eager, xs))


def test_jit_still_broadcasts_the_state_to_the_first_batch():
    """Outside a loop body the state may change shape (nnx.jit carries the
    new one out): that first batched call is not refused."""
    soma = ss.AdaptiveExponentialSoma(units=3)
    x = currents((2, 3))
    out = nnx.jit(lambda soma, x: soma(x).potential)(soma, x)
    eager = ss.AdaptiveExponentialSoma(units=3)
    np.testing.assert_array_equal(out, eager(x).potential)
    assert soma.state_shape == (2, 3)


def test_a_soma_built_inside_a_scan_body_is_reset_there():
    def body(carry, x):
        soma = ss.ExponentialSoma(units=3)
        soma.reset(x.shape[:-1])
        return carry, soma(x).potential

    _, potential = jax.lax.scan(body, 0.0, currents((3, 2, 3)))
    assert potential.shape == (3, 2, 3)


# -- jax.export with a symbolic batch

def export(f, spec):
    shape = jax.export.symbolic_shape(spec)
    return jax.export.export(jax.jit(f))(jax.ShapeDtypeStruct(shape, jnp.float32))


def reset_then_call(cls, units):
    def f(x):
        soma = cls(units=units)
        soma.reset(x.shape[:x.ndim - len(units)])
        return soma(x).potential
    return f


def call_alone(cls, units):
    def f(x):
        return cls(units=units)(x).potential
    return f


def reset_then_scan(cls, units):
    def f(xs):
        soma = cls(units=units)
        soma.reset(xs.shape[1:xs.ndim - len(units)])
        return nnx_scan(soma, xs)
    return f


@pytest.mark.parametrize("cls", SOMAS)
@pytest.mark.parametrize("make, spec, units, concrete", [
    (reset_then_call, "b, 4", (4,), [(1, 4), (5, 4)]),
    (call_alone, "b, 4", (4,), [(2, 4)]),
    (reset_then_call, "a, b, 2, 4", (2, 4), [(3, 1, 2, 4)]),
    (reset_then_scan, "t, b, 4", (4,), [(30, 2, 4)]),
])
def test_exports_with_a_symbolic_batch_and_runs_as_the_eager_soma(cls, make, spec, units,
                                                                  concrete):
    f = make(cls, units)
    exported = export(f, spec)
    for shape in concrete:
        x = currents(shape)
        np.testing.assert_array_equal(exported.call(x), f(x))


# -- an abstract soma (nnx.eval_shape) shows itself

@pytest.mark.parametrize("cls", SOMAS)
def test_the_repr_of_an_abstract_soma_shows_shapes_and_dtypes(cls):
    abstract = nnx.eval_shape(lambda: cls(units=3, trainable=("potential_tau",),
                                          dtype=jnp.bfloat16))
    text = repr(abstract)
    assert text.startswith(f"{cls.__name__}(units=(3,)") and "state=(3,) bfloat16" in text
    assert "potential_tau=<float32[3]> (trained) ms" in text and "threshold=<float32[]> mV" in text
    html = abstract._repr_html_()
    assert "&lt;float32[3]&gt; (trained)" in html and "(3,) bfloat16" in html


def test_a_soma_shows_itself_inside_a_trace():
    shown = []

    @nnx.jit
    def run(soma, x):
        shown.append(repr(soma))
        return soma(x).potential

    run(ss.AdaptiveExponentialSoma(units=3, trainable=("threshold",)), currents((3,)))
    assert "threshold=<float32[3]> (trained) mV" in shown[0]


# -- a field value traced by a transformation

TRANSFORMS = [jax.jit, nnx.jit, jax.vmap, nnx.vmap]


def traced_rule(config_class, field, shape):
    return (f"{config_class.__name__}.{field} = 'a traced float32{shape}' violates the rule: a "
            "value the rules can check: a traced value cannot be checked against the rules at "
            "construction; build the soma outside the transformation")


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("field", ["potential_tau", "threshold", "adaptation_tau"])
@pytest.mark.parametrize("through", ["override", "config"])
def test_a_traced_field_value_is_refused_by_name_under_every_transformation(transform, field,
                                                                            through):
    def build(value):
        if through == "config":
            config = ss.AdaptiveExponentialSomaConfig(**{field: value})
            return ss.AdaptiveExponentialSoma(config, units=3).potential[...]
        return ss.AdaptiveExponentialSoma(units=3, **{field: value}).potential[...]

    shape = [3] if transform in (jax.jit, nnx.jit) else []
    with pytest.raises(ss.ConfigError) as info:
        transform(build)(jnp.full(3, -45.0 if field == "threshold" else 20.0))
    message = str(info.value)
    assert message.startswith(traced_rule(ss.AdaptiveExponentialSomaConfig, field, shape)), message
    assert message.endswith("or pass __skip_validation__=True to take responsibility for it")


def test_a_list_holding_a_traced_value_is_refused_the_same_way():
    with pytest.raises(ss.ConfigError, match=re.escape("= 'a traced float32[2]'")):
        jax.jit(lambda t: ss.ExponentialSoma(units=2, potential_tau=[t, 10.0]).potential[...])(5.0)


def ensemble_potentials(taus, x, *, where):
    """The potential after one step of somas of τ_m = each of ``taus``,
    built under nnx.vmap with validation skipped ``where`` ("config" or
    "soma")."""
    @nnx.vmap
    def build(tau):
        if where == "config":
            config = ss.ExponentialSomaConfig(potential_tau=tau, __skip_validation__=True)
            return ss.ExponentialSoma(config, units=3)
        return ss.ExponentialSoma(units=3, potential_tau=tau, __skip_validation__=True)

    ensemble = build(taus)
    return nnx.vmap(lambda soma: soma(x).potential)(ensemble)


@pytest.mark.parametrize("where", ["config", "soma"])
def test_skipping_validation_builds_from_traced_values_as_from_numbers(where):
    taus, x = jnp.array([5.0, 10.0, 20.0]), currents((3,))
    eager = jnp.stack([ss.ExponentialSoma(units=3, potential_tau=float(t))(x).potential
                       for t in taus])
    np.testing.assert_allclose(ensemble_potentials(taus, x, where=where), eager, rtol=1e-6)

    @jax.jit
    def jitted(tau):
        config = ss.ExponentialSomaConfig(potential_tau=tau, __skip_validation__=True)
        return ss.ExponentialSoma(config, units=3)(x).potential

    np.testing.assert_allclose(jitted(taus[1]), eager[1], rtol=1e-6)


def test_a_skipped_traced_value_is_the_callers_responsibility():
    """Unchecked means unchecked: a NaN τ_m given traced with validation
    skipped runs NaN, as the same number given unchecked outside a trace."""
    run = jax.jit(lambda tau: ss.ExponentialSoma(units=1, potential_tau=tau,
                                                 __skip_validation__=True)(jnp.zeros(1)).potential)
    assert np.isnan(run(jnp.nan)).all()
    assert np.isnan(ss.ExponentialSoma(units=1, potential_tau=np.nan, __skip_validation__=True)(
        jnp.zeros(1)).potential).all()


# -- a step's output is read by name

@pytest.mark.parametrize("unpack", [
    lambda out: tuple(out),
    lambda out: list(out),
    lambda out: [x for x in out],
    lambda out: (lambda spk, mem: None)(*out),
])
def test_a_soma_output_is_not_unpacked_by_position(unpack):
    soma = ss.ExponentialSoma(units=3)
    with pytest.raises(TypeError, match=re.escape(
            "unpacking a SomaOutput by position, as in spk, mem = soma(x), violates the rule: a "
            "SomaOutput is read by name: out.spikes and out.potential")):
        unpack(soma(currents((3,))))
    with pytest.raises(ss.errors.RuleTypeError, match="out.spikes and out.potential"):
        spk, mem = ss.simulate(soma, currents((4, 3)))  # noqa: F841


def test_a_soma_output_is_still_a_pytree_read_by_name():
    out = ss.simulate(ss.AdaptiveExponentialSoma(units=3), currents((4, 3)),
                      record=("spikes", "potential", "adaptation"))
    doubled = jax.tree.map(lambda a: 2 * a, out)
    np.testing.assert_array_equal(doubled.potential, 2 * out.potential)
    np.testing.assert_array_equal(out["adaptation"], out.adaptation)
    assert len(jax.tree.leaves(out)) == 3


# -- Flax's own containers: nnx.RNN, nnx.Sequential, Orbax's template (spark_somas.models.cells)

from spark_somas.models.cells import SomaCell, Spiking, abstract_state  # noqa: E402
from spark_somas.models.somas import input_scale  # noqa: E402
from spark_somas.simulation.layout import LayoutWarning  # noqa: E402


def strong_currents(shape, seed=0):
    """500 to 2500 pA: every default soma fires within the run."""
    return jnp.asarray(np.random.default_rng(seed).uniform(500.0, 2500.0, shape), jnp.float32)


@pytest.mark.parametrize("cls", SOMAS)
def test_the_documented_nnx_scan_recipe_runs_as_simulate(cls):
    """docs/flax.md: size the state by reset(batch), then nnx.scan over time."""
    xs = strong_currents((400, 2, 3))
    soma = cls(units=3)
    soma.reset((2,))
    scanned = nnx_scan(soma, xs)
    reference = ss.simulate(cls(units=3), xs, time_major=True)
    assert scanned.sum() > 0
    np.testing.assert_array_equal(scanned, reference.spikes)
    np.testing.assert_array_equal(soma.potential[...], reference.potential[-1])


@pytest.mark.parametrize("cls", SOMAS)
@pytest.mark.parametrize("batch", [(4,), (2, 3)])
def test_nnx_rnn_of_a_soma_cell_gives_the_spikes_of_simulate(cls, batch):
    x = strong_currents((*batch, 600, 5))
    soma = cls(units=5)
    rnn = nnx.RNN(SomaCell(soma), return_carry=True)
    carry, spikes = rnn(x)
    reference_soma = cls(units=5)
    reference = ss.simulate(reference_soma, x, time_major=False)
    assert spikes.shape == (*batch, 600, 5) and spikes.sum() > 0
    np.testing.assert_array_equal(spikes, reference.spikes)
    for name, value in reference_soma.neuron_state().items():
        np.testing.assert_array_equal(carry[name], value)
    assert soma.state_shape == (5,)  # the carry is the state: the soma's own is untouched
    jitted = nnx.jit(lambda rnn, x: rnn(x)[1])(rnn, x)
    np.testing.assert_array_equal(jitted, reference.spikes)


def test_a_soma_cell_starts_at_rest_and_refuses_what_it_cannot_take():
    soma = ss.AdaptiveExponentialSoma(units=3)
    soma(jnp.full(3, 2000.0))  # a soma that has run: the cell's carry still starts at rest
    carry = SomaCell(soma).initialize_carry((2, 3))
    np.testing.assert_array_equal(carry["potential"], np.full((2, 3), -70.6, np.float32))
    np.testing.assert_array_equal(carry["adaptation"], np.zeros((2, 3), np.float32))
    with pytest.raises(ss.errors.RuleError, match=re.escape("input_shape = (2, 4)")):
        SomaCell(soma).initialize_carry((2, 4))
    with pytest.raises(ss.errors.RuleTypeError, match="soma = 'a Linear' violates the rule: a "
                       "Soma instance"):
        SomaCell(nnx.Linear(3, 3, rngs=nnx.Rngs(0)))


def test_nnx_sequential_chains_a_spiking_stage():
    linear_in, linear_out = nnx.Linear(6, 4, rngs=nnx.Rngs(0)), nnx.Linear(4, 2, rngs=nnx.Rngs(1))
    soma = ss.ExponentialSoma(units=4, dt=1.0)
    scale = 3.0 * input_scale(soma)
    chain = nnx.Sequential(linear_in, Spiking(soma, scale=scale), linear_out)
    x = jnp.asarray(np.random.default_rng(1).uniform(-3.0, 3.0, (100, 3, 6)), jnp.float32)
    chain.layers[1].soma.reset((3,))
    out = jnp.stack([chain(x_t) for x_t in x])

    reference = ss.ExponentialSoma(units=4, dt=1.0)
    reference.reset((3,))
    spikes = jnp.stack([reference(scale * linear_in(x_t)).spikes for x_t in x])
    assert spikes.sum() > 0
    np.testing.assert_array_equal(out, jnp.stack([linear_out(s) for s in spikes]))


def test_an_order_one_input_needs_the_input_scale_to_spike():
    """docs/flax.md's point: currents are pA, so a Linear's order-1 output
    leaves a soma silent unless scaled by its rheobase (input_scale)."""
    x = jnp.full((300, 2, 4), 1.5, jnp.float32)  # 1.5 rheobases once scaled
    silent = Spiking(ss.ExponentialSoma(units=4))
    soma = ss.ExponentialSoma(units=4)
    scaled = Spiking(soma, scale=input_scale(soma))
    for stage in (silent, scaled):
        stage.soma.reset((2,))
    assert sum(float(silent(x_t).sum()) for x_t in x) == 0
    assert sum(float(scaled(x_t).sum()) for x_t in x) > 0


def test_the_orbax_template_restores_a_network_saved_mid_run(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    from spark_somas.training import SpikingNetwork

    def make():
        return SpikingNetwork(4, 10, 2, rngs=nnx.Rngs(0))

    net = make()
    net((jax.random.uniform(jax.random.key(0), (20, 3, 4)) < 0.3).astype(jnp.float32))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "state", nnx.state(net))
    checkpointer.wait_until_finished()

    graphdef, rest_template = nnx.split(nnx.eval_shape(make))
    with pytest.raises(ValueError, match=re.escape("(3, 10)")):  # the Flax docs' template
        checkpointer.restore(tmp_path / "state", rest_template)
    for template in (abstract_state(make, batch=(3,)), abstract_state(net),
                     abstract_state(make(), batch=(3,))):
        restored = nnx.merge(graphdef, checkpointer.restore(tmp_path / "state", template))
        saved, back = jax.tree.leaves(nnx.state(net)), jax.tree.leaves(nnx.state(restored))
        assert len(saved) == len(back)
        for a, b in zip(saved, back):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


def test_abstract_state_resets_each_soma_of_a_sequential_to_the_batch():
    def make():
        return nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)),
                              Spiking(ss.AdaptiveExponentialSoma(units=4)),
                              nnx.Linear(4, 2, rngs=nnx.Rngs(1)))

    template = abstract_state(make, batch=(5,))
    soma = template["layers"][1]["soma"]
    assert soma["potential"].get_value().shape == (5, 4)
    assert soma["adaptation"].get_value().shape == (5, 4)
    assert soma["threshold"].get_value().shape == ()  # parameters do not depend on the batch
    assert template["layers"][0]["kernel"].get_value().shape == (3, 4)


def test_abstract_state_refuses_a_bad_batch():
    with pytest.raises(ss.errors.RuleError, match=re.escape("batch = (0,)")):
        abstract_state(ss.ExponentialSoma(units=3), batch=(0,))


# -- a batch-first array given without time_major

def test_a_batch_first_array_without_time_major_warns_naming_time_major_false():
    x = jnp.full((4, 500, 10), 800.0, jnp.float32)
    with pytest.warns(LayoutWarning, match=re.escape("pass time_major=False")):
        ss.simulate(ss.ExponentialSoma(units=10), x)
    from spark_somas.training import SpikingNetwork

    net = SpikingNetwork(10, 8, 2, rngs=nnx.Rngs(0))
    with pytest.warns(LayoutWarning, match=re.escape("inputs of shape (4, 500, 10)")):
        net(x)


@pytest.mark.parametrize("shape, kwargs", [((500, 4, 10), {}), ((4, 500, 10), {"time_major": True}),
                                           ((4, 500, 10), {"time_major": False}),
                                           ((3, 10), {})])
def test_no_layout_warning_where_the_layout_is_given_or_time_is_longest(shape, kwargs):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", LayoutWarning)
        out = ss.simulate(ss.ExponentialSoma(units=10), jnp.full(shape, 800.0, jnp.float32),
                          **kwargs)
    assert out.spikes.shape == shape
