"""Bad input and faults: every refusal is raised early, by name (field or
option, value, rule), before any work or data is lost, and nothing hangs."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from flax import nnx

import spark_somas as ss
from spark_somas import checkpointing as ck
from spark_somas import training as tr
from spark_somas.datasets import DataError, Dataset


def probe_fails(path: str) -> bool:
    try:
        with tempfile.TemporaryFile(dir=path):
            return False
    except OSError:
        return True


@pytest.fixture
def unwritable_dir(tmp_path):
    """An existing directory this process cannot write: mode 0o555 for a
    normal user; for root, who ignores mode bits, a kernel file system."""
    if os.geteuid() != 0:
        path = tmp_path / "read-only"
        path.mkdir()
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    for candidate in ("/sys/fs", "/proc"):
        if os.path.isdir(candidate) and probe_fails(candidate):
            yield pathlib.Path(candidate)
            return
    pytest.skip("no unwritable directory available to this (root) process")


def run_python(code: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter; a hang fails the test at ``timeout``."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout)


# -- checkpoint directories that cannot be written

def test_checkpointer_refuses_an_unwritable_directory_at_construction(unwritable_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for directory in (unwritable_dir, blocker / "run"):
        with pytest.raises(ck.CheckpointNotWritableError, match="create and write") as err:
            ck.Checkpointer(directory)
        assert str(directory) in str(err.value)
        assert isinstance(err.value, PermissionError) and isinstance(err.value, ck.CheckpointError)
    assert blocker.read_text() == ""


def test_unwritable_directory_fails_at_once_and_the_process_exits(unwritable_dir, tmp_path):
    """Up front, and for a directory that stops being writable between saves:
    a named error from the call itself, no pending save, a prompt exit."""
    moved = tmp_path / "moved"
    result = run_python(f"""
        import os, shutil
        import spark_somas as ss
        from spark_somas import checkpointing as ck
        soma = ss.ExponentialSoma(units=2)
        try:
            ck.Checkpointer({str(unwritable_dir)!r})
        except ck.CheckpointNotWritableError as err:
            print("construction:", type(err).__name__)
        ckpt = ck.Checkpointer({str(moved)!r})
        ckpt.save(1, soma)
        ckpt.wait()
        shutil.rmtree({str(moved)!r})
        open({str(moved)!r}, "w").close()   # the directory is gone, a file is in its way
        try:
            ckpt.save(2, soma)
        except ck.CheckpointNotWritableError as err:
            print("save:", type(err).__name__)
        ckpt.close()
        print("closed")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["construction: CheckpointNotWritableError",
                                              "save: CheckpointNotWritableError", "closed"]


# -- what a checkpoint on disk can make load() do

def saved_soma(directory, soma=None, step=1):
    soma = soma or ss.RefractoryExponentialSoma(units=3)
    with ck.Checkpointer(directory) as ckpt:
        ckpt.save(step, soma)
    return directory / str(step) / "metadata" / "metadata"


def edit_json(path: pathlib.Path, change) -> None:
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def test_load_never_imports_a_module_named_in_the_metadata(tmp_path, monkeypatch):
    module_dir = tmp_path / "modules"
    module_dir.mkdir()
    marker = tmp_path / "imported"
    (module_dir / "planted_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(module_dir))
    path = saved_soma(tmp_path / "ckpt")

    def plant(meta):
        meta["model"].update(type="Planted", module="planted_module")
        meta["somas"]["."]["module"] = "planted_module"

    edit_json(path, plant)
    with pytest.raises(ck.CheckpointError, match="'Planted' is not registered .*never imports"):
        ck.load(tmp_path / "ckpt")
    edit_json(path, lambda meta: meta["model"].update(type="RefractoryExponentialSoma"))
    assert isinstance(ck.load(tmp_path / "ckpt"), ss.RefractoryExponentialSoma)  # module ignored
    edit_json(path, lambda meta: meta["model"]["spec"].update({"class": "Planted"}))
    with pytest.raises(ck.CheckpointError, match="soma class 'Planted' is not registered"):
        ck.load(tmp_path / "ckpt")
    assert not marker.exists() and "planted_module" not in sys.modules


def test_metadata_units_that_disagree_with_the_stored_state_are_refused(tmp_path):
    path = saved_soma(tmp_path)
    edit_json(path, lambda meta: (meta["model"]["spec"].update(units=[2]),
                                  meta["somas"]["."].update(units=[2])))
    with pytest.raises(ck.CheckpointCorruptError,
                       match=r"units \(2,\) in the metadata but a stored potential of shape \(3,\)"):
        ck.load(tmp_path)


def test_restoring_state_of_other_units_is_refused(tmp_path):
    saved_soma(tmp_path, ss.ExponentialSoma(units=3))
    with ck.Checkpointer(tmp_path, read_only=True) as ckpt:
        with pytest.raises(ck.CheckpointMismatchError, match=r"units: checkpoint \[3\], model \[4\]"):
            ckpt.restore(ss.ExponentialSoma(units=4))


@pytest.mark.parametrize("change, field", [
    ({"surrogate": ss.surrogates.ArcTan()}, "config.surrogate"),
    ({"surrogate": ss.surrogates.FastSigmoid(slope=2.0)}, "config.surrogate"),
    ({"detach_reset": False}, "config.detach_reset"),
    ({"detach_adaptation": True}, "config.detach_adaptation"),
])
def test_restoring_into_a_soma_with_other_gradients_is_a_named_mismatch(tmp_path, change, field):
    saved_soma(tmp_path, ss.ExponentialSoma(units=2))
    with ck.Checkpointer(tmp_path, read_only=True) as ckpt:
        with pytest.raises(ck.CheckpointMismatchError, match=field):
            ckpt.restore(ss.ExponentialSoma(units=2, **change))


def test_load_step_must_be_an_int(tmp_path):
    saved_soma(tmp_path)
    for step in ("1", 1.0, True, -1):
        with pytest.raises(ValueError, match=r"step = .* violates the rule: an int >= 0"):
            ck.load(tmp_path, step=step)
    assert ck.load(tmp_path, step=np.int64(1)).units == (3,)


# -- configs and somas

@pytest.mark.parametrize("soma, config, ignored", [
    (ss.ExponentialSoma, ss.RefractoryExponentialSomaConfig(cooldown=50.0), "['cooldown']"),
    (ss.ExponentialSoma, ss.AdaptiveExponentialSomaConfig(), "'adaptation_delta'"),
    (ss.RefractoryExponentialSoma, ss.SimplifiedAdaptiveExponentialSomaConfig(), "'threshold_delta'"),
    (ss.AdaptiveExponentialSoma, ss.ExponentialSomaConfig(), None),
])
def test_a_config_of_another_model_is_refused_naming_both_classes(soma, config, ignored):
    with pytest.raises(ss.ConfigError) as err:
        soma(config, units=1)
    message = str(err.value)
    assert type(config).__name__ in message and soma.config_class.__name__ in message, message
    assert ignored is None or ignored in message, message


def test_per_neuron_arrays_that_broadcast_across_each_other_are_validated():
    threshold = np.array([-40.0, -45.0])
    cfg = ss.ExponentialSomaConfig(threshold=threshold,
                                   rheobase_threshold=np.array([[-50.0], [-48.0], [-47.0]]))
    soma = ss.ExponentialSoma(cfg, units=(3, 2))
    np.testing.assert_array_equal(np.broadcast_to(soma.parameters()["rheobase_threshold"], (3, 2)),
                                  np.broadcast_to([[-50.0], [-48.0], [-47.0]], (3, 2)))
    assert soma(jnp.zeros((3, 2))).potential.shape == (3, 2)
    with pytest.raises(ss.ConfigError, match=r"threshold = array of shape \(3, 2\) with -45.0 at "
                                             r"index \(1, 1\) .* threshold > rheobase_threshold"):
        ss.ExponentialSomaConfig(threshold=threshold,
                                 rheobase_threshold=np.array([[-50.0], [-44.0], [-47.0]]))
    with pytest.raises(ss.ConfigError, match=r"threshold has shape \(2,\) and rheobase_threshold "
                                             r"shape \(3,\).*broadcast"):
        ss.ExponentialSomaConfig(threshold=threshold, rheobase_threshold=np.full(3, -50.0))


@pytest.mark.parametrize("value", [np.array([9.0 + 1.0j]), np.complex64(9.0), jnp.ones(2, jnp.complex64)])
def test_complex_config_values_are_refused(value):
    with pytest.raises(ss.ConfigError, match=r"potential_tau = .* violates the rule: real values"):
        ss.ExponentialSomaConfig(potential_tau=value)


def test_complex_currents_are_refused():
    soma = ss.ExponentialSoma(units=2)
    with pytest.raises(ValueError, match="complex64 violates the rule: real values"):
        soma(jnp.full(2, 900.0 + 5.0j, jnp.complex64))
    np.testing.assert_array_equal(soma.potential[...], ss.ExponentialSoma(units=2).potential[...])
    with pytest.raises(ValueError, match="complex64 violate the rule: real values"):
        ss.simulate(soma, jnp.full((3, 2), 900.0 + 5.0j, jnp.complex64))
    np.testing.assert_array_equal(soma.potential[...], ss.ExponentialSoma(units=2).potential[...])


def test_record_names_a_single_field_as_a_string():
    soma = ss.AdaptiveExponentialSoma(units=2)
    out = ss.simulate(soma, jnp.full((3, 2), 900.0), record="adaptation")
    assert out.adaptation.shape == (3, 2) and out.spikes is None and out.potential is None
    with pytest.raises(ValueError, match="not recordable"):
        ss.simulate(soma, jnp.full((3, 2), 900.0), record="spike")


@pytest.mark.parametrize("surrogate, cause", [
    ({"foo": 1}, "KeyError: 'name'"),
    ({"name": "arctan", "width": 1.0}, "unexpected keyword"),
    ({"name": "nope"}, "'nope' is not one of"),
])
def test_a_bad_surrogate_dict_is_a_config_error(surrogate, cause):
    with pytest.raises(ss.ConfigError, match="surrogate = .* violates the rule") as err:
        ss.ExponentialSomaConfig.from_dict({"surrogate": surrogate})
    assert cause in str(err.value)


def test_numpy_scalar_dt_is_accepted_and_bad_units_are_named():
    soma = ss.ExponentialSoma(units=2, dt=np.float32(0.1))
    assert soma.dt == float(np.float32(0.1))
    assert ss.ExponentialSoma(units=np.int64(2), dt=np.float64(0.5)).dt == 0.5
    for units in (2.0, "ab", None, (2, 0), (2.0,)):
        with pytest.raises(ValueError, match=r"units = .* violates the rule: an int or a tuple"):
            ss.ExponentialSoma(units=units)


# -- training

def dataset(n_train=8, n_test=4, features=3, classes=2, seed=0, **changes) -> Dataset:
    rng = np.random.default_rng(seed)
    data = Dataset("tiny", rng.uniform(size=(n_train, features)).astype(np.float32),
                   rng.integers(0, classes, n_train).astype(np.int32),
                   rng.uniform(size=(n_test, features)).astype(np.float32),
                   rng.integers(0, classes, n_test).astype(np.int32), classes, "static")
    return Dataset(**{**data.__dict__, **changes})


ENCODER = tr.Encoder("current", 5)


def net(**kwargs) -> tr.SpikingNetwork:
    return tr.SpikingNetwork(3, 4, 2, soma="expif", rngs=nnx.Rngs(0), **kwargs)


def nan_at(x, index):
    x = x.copy()
    x[index] = np.nan
    return x


@pytest.mark.parametrize("changes, message", [
    (dict(x_train=np.zeros((0, 3), np.float32), y_train=np.zeros(0, np.int32)),
     r"x_train has shape \(0, 3\).*N >= 1"),
    (dict(x_test=np.zeros((0, 3), np.float32), y_test=np.zeros(0, np.int32)),
     r"x_test has shape \(0, 3\).*N >= 1"),
    (dict(y_train=np.array([0, 1, 2, 0, 1, 0, 1, 0], np.int32)),
     r"y_train\[2\] = 2 violates the rule: 0 <= label < n_classes = 2"),
    (dict(y_test=np.array([0, -1, 0, 1], np.int32)), r"y_test\[1\] = -1 violates"),
    (dict(y_train=np.zeros(7, np.int32)), r"y_train has shape \(7,\).*8 integer labels"),
    (dict(x_train=nan_at(dataset().x_train, (5, 1))),
     r"x_train\[\(5, 1\)\] = .*nan.* violates the rule: finite inputs"),
    (dict(x_train=np.zeros((8, 4), np.float32), x_test=np.zeros((4, 4), np.float32)),
     r"4 features violate the rule: the model's in_features = 3"),
    (dict(x_test=np.zeros((4, 5), np.float32)), r"x_test has shape \(4, 5\).*trailing shape \(3,\)"),
])
def test_fit_refuses_bad_data_before_any_step(changes, message):
    model = net()
    before = nnx.state(model, nnx.Param)
    optimizer = tr.make_optimizer(model)
    with pytest.raises(DataError, match=message):
        tr.fit(model, optimizer, dataset(**changes), encoder=ENCODER, epochs=1, progress=False)
    jax.tree.map(np.testing.assert_array_equal, before, nnx.state(model, nnx.Param))
    assert int(optimizer.step[...]) == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size = 0 violates the rule: an int >= 1"),
    (dict(batch_size=-4), "batch_size = -4 violates"),
    (dict(epochs=-1), "epochs = -1 violates"),
    (dict(epochs=1, start_epoch=2), "start_epoch = 2 violates the rule: start_epoch <= epochs"),
])
def test_fit_refuses_bad_settings(kwargs, message):
    model = net()
    with pytest.raises(ValueError, match=message):
        tr.fit(model, tr.make_optimizer(model), dataset(),
               encoder=ENCODER, progress=False, **{"epochs": 1, **kwargs})


@pytest.mark.parametrize("name", ["in_features", "hidden", "n_classes"])
def test_network_sizes_must_be_positive_ints(name):
    sizes = {"in_features": 3, "hidden": 4, "n_classes": 2, name: 0}
    with pytest.raises(ValueError, match=f"{name} = 0 violates the rule: a positive int"):
        tr.SpikingNetwork(**sizes, rngs=nnx.Rngs(0))


def test_numpy_integer_sizes_are_plain_ints_in_the_network_config():
    config = tr.NetworkConfig(4, np.int64(3), 2)
    assert config.hidden == 3 and type(config.hidden) is int
    assert [layer.units for layer in config.layers] == [3]
    assert json.loads(json.dumps(config.to_dict()))["hidden"] == 3


def test_trainable_neurons_may_name_one_field():
    assert net(trainable_neurons="threshold").hidden.trainable == ("threshold",)


def test_non_finite_updates_are_skipped_never_applied_and_a_skipped_epoch_stops_the_run(tmp_path):
    """Two steps per epoch; the learning rate becomes infinite at the third,
    so from then on every update is non-finite: the guard of make_optimizer
    skips each (however many in a row), the history counts them, and the
    first epoch with no applied update stops the run before its save."""
    model = net()
    tx = optax.sgd(lambda count: jnp.where(count < 2, 1e-3, jnp.inf))
    optimizer = tr.make_optimizer(model, tx=tx)
    saved = []

    def save(epoch, model, optimizer, history):
        ckpt.save(epoch + 1, model, optimizer, metrics={"loss": history["train_loss"][-1]})
        saved.append(epoch)

    with ck.Checkpointer(tmp_path) as ckpt:
        with pytest.raises(tr.NonFiniteGradientError, match=r"epoch 2: skipped_batches = 2"):
            tr.fit(model, optimizer, dataset(), encoder=ENCODER, epochs=3, batch_size=4,
                   on_epoch_end=save, progress=False)
    assert saved == [0]
    restored = ck.load(tmp_path)
    assert ck.describe(tmp_path)[0].step == 1 and np.isfinite(ck.describe(tmp_path)[0].metrics["loss"])
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(nnx.state(restored, nnx.Param)))

    model = net()
    history = tr.fit(model, tr.make_optimizer(model, tx=tx), dataset(), encoder=ENCODER,
                     epochs=30, batch_size=4, progress=False, stop_on_nonfinite=False)
    assert history["skipped_batches"] == [0] + [2] * 29  # 58 in a row, none applied
    assert np.isfinite(history["train_loss"]).all()
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))



def test_the_documented_lower_bounds_are_accepted_in_every_param_dtype():
    # the rule ≥ 1e-6 is checked in the dtype the value is stored in
    for dtype in (jnp.float16, jnp.bfloat16, jnp.float32):
        soma = ss.ExponentialSoma(units=2, potential_tau=1e-6, resistance=1e-6,
                                  spike_slope=1e-6, param_dtype=dtype, dtype=jnp.float32)
        assert float(soma.potential_tau[...]) == float(jnp.asarray(1e-6, dtype))
    with pytest.raises(ss.ConfigError, match="potential_tau = .* violates the rule: potential_tau >= 1e-06"):
        ss.ExponentialSoma(units=2, potential_tau=lambda k, s, d: jnp.full(s, 5e-7, d),
                           rngs=nnx.Rngs(0))


@pytest.mark.parametrize("dt", [jnp.float32(0.25), np.array(0.25), np.float16(0.25),
                                __import__("fractions").Fraction(1, 4), np.int64(1)])
def test_any_real_scalar_is_a_dt(dt):
    soma = ss.ExponentialSoma(units=2, dt=dt)
    assert soma.dt == float(dt) and isinstance(soma.dt, float)


@pytest.mark.parametrize("dt, rule", [
    (True, "a real number"), ("0.1", "a real number"), (np.array([0.1]), "a real number"),
    (0.1 + 0j, "a real number"), (1e-7, "1e-06 ≤ dt ≤ 1e\\+06 ms")])
def test_a_dt_that_is_no_number_or_out_of_range_is_refused_by_name(dt, rule):
    with pytest.raises(ValueError, match=f"ExponentialSoma: dt = .* violates the rule: {rule}"):
        ss.ExponentialSoma(units=2, dt=dt)


def test_a_traced_dt_says_it_must_be_static():
    with pytest.raises(ValueError, match="dt = .*Tracer.* violates the rule: a concrete number"):
        jax.jit(lambda dt: ss.ExponentialSoma(units=2, dt=dt).potential[...])(0.1)
    with pytest.raises(ValueError, match="a concrete number"):
        jax.vmap(lambda dt: ss.ExponentialSoma(units=2, dt=dt).potential[...])(jnp.ones(3))


@pytest.mark.parametrize("kwargs, message", [
    (dict(potential_tau=10**400), "potential_tau = 'an int of 401 digits' violates the rule: "
                                  "potential_tau >= 1e-06"),
    (dict(potential_tau=[[1.0, 2.0], [3.0]]), r"potential_tau = \[\[1.0, 2.0\], \[3.0\]\] "
                                              "violates the rule: real numbers"),
    (dict(potential_tau=np.array(["abc"])), "potential_tau = array.*abc.* violates the rule: real"),
    (dict(potential_tau=np.array(["9.37"])), "potential_tau = array.*9.37.* violates the rule: real"),
    (dict(potential_tau=["9.37"]), r"potential_tau = \['9.37'\] violates the rule: real"),
    (dict(dtype=jnp.float8_e4m3fn), "dtype = .*float8_e4m3fn.* violates the rule: one of "
                                    r"\('float16', 'bfloat16', 'float32', 'float64'\)"),
    (dict(param_dtype=jnp.int32), "param_dtype = .* violates the rule: one of"),
    (dict(potential_tau=lambda k, s, d: None, rngs=nnx.Rngs(0)),
     "potential_tau = None violates the rule: an initializer returns an array of real numbers"),
    (dict(potential_tau=lambda k, s, d: jnp.full(s, 9.0 + 1j), rngs=nnx.Rngs(0)),
     "potential_tau = .*complex.* violates the rule: an initializer returns an array of real"),
    (dict(potential_tau=lambda k, s, d: np.full(s, 9.0 + 0j), rngs=nnx.Rngs(0)),
     r"potential_tau = array\(\[9.\+0.j, 9.\+0.j\]\) violates the rule: an initializer"),
    (dict(dtype=jnp.float16, potential_rest=-1e6, potential_reset=-1e6),
     r"potential_rest = -1000000.0 violates the rule: \|potential_rest\| ≤ 65504 mV"),
])
def test_values_no_config_can_hold_are_refused_by_name(kwargs, message):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not a ComplexWarning and a silent cast
        with pytest.raises((ValueError, ss.ConfigError), match=message):
            ss.ExponentialSoma(units=2, **kwargs)


def test_from_dict_of_no_dict_is_a_config_error():
    with pytest.raises(ss.ConfigError, match="from_dict: d = None violates the rule: a dict"):
        ss.ExponentialSomaConfig.from_dict(None)


CONFIGS = [ss.ExponentialSomaConfig, ss.RefractoryExponentialSomaConfig,
           ss.AdaptiveExponentialSomaConfig, ss.SimplifiedAdaptiveExponentialSomaConfig]


@pytest.mark.parametrize("config_class", CONFIGS)
@pytest.mark.parametrize("value", [False, True, None])
@pytest.mark.parametrize("build", [lambda c, v: c(validated=v),
                                   lambda c, v: c(potential_tau=5.0, validated=v),
                                   lambda c, v: c.from_dict({"validated": v}),
                                   lambda c, v: c.from_dict({**c().to_dict(), "validated": v})])
def test_validated_is_no_argument_and_the_refusal_names_the_way_to_skip_validation(
        config_class, value, build):
    with pytest.raises(ss.ConfigError) as info:
        build(config_class, value)
    message = str(info.value)
    assert message.startswith(f"{config_class.__name__} has no field(s) ['validated']; known: ")
    assert message.endswith("pass __skip_validation__=True"), message
    assert "'validated'," not in message and "'validated']" not in message.split("known: ")[1]


SOMAS = [ss.ExponentialSoma, ss.RefractoryExponentialSoma, ss.AdaptiveExponentialSoma,
         ss.SimplifiedAdaptiveExponentialSoma]


@pytest.mark.parametrize("soma", SOMAS)
@pytest.mark.parametrize("value", [False, True, None])
@pytest.mark.parametrize("others", [{}, {"potential_tau": 5.0}])
def test_a_soma_given_validated_names_the_way_to_skip_validation(soma, value, others):
    with pytest.raises(ss.ConfigError) as info:
        soma(units=1, validated=value, **others)
    message = str(info.value)
    assert message.startswith(f"{soma.__name__} has no config field(s) ['validated']; known: ")
    assert message.endswith("to build a soma without checking them, pass "
                            "__skip_validation__=True"), message


@pytest.mark.parametrize("soma", SOMAS)
@pytest.mark.parametrize("config", [False, True])
def test_a_soma_given_skip_validation_is_built_unchecked(soma, config):
    """The keyword the refusal names works on the soma as on its config:
    V_th below V_T is then built, not refused."""
    broken = {"threshold": -60.0}
    with pytest.raises(ss.ConfigError, match="threshold > rheobase_threshold"):
        soma(units=1, **broken)
    built = (soma(soma.config_class(**broken, __skip_validation__=True), units=1) if config
             else soma(units=1, **broken, __skip_validation__=True))
    assert not built.config.validated and float(built.threshold[...]) == -60.0
    assert soma(units=1, __skip_validation__=False).config.validated


@pytest.mark.parametrize("soma", [ss.ExponentialSoma, ss.AdaptiveExponentialSoma,
                                  ss.SimplifiedAdaptiveExponentialSoma])
@pytest.mark.parametrize("unknown", ["validated", "foo"])
def test_the_known_fields_listed_in_an_unknown_field_refusal_are_the_config_fields(soma, unknown):
    expected = str(sorted(f.name for f in dataclasses.fields(soma.config_class)))
    for build in (lambda: soma(units=1, **{unknown: 1}),
                  lambda: soma.config_class.from_dict({unknown: 1})):
        with pytest.raises(ss.ConfigError) as info:
            build()
        assert f"known: {expected}" in str(info.value) and "validated'," not in expected
        assert "'validated']" not in expected


def test_validated_reports_how_the_config_was_built():
    checked = ss.AdaptiveExponentialSomaConfig()
    unchecked = ss.AdaptiveExponentialSomaConfig(potential_tau=-1.0, __skip_validation__=True)
    assert checked.validated and not unchecked.validated
    assert checked != ss.AdaptiveExponentialSomaConfig(__skip_validation__=True)
    assert checked.replace(potential_tau=5.0).validated
    assert not copy.deepcopy(unchecked).validated and copy.deepcopy(unchecked) == unchecked


@pytest.mark.parametrize("kwargs, message", [
    (dict(dtype=jnp.bfloat16, potential_tau=1e6), "cannot resolve the relative change"),
    (dict(dtype=jnp.float16, potential_rest=-1e5, potential_reset=-1e5),
     r"potential_rest = -100000.0 violates the rule: \|potential_rest\| ≤ 65504"),
    # legal in float64, not once stored in float32: V_th rounds onto V_T
    (dict(threshold=-50.4 + 1e-9, rheobase_threshold=-50.4),
     "threshold = -50.4.* mV violates the rule: threshold > rheobase_threshold"),
])
def test_a_soma_built_inside_jit_checks_its_values(kwargs, message):
    """Values held as numbers are checked under a trace as outside it."""
    build = lambda: ss.ExponentialSoma(units=2, **kwargs).potential[...]  # noqa: E731
    for run in (build, jax.jit(build), nnx.jit(build)):
        with pytest.raises((ValueError, ss.ConfigError), match=message):
            run()


@pytest.mark.parametrize("units", [10**12, (10**6, 10**6)])
def test_too_many_neurons_for_memory_is_a_memory_error_not_a_shape_error(units):
    with pytest.raises(ss.errors.OutOfMemoryError,
                       match=r"units = \(.*\) \(its state and trained fields\) needs about "
                             r"1.2e\+13 bytes, more than the device could allocate"):
        ss.AdaptiveExponentialSoma(units=units, trainable=("threshold",))


def test_a_network_too_large_for_memory_is_a_memory_error_naming_its_weights():
    """A hidden layer of 10^12 somas: its weights are 3·10^14
    bytes, refused by name (a MemoryError), not by the allocator's message."""
    with pytest.raises(MemoryError, match=r"SpikingNetwork\(64, \[1000000000000\], 10\) needs "
                                          r"about 3e\+14 bytes"):
        ss.training.SpikingNetwork(64, 10**12, 10, rngs=nnx.Rngs(0))


def test_currents_of_the_wrong_rank_are_named_whole():
    soma = ss.ExponentialSoma(units=3)
    for shape in [(10,), (10, 4), (3,)]:
        with pytest.raises(ValueError, match=re.escape(f"currents of shape {shape} violate the "
                                                       "rule: (T, *batch, *units) with units = (3,)")):
            ss.simulate(soma, jnp.ones(shape))


def test_the_record_refusal_lists_each_choice_once():
    with pytest.raises(ValueError) as err:
        ss.simulate(ss.AdaptiveExponentialSoma(units=2), jnp.ones((3, 2)), record="refractory")
    assert str(err.value).endswith("choose from ('spikes', 'potential', 'adaptation')"), err.value


def test_numpy_and_jax_integers_are_step_counts_and_bin_widths():
    from spark_somas import events
    from spark_somas.training.encoders import Encoder

    assert Encoder("current", np.int64(8)).steps == 8
    assert Encoder("current", jnp.int32(8)).steps == 8
    with pytest.raises(ValueError, match="Encoder.steps = 8.0 violates the rule: an int"):
        Encoder("current", 8.0)
    x = events.bin_events([np.array([0.015])], [np.array([2])], steps=np.int64(3),
                          bin_ms=np.float32(14), pool=np.int32(1))
    assert x.shape == (1, 3, 700) and x[0, 1, 2] == 1


@pytest.mark.parametrize("gain", [1e39, "1", float("inf"), 0.0, True, 1e-7])
def test_an_input_gain_float32_cannot_hold_or_that_is_no_number_is_refused_by_name(gain):
    with pytest.raises(ValueError, match="input_gain"):
        tr.SpikingNetwork(3, 4, 2, input_gain=gain, rngs=nnx.Rngs(0))


def test_a_numpy_input_gain_is_a_number():
    assert tr.SpikingNetwork(3, 4, 2, input_gain=np.float32(2.0), rngs=nnx.Rngs(0)).config.input_gain == 2.0


@pytest.mark.parametrize("make", [lambda: ss.surrogates.Triangle(width=1e-40),
                                  lambda: ss.surrogates.ArcTan(alpha=1e39),
                                  lambda: ss.surrogates.Sigmoid(slope=1e39),
                                  lambda: ss.surrogates.Gaussian(sigma=1e-50),
                                  lambda: ss.surrogates.FastSigmoid(damping=0.0),
                                  lambda: ss.surrogates.Triangle(relative="yes")])
def test_surrogate_parameters_whose_gradient_float32_cannot_hold_are_refused(make):
    with pytest.raises(ValueError, match="violates the rule"):
        make()


def test_surrogates_at_the_edges_of_their_range_give_finite_gradients_and_numpy_scalars_count():
    assert ss.surrogates.Triangle(width=np.float32(1)) == ss.surrogates.Triangle(width=1.0)
    x = jnp.asarray([-1e6, -1.0, 0.0, 1e-6, 1.0, 1e6], jnp.float32)
    for s in (ss.surrogates.Triangle(width=1e-6), ss.surrogates.ArcTan(alpha=1e6),
              ss.surrogates.Sigmoid(slope=1e6), ss.surrogates.Gaussian(sigma=1e-6),
              ss.surrogates.FastSigmoid(slope=1e6, damping=1e6)):
        assert np.isfinite(np.asarray(jax.vmap(jax.grad(lambda v: ss.spike(v, s)))(x))).all(), s


def _window_net(window, readout):
    return tr.SpikingNetwork(3, 4, 2, output="soma" if readout in ("count", "first_spike") else "leaky",
                             readout=readout, readout_window=window, input_gain=3.0,
                             rngs=nnx.Rngs(0))


@settings(max_examples=12, deadline=None, derandomize=True)
@given(steps=st.integers(1, 12), start=st.none() | st.integers(-15, 15),
       stop=st.none() | st.integers(-15, 15), readout=st.sampled_from(sorted(tr.READOUTS)))
def test_a_readout_window_must_keep_a_step_of_the_run(steps, start, stop, readout):
    """A window that keeps no step of the run is refused by name before the
    run, for every readout; one that keeps steps reads exactly them."""
    x = jnp.ones((steps, 2, 3))
    kept = range(steps)[slice(start, stop)]
    if not kept:
        with pytest.raises(ss.errors.RuleError, match=r"readout_window .*violates the rule.*"
                           rf"T = {steps} steps"):
            _window_net((start, stop), readout)(x)
        return
    windowed = _window_net((start, stop), readout)(x)
    whole = _window_net(None, readout)(x)
    trace = whole.output_spikes if readout in ("count", "first_spike") else whole.output_potential
    fn = tr.READOUTS[readout][0]
    np.testing.assert_allclose(windowed.logits, fn(trace[slice(start, stop)], 1.0), rtol=1e-6)


def _marked_digits() -> Dataset:
    """Sixteen training samples of 3 features, one of them marked (feature 0 = 1)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 0.5, (24, 3)).astype(np.float32)
    x[5, 0] = 1.0
    y = (np.arange(24) % 2).astype(np.int32)
    return Dataset("marked", x[:16], y[:16], x[16:], y[16:], n_classes=2, encoding="static")


class _NaNOnMark(tr.Encoder):
    """Direct current, NaN at one step for the marked sample (a sensor glitch)."""

    def __call__(self, x, key=None, *, train=False, time_major=True):
        out = super().__call__(x, key, train=train)
        glitch = (x[..., 0] > 0.9)[None, :, None] & (jnp.arange(out.shape[0]) == 2)[:, None, None]
        return jnp.where(glitch, jnp.nan, out)


def test_a_nan_input_that_silences_a_soma_stops_fit_by_name():
    """One NaN sample makes its neurons' potential NaN for the rest of the run
    (they never spike again), with a finite loss; fit refuses to go on."""
    net = tr.SpikingNetwork(3, 4, 2, rngs=nnx.Rngs(0))
    encoder = _NaNOnMark("current", 5)
    with pytest.raises(tr.NonFiniteStateError, match=r"nonfinite_state_batches = 1 violates"):
        tr.fit(net, tr.make_optimizer(net), _marked_digits(), encoder=encoder, epochs=1,
               batch_size=4, progress=False)
    net = tr.SpikingNetwork(3, 4, 2, rngs=nnx.Rngs(0))
    history = tr.fit(net, tr.make_optimizer(net), _marked_digits(), encoder=encoder, epochs=2,
                     batch_size=4, progress=False, stop_on_nonfinite=False)
    assert history["nonfinite_state_batches"] == [1, 1]
    clean = tr.fit(net, tr.make_optimizer(net), _marked_digits(), encoder=tr.Encoder("current", 5),
                   epochs=1, batch_size=4, progress=False)
    assert clean["nonfinite_state_batches"] == [0]


@pytest.mark.parametrize("noise", [float("inf"), float("nan"), -1.0])
def test_encoder_noise_must_be_finite(noise):
    with pytest.raises(ss.errors.RuleError, match=r"Encoder.noise = .* violates the rule: 0 <= noise < inf"):
        tr.Encoder("current", 5, noise=noise)
