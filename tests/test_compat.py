"""Checkpoints written by earlier releases keep loading and resuming.

``tests/fixtures/<version>/`` holds what ``tests/fixtures/make_fixtures.py``
wrote with that release installed, and ``expected.npz`` what that release
computed when it continued each checkpoint: the oracle here is the old
release itself.
"""

import os
import shutil
import subprocess
import warnings

import numpy as np
import pytest
from flax import nnx

import spark_somas as ss
from spark_somas import training
from spark_somas.checkpointing import (CheckpointMismatchError, Checkpointer,
                                      UnrecordedMethodWarning, load)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
RELEASES = sorted(d for d in os.listdir(FIXTURES) if os.path.isdir(os.path.join(FIXTURES, d)))

import sys  # noqa: E402

sys.path.insert(0, FIXTURES)
import make_fixtures  # noqa: E402


@pytest.fixture(params=RELEASES)
def release(request, tmp_path):
    """A writable copy of one release's fixtures, and its expected values."""
    src = os.path.join(FIXTURES, request.param)
    dst = tmp_path / request.param
    shutil.copytree(src, dst)
    return dst, dict(np.load(dst / "expected.npz"))


def test_there_is_a_fixture_per_release():
    assert "0.1.0" in RELEASES


def test_soma_checkpoint_resumes_exactly(release):
    path, expected = release
    # 0.1.0's one reset switch cut the adaptation jump's gradient too: a soma of
    # today's defaults (the jump's gradient kept) is refused by name, the
    # soma that means what the release meant restores.
    with Checkpointer(path / "soma", read_only=True) as ck:
        with pytest.raises(CheckpointMismatchError, match="config.detach_adaptation"):
            ck.restore(ss.AdaptiveExponentialSoma(units=8, method="rk4",
                                                  trainable=("potential_tau",)))
    soma = ss.AdaptiveExponentialSoma(units=8, method="rk4", trainable=("potential_tau",),
                                      detach_adaptation=True)
    with Checkpointer(path / "soma", read_only=True) as ck:
        with pytest.warns(UnrecordedMethodWarning, match=r"0\.1\.0.*method rk4 unchecked"):
            assert ck.restore(soma) == 0
    rec = ss.simulate(soma, make_fixtures.soma_current(2000))
    assert expected["soma_spikes"].sum() > 20  # dozens of spikes: a real continuation
    np.testing.assert_array_equal(np.asarray(rec.spikes), expected["soma_spikes"])
    np.testing.assert_allclose(np.asarray(rec.potential), expected["soma_potential"],
                               rtol=1e-5, atol=1e-4)


def test_soma_checkpoint_loads_from_the_directory_alone(release):
    path, _ = release
    with pytest.warns(UnrecordedMethodWarning, match=r"0\.1\.0.*loaded with method euler.*"
                      r"load\(directory, method='rk4'\)"):
        soma = load(path / "soma")
    assert soma.method == "euler"  # 0.1.0's default: the release recorded none
    assert isinstance(soma, ss.AdaptiveExponentialSoma)
    assert soma.units == (8,) and soma.trainable == ("potential_tau",)
    assert np.isfinite(np.asarray(soma.potential[...])).all()



def test_network_checkpoint_resumes_exactly(release):
    path, expected = release
    # 0.1.0's network trained with the somas' own surrogate, exact gradient and
    # one reset switch that cut the adaptation jump's gradient too; a network
    # of today's defaults is a different model, refused by name.
    with Checkpointer(path / "network", read_only=True) as ck:
        with pytest.raises(CheckpointMismatchError, match="config.exp_gradient"):
            ck.restore(training.SpikingNetwork(6, [5, 4], 3, recurrent=True, synapse_tau=5.0,
                                               trainable_neurons=True, rngs=nnx.Rngs(99)))
    net = training.SpikingNetwork(6, [5, 4], 3, recurrent=True, synapse_tau=5.0,
                                  trainable_neurons=True, surrogate=None, exp_gradient=None,
                                  detach_reset=None, detach_adaptation=True, rngs=nnx.Rngs(99))
    opt = training.make_optimizer(net, 1e-2)
    with Checkpointer(path / "network", read_only=True) as ck:
        with pytest.warns(UnrecordedMethodWarning, match="method euler unchecked"):
            assert ck.restore(net, opt) == 2

    def loss(net):
        import jax.numpy as jnp
        return jnp.mean(net(make_fixtures.net_inputs(20)).logits ** 2)

    # One compiled step and one compiled forward pass: run eagerly, every
    # operation outside the time loop would be compiled on its own.
    nnx.jit(lambda net, opt: opt.update(net, nnx.grad(loss)(net)))(net, opt)
    logits = np.asarray(nnx.jit(lambda net: net(make_fixtures.net_inputs(20)).logits)(net))
    np.testing.assert_allclose(logits, expected["network_logits"], rtol=1e-5, atol=1e-6)



def test_network_checkpoint_loads_after_import_spark_somas_alone(release):
    path, _ = release
    with pytest.warns(UnrecordedMethodWarning):
        net = load(path / "network")
    assert type(net).__name__ == "SpikingNetwork"
    assert [layer.soma.units for layer in net.layers] == [(5,), (4,)]


def test_soma_checkpoint_loads_with_the_method_it_ran(release):
    path, expected = release
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the method is given: nothing to warn about
        soma = load(path / "soma", method="rk4")
    assert soma.method == "rk4"
    rec = ss.simulate(soma, make_fixtures.soma_current(2000))
    np.testing.assert_array_equal(np.asarray(rec.spikes), expected["soma_spikes"])


def test_training_run_loads_and_lists(release):
    path, _ = release
    from spark_somas import cli
    assert cli.main(["checkpoints", str(path / "run")]) == 0
    net = load(path / "run", method="euler")
    assert net.layers[0].soma.units == (12,)


def test_network_checkpoint_loads_in_a_process_that_imported_only_spark_somas(release):
    path, _ = release
    code = ("import sys, warnings, spark_somas\n"
            "assert 'spark_somas.network' not in sys.modules\n"
            "from spark_somas.checkpointing import load\n"
            "warnings.simplefilter('ignore')\n"
            "net = load(sys.argv[1])\n"
            "print(type(net).__name__, [l.soma.units for l in net.layers])\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(ss.__file__)),
                                           os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code, str(path / "network")], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["SpikingNetwork", "[(5,),", "(4,)]"]
