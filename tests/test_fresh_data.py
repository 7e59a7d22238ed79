"""New training samples every epoch: pure functions of (seed, epoch), never
a test sample, and a resumed run that draws what the unbroken one drew."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from spark_somas import training as tr
from spark_somas.cli import build_parser
from spark_somas.data.datasets import load_digits, load_randman
from spark_somas.data.tasks import EvidenceAccumulation


def _cues():
    return EvidenceAccumulation(delay_ms=20.0, cue_ms=20.0, gap_ms=10.0).dataset(40, seed=3)


@pytest.mark.parametrize("make", [_cues, lambda: load_randman(seed=3, samples_per_class=8)],
                         ids=["cues", "randman"])
def test_draws_are_pure_new_every_epoch_and_shaped_as_the_split(make):
    data = make()
    n = len(data.x_train)
    first, again = data.draw_train(0, n), make().draw_train(0, n)
    second = data.draw_train(1, n)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)  # a pure function of (seed, epoch)
    assert first[0].shape == data.x_train.shape and first[1].shape == data.y_train.shape
    assert first[0].dtype == data.x_train.dtype and first[1].dtype == data.y_train.dtype
    assert not np.array_equal(first[0], second[0])
    assert set(np.unique(first[1])) <= set(range(data.n_classes))
    test = {x.tobytes() for x in data.x_test}
    assert not any(x.tobytes() in test for x in np.concatenate([first[0], second[0]]))


def test_cue_draws_continue_the_trial_numbering_after_the_split():
    task = EvidenceAccumulation(delay_ms=20.0, cue_ms=20.0, gap_ms=10.0)
    data = task.dataset(40, seed=3)
    x, y = data.draw_train(2, 5)
    expected, labels, _ = task.trials(5, seed=3, start=40 + 2 * 5)
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(y, labels)


def _train(data, epochs, start_epoch=0, history=None, model=None, optimizer=None):
    if model is None:
        model = tr.SpikingNetwork(data.n_features, 6, data.n_classes, recurrent=True,
                                  synapse_tau=5.0, input_gain=3.0, rngs=nnx.Rngs(0))
        optimizer = tr.make_optimizer(model, 1e-2)
    encoder = tr.Encoder("spikes", int(data.x_train.shape[1]))
    history = tr.fit(model, optimizer, data, encoder=encoder, epochs=epochs, batch_size=8,
                     progress=False, fresh_data=True, start_epoch=start_epoch, history=history)
    return model, optimizer, history


@pytest.mark.parametrize("on_device", [True, False])
def test_a_resumed_fresh_run_equals_the_unbroken_one(on_device, monkeypatch):
    data = _cues()
    if not on_device:
        monkeypatch.setattr(tr.loop, "fits_on_device", lambda *a, **k: False)
    unbroken, _, full = _train(data, 3)
    model, optimizer, history = _train(data, 2)
    resumed, _, continued = _train(data, 3, 2, history, model, optimizer)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(resumed, nnx.Param),
                 nnx.state(unbroken, nnx.Param))
    assert continued["train_loss"] == full["train_loss"]


def test_fresh_data_trains_on_other_samples_than_the_fixed_split():
    data = _cues()
    model = tr.SpikingNetwork(data.n_features, 6, data.n_classes, recurrent=True,
                              synapse_tau=5.0, input_gain=3.0, rngs=nnx.Rngs(0))
    fixed = tr.fit(model, tr.make_optimizer(model, 1e-2), data,
                   encoder=tr.Encoder("spikes", int(data.x_train.shape[1])), epochs=1,
                   batch_size=8, progress=False)
    _, _, fresh = _train(data, 1)
    assert fixed["train_loss"] != fresh["train_loss"]


def test_fresh_data_is_refused_for_a_dataset_that_cannot_draw():
    data = load_digits()
    model = tr.SpikingNetwork(data.n_features, 6, data.n_classes, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="fresh_data = True violates the rule: a dataset that "
                                         "draws new training samples"):
        tr.fit(model, tr.make_optimizer(model), data, encoder=tr.Encoder("current", 5),
               epochs=1, progress=False, fresh_data=True)
    with pytest.raises(ValueError, match="fresh_data"):
        tr.RunConfig(task="digits", fresh_data=True)


def test_the_command_line_spells_the_switches_and_the_mix_as_options():
    parser = build_parser()
    args = parser.parse_args(["train", "--task", "cues", "--no-detach-reset",
                              "--detach-adaptation", "--adaptive-fraction", "0.5",
                              "--no-fresh-data", "--rate-strength", "0"])
    run = tr.RunConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(tr.RunConfig)})
    assert (run.detach_reset, run.detach_adaptation, run.fresh_data) == (False, True, False)
    assert run.adaptive_fraction == 0.5 and run.rate_strength == 0.0
    command = run.command()
    assert "--detach-adaptation" in command and "--no-fresh-data" in command
    assert "--adaptive-fraction 0.5" in command
    again = parser.parse_args(command.split()[1:])
    rebuilt = tr.RunConfig(**{f.name: getattr(again, f.name)
                              for f in dataclasses.fields(tr.RunConfig)})
    assert rebuilt == run


def test_the_cue_recipe_is_the_default_of_the_cue_task():
    run = tr.RunConfig(task="cues", soma="simplified")
    assert (run.hidden, run.recurrent, run.fresh_data, run.rate_strength) == (64, True, True, 0.1)
    assert run.soma_option == (("threshold_tau", 2000.0),)  # a field the soma has
    assert dict(run.data_option)["cue_ms"] == 50.0
    mine = tr.RunConfig(task="cues", soma="simplified", hidden=8,
                        soma_option=(("threshold_tau", 500.0),))
    assert mine.hidden == 8 and mine.soma_option == (("threshold_tau", 500.0),)
    assert tr.RunConfig.from_dict(mine.to_dict()) == mine
    digits = tr.RunConfig()
    assert (digits.hidden, digits.epochs, digits.fresh_data, digits.soma_option) == (
        256, 30, False, ())
    assert digits.command() == "spark-somas train"
    assert tr.RunConfig(task="cues").command() == "spark-somas train --task cues"
