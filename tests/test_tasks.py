"""The evidence-accumulation task against a plain-loop construction of its trials."""

import numpy as np
import pytest

from spark_somas.datasets import Dataset
from spark_somas.data.tasks import EvidenceAccumulation, load_evidence_accumulation


def expected_trial(sides, *, n_cues, cue, gap, delay, recall, pop):
    """The trial a cue rate of 1 per step and no background must give, built
    step by step from the cue sides (durations in steps)."""
    steps = n_cues * cue + (n_cues - 1) * gap + delay + recall
    x = np.zeros((steps, 4 * pop), np.float32)
    t = 0
    for k in range(n_cues):
        for _ in range(cue):
            x[t, sides[k] * pop:(sides[k] + 1) * pop] = 1
            t += 1
        if k < n_cues - 1:
            t += gap
    t += delay
    for _ in range(recall):
        x[t, 2 * pop:3 * pop] = 1
        t += 1
    assert t == steps
    return x


def test_default_timing():
    task = EvidenceAccumulation()
    assert task.cue_onsets == (0, 150, 300, 450, 600, 750, 900)
    assert task.cue_period_steps == 1000
    assert task.recall_start == 2000 and task.steps == 2150 and task.n_inputs == 40
    coarse = EvidenceAccumulation(dt=2.0, delay_ms=1500.0)
    assert coarse.steps == 2650 // 2 and coarse.recall_start == 2500 // 2


@pytest.mark.parametrize("delay", [0, 37, 400])
def test_deterministic_trials_match_plain_construction(delay):
    task = EvidenceAccumulation(n_cues=5, cue_ms=4.0, gap_ms=3.0, delay_ms=float(delay),
                                recall_ms=6.0, population=3, cue_rate_hz=1000.0,
                                background_rate_hz=0.0)
    x, labels, sides = task.trials(40, seed=3)
    assert x.shape == (40, 5 * 4 + 4 * 3 + delay + 6, 12) and x.dtype == np.float32
    for i in range(40):
        ref = expected_trial(sides[i].astype(int), n_cues=5, cue=4, gap=3, delay=delay,
                             recall=6, pop=3)
        np.testing.assert_array_equal(x[i], ref)
        left = x[i, :, 0:3].sum() / (4 * 3)  # cues seen by the left population
        right = x[i, :, 3:6].sum() / (4 * 3)
        assert left + right == 5
        assert labels[i] == int(right > left)
    assert 0 < labels.sum() < 40


def test_labels_are_the_majority_side():
    task = EvidenceAccumulation(delay_ms=10.0)
    _, labels, sides = task.trials(300, seed=1)
    np.testing.assert_array_equal(labels, (sides.sum(1) >= 4).astype(np.int32))
    assert set(np.unique(sides)) == {0, 1}
    assert 100 < labels.sum() < 200  # both sides equally likely


def test_stochastic_spikes_respect_populations_and_rates():
    task = EvidenceAccumulation(delay_ms=300.0)
    n, pop = 200, task.population
    x, _, sides = task.trials(n, seed=7, dtype=np.uint8)
    assert set(np.unique(x)) <= {0, 1}
    in_cue = np.zeros((n, task.steps, 2), bool)  # (trial, step, side) active
    for i in range(n):
        for onset, side in zip(task.cue_onsets, sides[i]):
            in_cue[i, onset:onset + task.cue_steps, side] = True
    for side, channels in ((0, slice(0, pop)), (1, slice(pop, 2 * pop))):
        spikes = x[:, :, channels].sum(-1)
        assert not spikes[~in_cue[:, :, side]].any()
        rate_hz = spikes[in_cue[:, :, side]].mean() / pop / (task.dt / 1000.0)
        assert abs(rate_hz - 40.0) < 2.0
    recall = x[:, :, 2 * pop:3 * pop]
    assert not recall[:, :task.recall_start].any()
    assert abs(recall[:, task.recall_start:].mean() * 1000.0 - 40.0) < 3.0
    assert abs(x[:, :, 3 * pop:].mean() * 1000.0 - 10.0) < 0.5


def test_trials_are_pure_functions_of_seed_and_index():
    task = EvidenceAccumulation(delay_ms=50.0)
    a, la, sa = task.trials(12, seed=4)
    b, lb, sb = task.trials(6, seed=4)
    np.testing.assert_array_equal(a[:6], b)
    np.testing.assert_array_equal(la[:6], lb)
    np.testing.assert_array_equal(sa[:6], sb)
    c, _, sc = task.trials(12, seed=5)
    assert not np.array_equal(a, c) and not np.array_equal(sa, sc)


def test_cue_period_is_the_same_at_every_delay():
    short = EvidenceAccumulation(delay_ms=20.0)
    long = EvidenceAccumulation(delay_ms=1500.0)
    xs, ls, ss = short.trials(8, seed=2)
    xl, ll, sl = long.trials(8, seed=2)
    np.testing.assert_array_equal(ss, sl)
    np.testing.assert_array_equal(ls, ll)
    end = short.cue_period_steps
    np.testing.assert_array_equal(xs[:, :end], xl[:, :end])
    assert xl.shape[1] - xs.shape[1] == 1480


def test_dataset_split():
    data = load_evidence_accumulation(seed=0, n_samples=200, delay_ms=100.0, test_fraction=0.25)
    assert isinstance(data, Dataset)
    assert (data.name, data.n_classes, data.encoding) == ("cues", 2, "spikes")
    assert data.x_train.shape[1:] == (1250, 40) and data.y_train.dtype == np.int32
    assert len(data.y_train) + len(data.y_test) == 200
    _, labels, _ = EvidenceAccumulation(delay_ms=100.0).trials(200, seed=0)
    for c in (0, 1):  # stratified: a quarter of each class held out
        assert (data.y_test == c).sum() == round(0.25 * (labels == c).sum())
    again = load_evidence_accumulation(seed=0, n_samples=200, delay_ms=100.0, test_fraction=0.25)
    np.testing.assert_array_equal(again.x_test, data.x_test)
    np.testing.assert_array_equal(again.y_train, data.y_train)


@pytest.mark.parametrize("kwargs, name", [
    (dict(n_cues=6), "n_cues"), (dict(n_cues=0), "n_cues"), (dict(population=0), "population"),
    (dict(cue_ms=0.0), "cue_ms"), (dict(cue_ms=2.5), "cue_ms"), (dict(delay_ms=-1.0), "delay_ms"),
    (dict(recall_ms=float("nan")), "recall_ms"), (dict(dt=0.0), "dt"),
    (dict(cue_rate_hz=1500.0), "cue_rate_hz"), (dict(background_rate_hz=-1.0), "background_rate"),
])
def test_invalid_settings_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EvidenceAccumulation(**kwargs)


def test_invalid_counts_raise():
    with pytest.raises(ValueError, match="n = 0"):
        EvidenceAccumulation().trials(0)
    with pytest.raises(ValueError, match="test_fraction"):
        load_evidence_accumulation(n_samples=10, test_fraction=1.0)
