"""Checkpoint and resume (spark_somas.persistence.checkpointing): exact resume of
simulations and training in a new process, clear refusals, retention. The
second process runs tests/_checkpoint_worker.py; crashes and failing disks
are tests/test_checkpoint_crashes.py."""

from __future__ import annotations

import glob
import json
import os
import pathlib
import re
import shutil
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import _checkpoint_worker as worker
import spark_somas as ss
from spark_somas.models import registry
from spark_somas.persistence import checkpointing as ck
from spark_somas.persistence import compatibility

@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Uninterrupted runs here; the same runs cut, saved and resumed in one
    new process (the four somas and the training loop together)."""
    tmp = tmp_path_factory.mktemp("resume")
    currents, sim = {}, {}
    for kind in worker.SOMAS:
        currents[kind] = worker.make_currents(kind)
        whole = worker.make_soma(kind)
        full = ss.simulate(whole, currents[kind], record=("spikes", "potential") + whole.state_names)
        cut = worker.make_soma(kind)
        head = ss.simulate(cut, currents[kind][: worker.K])
        with ck.Checkpointer(tmp / "sim" / kind) as ckpt:
            ckpt.save(worker.K, cut)
        sim[kind] = (full, head, cut.neuron_state())
    np.savez(tmp / "currents.npz", **currents)

    model, optimizer = worker.make_training()
    initial = worker.flat_state("model", model)
    with ck.Checkpointer(tmp / "train") as ckpt:
        worker.train(model, optimizer, 0, worker.N_TRAIN)
        ckpt.save(worker.N_TRAIN, model, optimizer, metrics={"step": worker.N_TRAIN})
        worker.train(model, optimizer, worker.N_TRAIN, worker.N_TRAIN + worker.M_TRAIN)
    expected = worker.flat_state("model", model) | worker.flat_state("optimizer", optimizer)

    start = time.perf_counter()
    worker.run_worker("resume", str(tmp))
    print(f"resume subprocess: {time.perf_counter() - start:.1f} s")
    return sim, initial, expected, dict(np.load(tmp / "resumed.npz"))


@pytest.mark.parametrize("kind", list(worker.SOMAS))
def test_simulation_resumes_bit_identically_in_a_new_process(resumed, kind):
    sim, _, _, got = resumed
    full, head, at_cut = sim[kind]
    spikes = np.concatenate([head.spikes, got[f"{kind}/spikes"]])
    potential = np.concatenate([head.potential, got[f"{kind}/potential"]])
    chex.assert_shape(spikes, (worker.T, worker.BATCH, worker.UNITS))
    np.testing.assert_array_equal(spikes, np.asarray(full.spikes))
    np.testing.assert_array_equal(potential, np.asarray(full.potential))
    # The cut falls where the state matters: spikes on both sides of it,
    # neurons mid-refractory, w and θ away from rest.
    assert full.spikes[: worker.K].sum() > 0 and full.spikes[worker.K:].sum() > 0
    if "refractory" in at_cut:
        counters = np.asarray(at_cut["refractory"])
        assert counters.dtype == np.int32 and (counters > 0).sum() >= 2, counters
    for name in ("adaptation", "threshold_offset"):
        if name in at_cut:
            assert np.all(np.asarray(at_cut[name]) != 0), name


def test_training_resumes_bit_identically_in_a_new_process(resumed):
    _, initial, expected, got = resumed
    got = {k: v for k, v in got.items() if k.startswith(("model", "optimizer"))}
    worker.assert_states_equal(expected, got)
    # Training moved the parameters, including the soma's trained fields.
    for key in ("model['soma']['threshold']", "model['soma']['potential_tau']", "model['inp']['kernel']"):
        assert not np.array_equal(initial[key], expected[key]), key
    assert expected["optimizer['step']"] == worker.N_TRAIN + worker.M_TRAIN


class Pair(nnx.Module):
    """A container of two somas and a Linear, registered for load()."""

    def __init__(self, hidden: int = 4, dtype=jnp.float32):
        self.hidden_units = hidden
        self.a = ss.RefractoryExponentialSoma(units=hidden, trainable=("threshold",), dtype=dtype)
        self.b = ss.AdaptiveExponentialSoma(units=2, potential_tau=20.0)
        self.w = nnx.Linear(hidden, 2, rngs=nnx.Rngs(0))

    def __call__(self, current):
        return self.b(self.w(self.a(current).spikes) * 1000.0)


registry.register_model("test-pair", Pair, spec=lambda m: {"hidden": m.hidden_units},
                  build=lambda spec: Pair(spec["hidden"]))


def away_from_rest(model, batch: int = 2):
    """Sets every neuron-state leaf to distinct values with a batch axis
    (from numpy: no compilation, which eager soma steps would cost)."""
    state = nnx.state(model, ss.SomaState)
    nnx.update(model, jax.tree.map(lambda v: jnp.asarray(
        (np.arange(batch * v.size).reshape((batch,) + v.shape) % 7 + 1).astype(v.dtype)), state))
    return model


def test_metadata_describes_every_soma_and_the_versions(tmp_path):
    model = away_from_rest(Pair())
    with ck.Checkpointer(tmp_path) as ckpt:
        ckpt.save(7, model, metrics={"loss": 0.25}, extra={"epoch": 2})
        meta = ckpt.metadata()
    json.dumps(meta)
    assert meta["step"] == 7 and meta["metrics"] == {"loss": 0.25} and meta["extra"] == {"epoch": 2}
    assert {"spark_somas", "jax", "flax", "orbax-checkpoint"} <= set(meta["versions"])
    assert meta["versions"]["jax"] == jax.__version__
    assert meta["model"]["type"] == "test-pair" and meta["model"]["spec"] == {"hidden": 4}
    a, b = meta["somas"]["a"], meta["somas"]["b"]
    assert a["class"] == "RefractoryExponentialSoma" and a["units"] == [4] and a["trainable"] == ["threshold"]
    assert a["dt"] == 0.1 and a["dtype"] == a["param_dtype"] == "float32"
    assert ss.RefractoryExponentialSomaConfig.from_dict(a["config"]) == model.a.config
    assert b["config"]["potential_tau"] == 20.0
    assert ck.format_listing(ck.describe(tmp_path)).splitlines()[1].split()[:3] == [
        "7", meta["time"], "test-pair"]


def test_load_rebuilds_a_registered_model_and_its_state(tmp_path):
    model = away_from_rest(Pair())
    with ck.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, model)
    loaded = ck.load(tmp_path)
    assert type(loaded) is Pair
    worker.assert_states_equal(worker.flat_state("m", model), worker.flat_state("m", loaded))
    assert loaded.a.potential[...].shape == (2, 4)  # the saved batch shape
    assert loaded.a.refractory[...].dtype == jnp.int32


def test_unregistered_model_loads_only_into_a_template(tmp_path):
    class Plain(nnx.Module):
        def __init__(self):
            self.soma = ss.ExponentialSoma(units=3)

    with ck.Checkpointer(tmp_path) as ckpt:
        ckpt.save(0, Plain())
        ckpt.wait()
        with pytest.raises(ck.CheckpointError, match="register_model"):
            ck.load(tmp_path)
        assert ckpt.restore(Plain()) == 0


def test_low_precision_state_and_prng_keys_round_trip(tmp_path):
    class Noisy(nnx.Module):
        def __init__(self):
            self.soma = ss.SimplifiedAdaptiveExponentialSoma(units=3, dtype=jnp.bfloat16,
                                                             param_dtype=jnp.float16)
            self.rngs = nnx.Rngs(noise=5)

    model = away_from_rest(Noisy())
    model.rngs.noise()  # advance the key's counter
    with ck.Checkpointer(tmp_path) as ckpt:
        ckpt.save(0, model)
        target = Noisy()
        ckpt.restore(target)
    assert target.soma.potential[...].dtype == jnp.bfloat16
    assert jnp.issubdtype(target.rngs.noise.key[...].dtype, jax.dtypes.prng_key)
    worker.assert_states_equal(worker.flat_state("m", model), worker.flat_state("m", target))
    np.testing.assert_array_equal(jax.random.key_data(model.rngs.noise()),
                                  jax.random.key_data(target.rngs.noise()))


@pytest.mark.parametrize("target, field, saved_value, model_value", [
    (lambda: Pair(hidden=5), "units", "[4]", "[5]"),
    (lambda: Pair(dtype=jnp.bfloat16), "dtype", "'float32'", "'bfloat16'"),
    (lambda: (p := Pair(), setattr(p, "b", ss.AdaptiveExponentialSoma(units=2)))[0],
     "config.potential_tau", "20.0", "9.37"),
    (lambda: (p := Pair(), setattr(p, "b", ss.ExponentialSoma(units=2, potential_tau=20.0)))[0],
     "class", "'AdaptiveExponentialSoma'", "'ExponentialSoma'"),
    (lambda: (p := Pair(), setattr(p, "w", nnx.Linear(4, 3, rngs=nnx.Rngs(0))))[0],
     "w/kernel' shape", "(4, 2)", "(4, 3)"),
])
def test_restore_into_a_different_model_names_field_and_both_values(
        tmp_path, target, field, saved_value, model_value):
    with ck.Checkpointer(tmp_path) as ckpt:
        ckpt.save(3, away_from_rest(Pair()))
        model = target()
        before = worker.flat_state("m", model)
        with pytest.raises(ck.CheckpointMismatchError) as err:
            ckpt.restore(model)
    message = str(err.value)
    assert field in message and f"checkpoint {saved_value}" in message, message
    assert f"model {model_value}" in message, message
    worker.assert_states_equal(before, worker.flat_state("m", model))  # nothing touched


def test_restore_with_an_optimizer_needs_saved_optimizer_state(tmp_path):
    model, optimizer = worker.make_training()
    with ck.Checkpointer(tmp_path) as ckpt:
        ckpt.save(0, model)
        with pytest.raises(ck.CheckpointMismatchError, match="no optimizer state"):
            ckpt.restore(model, optimizer)


def test_missing_directory_and_step_say_so(tmp_path):
    missing = tmp_path / "nowhere"
    for call in (lambda: ck.load(missing), lambda: ck.describe(missing)):
        with pytest.raises(ck.CheckpointNotFoundError, match="does not exist") as err:
            call()
        assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)
    assert not missing.exists()
    with ck.Checkpointer(tmp_path / "empty") as ckpt:
        with pytest.raises(ck.CheckpointNotFoundError, match="no checkpoints in"):
            ckpt.restore(Pair())
        ckpt.save(4, Pair())
        with pytest.raises(ck.CheckpointNotFoundError, match=r"step 5 .*steps: \[4\]"):
            ckpt.restore(Pair(), step=5)


@pytest.mark.parametrize("damage, what", [
    (lambda step: (step / "metadata" / "metadata").write_text("{not json"), "metadata"),
    (lambda step: (step / "metadata" / "metadata").unlink(), "metadata"),
    (lambda step: shutil.rmtree(step / "state"), "array metadata"),
    (lambda step: [pathlib.Path(p).write_bytes(b"") for p in glob.glob(str(step / "state" / "d" / "*"))],
     "array"),
])
def test_corrupted_checkpoint_says_so(tmp_path, damage, what):
    with ck.Checkpointer(tmp_path) as ckpt:
        ckpt.save(9, away_from_rest(Pair()))
    damage(tmp_path / "9")
    with pytest.raises(ck.CheckpointCorruptError, match=f"step 9 .* corrupted .* its {what}"):
        ck.load(tmp_path)


def test_an_existing_step_is_never_overwritten(tmp_path):
    first = away_from_rest(Pair())
    with ck.Checkpointer(tmp_path) as ckpt:
        ckpt.save(5, first)
        with pytest.raises(ck.CheckpointExistsError, match="step 5 is already saved"):
            ckpt.save(5, Pair())
    with ck.Checkpointer(tmp_path) as again:  # a later session, too
        with pytest.raises(ck.CheckpointExistsError):
            again.save(5, Pair())
    worker.assert_states_equal(worker.flat_state("m", first),
                               worker.flat_state("m", ck.load(tmp_path)))


def test_async_save_owns_its_copy_of_the_arrays(tmp_path):
    """After save() returns, training may donate or drop the model's buffers
    while the write goes on in the background."""
    soma = away_from_rest(ss.AdaptiveExponentialSoma(units=(40, 40)), batch=4)
    expected = worker.flat_state("m", soma)
    ckpt = ck.Checkpointer(tmp_path)
    ckpt.save(1, soma)
    for leaf in jax.tree.leaves(nnx.state(soma)):
        leaf.delete()
    ckpt.close()
    worker.assert_states_equal(expected, worker.flat_state("m", ck.load(tmp_path)))


def test_max_to_keep_keeps_the_newest_and_the_best(tmp_path):
    soma = ss.ExponentialSoma(units=2)
    losses = {1: 5.0, 2: 1.0, 3: 4.0, 4: 3.0, 5: 2.0}
    with ck.Checkpointer(tmp_path, max_to_keep=2, best_metric="loss", best_mode="min") as ckpt:
        for step, loss in losses.items():
            ckpt.save(step, soma, metrics={"loss": loss, "acc": -loss})
        for bad in ({"acc": 1.0}, {"loss": float("nan")}):
            with pytest.raises(ValueError, match="finite best_metric 'loss'"):
                ckpt.save(6, soma, metrics=bad)
        ckpt.wait()
        assert ckpt.all_steps() == [2, 4, 5]
        assert ckpt.best_step() == 2 and ckpt.latest_step() == 5
        assert [(i.step, i.metrics["loss"]) for i in ckpt.list()] == [(2, 1.0), (4, 3.0), (5, 2.0)]
    with ck.Checkpointer(tmp_path, max_to_keep=1, best_metric="acc", best_mode="max") as ckpt:
        ckpt.save(6, soma, metrics={"loss": 9.0, "acc": 0.5})
        ckpt.wait()
        assert ckpt.all_steps() == [6]


def test_steps_saved_without_a_best_metric_are_kept_only_as_the_newest(tmp_path):
    """A step saved without metrics (no best_metric then), or ranked but not
    kept (keep_best=0), is cleaned by a later Checkpointer that keeps the best."""
    soma = ss.ExponentialSoma(units=2)
    with ck.Checkpointer(tmp_path / "a", async_save=False) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, soma, metrics={"loss": float(step)})
    with ck.Checkpointer(tmp_path / "a", max_to_keep=1, best_metric="loss") as ckpt:
        ckpt.save(4, soma, metrics={"loss": 9.0})
    assert ck.Checkpointer(tmp_path / "a", read_only=True).all_steps() == [4]
    with ck.Checkpointer(tmp_path / "b", best_metric="loss", keep_best=0) as ckpt:
        for step, loss in ((1, 2.0), (2, 1.0), (3, 3.0)):
            ckpt.save(step, soma, metrics={"loss": loss})
    with ck.Checkpointer(tmp_path / "b", max_to_keep=1, best_metric="loss") as ckpt:
        ckpt.save(4, soma, metrics={"loss": 9.0})
    assert ck.Checkpointer(tmp_path / "b", read_only=True).all_steps() == [2, 4]  # best, newest


def test_save_refuses_a_soma_trained_outside_its_rules_and_writes_nothing(tmp_path):
    """A plain nnx.Optimizer moves V_th below V_T, which restore and load
    refuse: save refuses it first, naming the field, the value, the rule and
    the fix; the constraint projection of make_optimizer keeps it savable."""
    import optax

    from spark_somas.errors import RuleError
    from spark_somas.training import make_optimizer

    def trained(optimizer_of):
        model = ss.AdaptiveExponentialSoma(units=2, trainable=("threshold",))
        optimizer = optimizer_of(model)
        grads = jax.tree.map(lambda p: jnp.full_like(p, 1.0), nnx.state(model, nnx.Param))
        optimizer.update(model, grads)  # one Adam step of 50 mV down, below V_r
        return model

    model = trained(lambda m: nnx.Optimizer(m, optax.adam(50.0), wrt=nnx.Param))
    with ck.Checkpointer(tmp_path / "plain") as ckpt:
        with pytest.raises(RuleError, match=r"cannot save step 1 to .*plain: the soma holds "
                           r"values that restore and load would refuse: .* violates the rule: "
                           r".*threshold = .* mV; train with "
                           r"spark_somas.training.make_optimizer"):
            ckpt.save(1, model)
        assert ckpt.all_steps() == []
    assert os.listdir(tmp_path / "plain") == []
    model = trained(lambda m: make_optimizer(m, 50.0))
    with ck.Checkpointer(tmp_path / "projected") as ckpt:
        ckpt.save(1, model)
    chex.assert_trees_all_equal(nnx.state(ck.load(tmp_path / "projected"), nnx.Param),
                                nnx.state(model, nnx.Param))


def test_listing_skips_a_step_without_its_metadata_and_names_it(tmp_path, capsys):
    """What a deletion cut short leaves (a step directory whose metadata is
    gone) hides no other step: describe and spark-somas checkpoints skip it
    with a warning naming it; reading it says it is incomplete."""
    from spark_somas import cli

    with ck.Checkpointer(tmp_path, async_save=False) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, ss.ExponentialSoma(units=2), metrics={"loss": float(step)})
    shutil.rmtree(tmp_path / "1" / "metadata")
    with pytest.warns(ck.IncompleteStepWarning, match=r"step 1 .* corrupted or incomplete: "
                                                      r"cannot read its metadata .* step 1 is "
                                                      r"skipped"):
        assert [info.step for info in ck.describe(tmp_path)] == [2, 3]
    with pytest.raises(ck.CheckpointCorruptError, match="step 1 .* corrupted or incomplete"):
        ck.load(tmp_path, 1)
    capsys.readouterr()
    assert cli.main(["checkpoints", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()] == ["step", "2", "3"]
    (line,) = err.splitlines()
    assert line.startswith("spark-somas checkpoints: warning: checkpoint step 1 ") and \
        line.endswith("step 1 is skipped"), line


def test_a_directory_written_by_orbax_alone_is_not_a_spark_somas_checkpoint(tmp_path):
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(tmp_path) as manager:
        manager.save(1, args=ocp.args.StandardSave({"w": np.ones(3)}))
        manager.wait_until_finished()
    for read in (ck.load, ck.describe):
        with pytest.raises(ck.CheckpointError, match=r"step 1 in .* is not a spark_somas "
                                                     r"checkpoint: it holds the items \['default'\]"
                           ) as err:
            read(tmp_path)
        assert not isinstance(err.value, ck.CheckpointCorruptError)


def _batched_network(seed: int):
    from spark_somas import training

    net = training.SpikingNetwork(6, [5, 4], 3, recurrent=True, synapse_tau=5.0,
                                  trainable_neurons=True, rngs=nnx.Rngs(seed))
    net(jnp.ones((7, 2, 6)))  # every SomaState now has batch shape (2,)
    return net


def test_network_with_batched_state_restores_and_continues(tmp_path):
    saved = _batched_network(1)
    with ck.Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(0, saved)
        target = _batched_network(2)
        target.reset()  # the target's state is unbatched: it takes the saved (2, N)
        ckpt.restore(target)
    worker.assert_states_equal(worker.flat_state("m", saved), worker.flat_state("m", target))
    assert target.layers[0].current[...].shape == (2, 5)
    assert target.readout_potential[...].shape == (2, 3)
    loaded = ck.load(tmp_path)
    worker.assert_states_equal(worker.flat_state("m", saved), worker.flat_state("m", loaded))
    x = jnp.ones((4, 2, 6))
    np.testing.assert_array_equal(np.asarray(loaded(x).logits), np.asarray(saved(x).logits))


def test_network_state_of_another_width_or_two_batch_shapes_is_refused(tmp_path):
    from spark_somas import training

    saved = _batched_network(1)
    saved.layers[1].current.set_value(jnp.zeros((3, 4)))  # a batch unlike the rest of the state
    with ck.Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(0, saved)
        target = _batched_network(2)
        before = worker.flat_state("m", target)
        with pytest.raises(ck.CheckpointMismatchError, match="several batch shapes"):
            ckpt.restore(target)
        worker.assert_states_equal(before, worker.flat_state("m", target))
        wider = training.SpikingNetwork(6, [5, 4], 4, recurrent=True, synapse_tau=5.0,
                                        trainable_neurons=True, rngs=nnx.Rngs(0))
        with pytest.raises(ck.CheckpointMismatchError, match="readout_potential"):
            ckpt.restore(wider)


@pytest.mark.parametrize("saved, other", [("rk4", "euler"), ("exponential_euler", "rk2")])
def test_the_integration_method_is_saved_loaded_and_checked(tmp_path, saved, other):
    soma = ss.AdaptiveExponentialSoma(units=3, method=saved)
    ss.simulate(soma, jnp.full((50, 3), 900.0))
    with ck.Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(0, soma)
        assert ckpt.metadata()["somas"]["."]["method"] == saved
        with pytest.raises(ck.CheckpointMismatchError,
                           match=f"method: checkpoint '{saved}', model '{other}'"):
            ckpt.restore(ss.AdaptiveExponentialSoma(units=3, method=other))
    loaded = ck.load(tmp_path)
    assert loaded.method == saved
    with pytest.raises(ck.CheckpointMismatchError, match=f"records method '{saved}'"):
        ck.load(tmp_path, method=other)
    drive = jnp.full((300, 3), 900.0)
    np.testing.assert_array_equal(np.asarray(ss.simulate(loaded, drive).potential),
                                  np.asarray(ss.simulate(soma, drive).potential))


def _edit_metadata(directory, step, edit):
    path = pathlib.Path(directory) / str(step) / "metadata" / "metadata"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("field, value, rule", [
    ("potential_tau", float("nan"), r"potential_tau = array of shape \(3,\) with nan at index "
                                    r"\(0,\) ms violates the rule: potential_tau >= 1e-06"),
    ("potential_tau", -1.0, r"potential_tau = .*-1.0 at index \(0,\) ms violates the rule"),
    ("threshold", -60.0, r"threshold = .*-60.0 at index \(0,\) mV violates the rule: "
                         "threshold > rheobase"),
])
def test_stored_parameters_that_break_the_rules_are_refused_on_load_and_restore(
        tmp_path, monkeypatch, field, value, rule):
    soma = ss.ExponentialSoma(units=3, trainable=(field,))
    getattr(soma, field)[...] = jnp.full((3,), value)  # what an untrusted file may hold
    with monkeypatch.context() as patch:  # written as by another program: save would refuse it
        patch.setattr(compatibility, "rule_problem", lambda model, state: None)
        with ck.Checkpointer(tmp_path, async_save=False) as ckpt:
            ckpt.save(0, soma)
    with pytest.raises(ck.CheckpointCorruptError, match="holds values that break the rules of "
                                                        f"the soma, so nothing is restored: .*{rule}"):
        ck.load(tmp_path)
    target = ss.ExponentialSoma(units=3, trainable=(field,))
    before = worker.flat_state("m", target)
    with ck.Checkpointer(tmp_path, read_only=True) as ckpt:
        with pytest.raises(ck.CheckpointCorruptError, match="break the rules of the soma"):
            ckpt.restore(target)
    worker.assert_states_equal(before, worker.flat_state("m", target))  # nothing changed


def test_a_model_spec_larger_than_the_stored_arrays_is_refused_before_it_is_built(tmp_path):
    model = ss.AdaptiveExponentialSoma(units=4, trainable=("threshold",))
    with ck.Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(0, model)

    def grow(meta):  # 10^11 neurons: 400 GB per trained field, were it built
        meta["model"]["spec"]["units"] = [10**11]

    _edit_metadata(tmp_path, 0, grow)
    with pytest.raises(ck.CheckpointCorruptError, match=r"its model spec disagrees with the "
                       r"stored arrays: state 'adaptation' shape: checkpoint \(4,\), which does not "
                       r"end in the model's units \(100000000000,\)"):
        ck.load(tmp_path)


@pytest.mark.parametrize("trainable_neurons", [False, True])
def test_a_network_spec_larger_than_its_arrays_is_refused_before_it_is_built(
        tmp_path, trainable_neurons):
    """10^11 hidden neurons claimed by a hand-edited spec: refused from the
    abstract build, with nothing of that size allocated (it would take
    terabytes), whether or not the neurons are trained."""
    from spark_somas import training

    net = training.SpikingNetwork(5, 6, 2, trainable_neurons=trainable_neurons, rngs=nnx.Rngs(0))
    with ck.Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(0, net)
    _edit_metadata(tmp_path, 0, lambda meta: meta["model"]["spec"].update(hidden=[10**11]))
    with pytest.raises(ck.CheckpointCorruptError, match=r"its model spec disagrees with the "
                       r"stored arrays: .*'layers/0/input/kernel' shape: checkpoint \(5, 6\), "
                       r"model \(5, 100000000000\)"):
        ck.load(tmp_path)


def test_a_network_spec_that_disagrees_with_its_arrays_is_named(tmp_path):
    """The disagreement is named, nothing restored."""
    from spark_somas import training

    with ck.Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(0, training.SpikingNetwork(5, 6, 2, rngs=nnx.Rngs(0)))
    _edit_metadata(tmp_path, 0, lambda meta: meta["model"]["spec"].update(in_features=7))
    with pytest.raises(ck.CheckpointError, match=r"'layers/0/input/kernel' shape: checkpoint "
                                                 r"\(5, 6\), model \(7, 6\)"):
        ck.load(tmp_path)


@pytest.mark.parametrize("damage, message", [
    (lambda m: m["somas"]["."].pop("config"), r"the soma 'config' = null, not a dict"),
    (lambda m: m["somas"]["."].update(config=None), r"the soma 'config' = null, not a dict"),
    (lambda m: m["somas"]["."].update(units="4"), r"the soma 'units' = .*, not a list of positive"),
    (lambda m: m.pop("time"), r"'time' = null, not an ISO 8601 string"),
    (lambda m: m.update(metrics={"loss": "low"}), r"'metrics' = .*, not a dict of numbers"),
    (lambda m: m["somas"]["."].update(method="leapfrog"), r"'method' = 'leapfrog', not one of"),
    (lambda m: m.update(model={"type": 3}), r"'model' = .*, without a class name"),
])
def test_hand_damaged_metadata_is_named_by_every_reader(tmp_path, capsys, damage, message):
    from spark_somas import cli

    with ck.Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(0, ss.ExponentialSoma(units=4), metrics={"loss": 1.0})
    _edit_metadata(tmp_path, 0, damage)
    readers = [lambda: ck.load(tmp_path), lambda: ck.describe(tmp_path),
               lambda: ck.Checkpointer(tmp_path, read_only=True).restore(
                   ss.ExponentialSoma(units=4))]
    for read in readers:
        with pytest.raises(ck.CheckpointCorruptError, match=message):
            read()
    capsys.readouterr()
    assert cli.main(["checkpoints", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and re.search(message, err), err


@pytest.mark.parametrize("model", ["soma", "network"])
def test_load_reads_each_metadata_once(tmp_path, monkeypatch, model):
    """``load`` checks the somas' units, the abstractly built model's shapes
    and the restore against one read of the step's array metadata, and reads
    the step twice in all: its JSON metadata, then its arrays."""
    import orbax.checkpoint as ocp

    from spark_somas import training

    saved = (ss.AdaptiveExponentialSoma(units=3) if model == "soma"
             else training.SpikingNetwork(4, [3], 2, rngs=nnx.Rngs(0)))
    with ck.Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(5, saved)
    calls = {"item_metadata": [], "restore": []}
    for name in calls:
        original = getattr(ocp.CheckpointManager, name)

        def counted(self, step, *args, _original=original, _name=name, **kwargs):
            calls[_name].append(step)
            return _original(self, step, *args, **kwargs)

        monkeypatch.setattr(ocp.CheckpointManager, name, counted)
    loaded = ck.load(tmp_path)
    assert calls == {"item_metadata": [5], "restore": [5, 5]}
    chex.assert_trees_all_equal(nnx.to_pure_dict(nnx.state(loaded)),
                                nnx.to_pure_dict(nnx.state(saved)))
    calls["item_metadata"].clear()
    ck.Checkpointer(tmp_path, read_only=True).restore(loaded)
    assert calls["item_metadata"] == [5]
