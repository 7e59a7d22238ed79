"""How a run is put together: a network built from its config, one reset
per batch, the backend resolved once, the run function the CLI calls, and
a CLI import that leaves matplotlib alone."""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spark_somas import backends, network, runs, training as tr
from spark_somas.callbacks import EarlyStopping
from spark_somas.datasets import Dataset
from spark_somas.somas import SomaState


def tiny_data(n=16, features=5, classes=2) -> Dataset:
    rng = np.random.default_rng(1)
    y = np.arange(n, dtype=np.int32) % classes
    x = rng.uniform(size=(n, features)).astype(np.float32)
    return Dataset("tiny", x, y, x[:8].copy(), y[:8].copy(), n_classes=classes,
                   encoding="static")


# --- SpikingNetwork from its NetworkConfig ---------------------------------------------------

def test_a_network_is_built_from_its_config_as_the_constructor_builds_it():
    config = tr.NetworkConfig(5, (4, tr.Layer(3, "expif", recurrent=True)), 2, soma="adex",
                              synapse_tau=4.0, trainable_neurons=True, readout_window=(-3, None))
    built = tr.SpikingNetwork.from_config(config, nnx.Rngs(3))
    assert built.config is config
    direct = tr.SpikingNetwork(config=config, rngs=nnx.Rngs(3))
    keywords = tr.SpikingNetwork(5, (4, tr.Layer(3, "expif", recurrent=True)), 2, soma="adex",
                                 synapse_tau=4.0, trainable_neurons=True,
                                 readout_window=(-3, None), rngs=nnx.Rngs(3))
    assert keywords.config == config and direct.config is config
    for other in (direct, keywords, config.build(nnx.Rngs(3))):
        chex.assert_trees_all_equal(nnx.state(other), nnx.state(built))
        assert other.spec == built.spec
    assert type(built.layers[1].soma).__name__ == "ExponentialSoma"
    assert tr.network_from_spec(built.spec).config == config


def test_config_and_arguments_together_are_refused():
    config = tr.NetworkConfig(5, 4, 2)
    with pytest.raises(ValueError, match=r"arguments besides config = \['dt', 'in_features'\]"):
        tr.SpikingNetwork(5, config=config, dt=0.5, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="config = 3 violates the rule: a NetworkConfig"):
        tr.SpikingNetwork(config=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="in_features = None violates the rule: a positive int"):
        tr.SpikingNetwork(hidden=4, n_classes=2, rngs=nnx.Rngs(0))


# --- one reset per batch ---------------------------------------------------------------------

@pytest.fixture
def resets(monkeypatch):
    """The number of SpikingNetwork.reset calls as the compiled programs run
    (a callback each reset adds to the program: a trace is not a run)."""
    count = [0]
    original = tr.SpikingNetwork.reset

    def counted(self, *args, **kwargs):
        jax.debug.callback(lambda: count.__setitem__(0, count[0] + 1))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tr.SpikingNetwork, "reset", counted)
    return count


def test_a_training_step_resets_the_network_once_and_keeps_its_state_shape(resets):
    data = tiny_data()
    model = tr.SpikingNetwork(5, 4, 2, rngs=nnx.Rngs(0))
    before = jax.tree.map(jnp.shape, nnx.state(model, SomaState))
    optimizer = tr.make_optimizer(model)
    tr.train_step(model, optimizer, data.x_train, data.y_train, jax.random.key(0),
                  encoder=tr.Encoder("current", 3), objective=tr.Objective())
    jax.effects_barrier()
    assert resets[0] == 1
    assert jax.tree.map(jnp.shape, nnx.state(model, SomaState)) == before


def test_fit_resets_once_per_training_and_evaluation_batch(resets):
    data = tiny_data()
    model = tr.SpikingNetwork(5, 4, 2, rngs=nnx.Rngs(0))
    tr.fit(model, tr.make_optimizer(model), data, encoder=tr.Encoder("current", 3),
           epochs=2, batch_size=4, epoch_on_device=False, progress=False)
    jax.effects_barrier()
    # per epoch: 16 / 4 training batches, one evaluation batch of the 8 test samples
    assert resets[0] == 2 * (4 + 1)


def test_evaluation_and_record_leave_the_state_as_they_found_it(resets):
    data = tiny_data()
    model = tr.SpikingNetwork(5, 4, 2, rngs=nnx.Rngs(0))
    before = nnx.to_pure_dict(nnx.state(model, SomaState))
    out = tr.record(model, data.x_test, jax.random.key(0), encoder=tr.Encoder("current", 3))
    jax.effects_barrier()
    assert out.logits.shape == (8, 2) and resets[0] == 1
    chex.assert_trees_all_equal(nnx.to_pure_dict(nnx.state(model, SomaState)), before)


# --- the backend, resolved in one place --------------------------------------------------------

def test_the_network_resolves_its_backend_once_and_the_loop_gets_the_resolved_name(monkeypatch):
    calls, given = [], []
    resolve, drive = backends.resolve_backend, network.drive
    monkeypatch.setattr(backends, "resolve_backend", lambda b: calls.append(b) or resolve(b))
    monkeypatch.setattr(network, "drive", lambda *a, **k: given.append(k["backend"]) or drive(*a, **k))
    model = tr.SpikingNetwork(5, 4, 2, rngs=nnx.Rngs(0))
    model(jnp.ones((3, 2, 5)))
    assert calls == ["auto"] and given == ["scan"]
    with pytest.raises(ValueError, match=r"backend = 'pallas' violates the rule: one of"):
        tr.NetworkConfig(5, 4, 2, backend="pallas")
    assert backends.check_backend("fused") == "fused"


# --- the run function the CLI calls ------------------------------------------------------------

def test_the_run_function_trains_writes_its_files_and_takes_callbacks(tmp_path):
    run = runs.RunConfig(epochs=5, limit=24, batch_size=12, hidden=6, steps=4, soma="expif")
    lines = []
    result = runs.train(run, str(tmp_path / "out"), checkpoint_dir=str(tmp_path / "ckpt"),
                        progress=False, echo=lines.append,
                        callbacks=[EarlyStopping("epoch", mode="min", patience=1)])
    assert result.history["epoch"] == [1, 2] and result.start_epoch == 0
    assert lines[0].startswith("Dataset('digits'") and "'time_loop': 'scan'" in lines[0]
    png, path = result.files
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    record = json.loads(open(path).read())
    assert record["history"]["epoch"] == [1, 2] and record["settings"]["time_loop"] == "scan"
    assert result.raster.shape == (4, 6)
    saved = runs.saved_run(str(tmp_path / "ckpt"))
    assert saved.epochs_done == 2 and saved.run == run.to_dict()

    longer = runs.train(run, str(tmp_path / "out"), checkpoint_dir=str(tmp_path / "ckpt"),
                        resume=True, progress=False, echo=lines.append,
                        callbacks=[EarlyStopping("epoch", mode="min", patience=2)])
    assert longer.start_epoch == 2 and longer.history["epoch"] == [1, 2, 3]
    assert lines[-1] == f"resumed {tmp_path / 'ckpt'} after epoch 2"


def test_the_run_function_names_its_own_arguments_in_its_errors(tmp_path):
    (tmp_path / "file").write_text("")
    run = runs.RunConfig(epochs=1, limit=8, hidden=4, steps=2)
    with pytest.raises(runs.RunError, match=r"^out_dir .*file/x violates the rule: a directory "
                                            "this process can create"):
        runs.train(run, str(tmp_path / "file" / "x"), progress=False)
    with pytest.raises(runs.RunError, match=r"^resume = True violates the rule: with the "
                                            "checkpoint_dir to resume"):
        runs.train(run, str(tmp_path / "out"), resume=True, progress=False)
    other = runs.RunConfig(epochs=1, limit=8, hidden=4, steps=2, data_option=(("nope", 1),))
    with pytest.raises(runs.RunError, match=r"^data_option violates the rule: a keyword of the "
                                            "digits loader"):
        runs.train(other, str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out" / "train_digits_adex.json").exists()


# --- importing the CLI ------------------------------------------------------------------------

def test_importing_the_cli_neither_loads_nor_configures_matplotlib():
    code = ("import sys\nimport spark_somas.cli as cli\n"
            "parser = cli.build_parser()\n"
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'\n"
            "import matplotlib\n"
            "print(matplotlib.rcParams._get_backend_or_none())")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"} | {"JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "None"  # no backend chosen: matplotlib.use never ran
