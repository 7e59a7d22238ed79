"""Data generators: deterministic by seed, stratified splits, Randman's spike code."""

import numpy as np
import pytest

from spark_somas import datasets


def _assert_same(a: datasets.Dataset, b: datasets.Dataset) -> None:
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_digits_split_is_fixed_by_seed_stratified_and_disjoint():
    a, b, c = datasets.load_digits(seed=0), datasets.load_digits(seed=0), datasets.load_digits(seed=1)
    _assert_same(a, b)
    assert not np.array_equal(a.y_test, c.y_test)
    assert a.x_train.shape == (1438, 64) and a.x_test.shape == (359, 64)
    assert a.x_train.dtype == np.float32 and 0.0 <= a.x_train.min() and a.x_train.max() == 1.0
    counts = np.bincount(a.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 20 % of each class (174–183 images)
    # the two splits partition the 1797 images: each used exactly once
    from sklearn.datasets import load_digits

    full = load_digits()
    ours = np.concatenate([np.c_[a.x_train * 16, a.y_train], np.c_[a.x_test * 16, a.y_test]])
    theirs = np.c_[full.data, full.target]
    rows = [("", np.float64)] * 65
    np.testing.assert_array_equal(np.sort(ours.astype(np.float64).view(rows), axis=0),
                                  np.sort(theirs.astype(np.float64).view(rows), axis=0))


def test_randman_is_deterministic_by_seed():
    kw = dict(n_classes=3, n_units=8, n_steps=20, samples_per_class=20)
    a, b = datasets.load_randman(seed=5, **kw), datasets.load_randman(seed=5, **kw)
    _assert_same(a, b)
    c = datasets.load_randman(seed=6, **kw)
    assert not np.array_equal(a.x_train, c.x_train)


def test_randman_spike_code():
    d = datasets.load_randman(seed=0, n_classes=4, n_units=10, n_steps=30, manifold_dim=2,
                              samples_per_class=25, test_fraction=0.2)
    assert d.x_train.shape == (80, 30, 10) and d.x_test.shape == (20, 30, 10)
    assert d.encoding == "spikes" and d.n_classes == 4
    x = np.concatenate([d.x_train, d.x_test])
    assert set(np.unique(x)) == {0.0, 1.0}
    np.testing.assert_array_equal(x.sum(axis=1), 1.0)  # one spike per input neuron
    assert np.array_equal(np.bincount(d.y_test), [5, 5, 5, 5])
    # each neuron's spike times cover the window: the manifold is rescaled to [0, 1]
    times = np.concatenate([d.x_train, d.x_test]).argmax(axis=1)  # (N, F)
    assert times.min() == 0 and times.max() == 29


def test_random_manifold_is_smooth_in_its_coordinate():
    rng = np.random.default_rng(0)
    m = datasets.RandomManifold(rng, embedding_dim=5, manifold_dim=1, alpha=2.0)
    x = np.linspace(0, 1, 2001)[:, None]
    f = m(x)
    assert f.min() >= 0.0 and f.max() <= 1.0
    # Lipschitz bound of the series: |g'| <= 2π Σ_k k^(1-α) ≈ 2π · H_K, rescaled by the span
    bound = 2 * np.pi * np.sum(m.weights * np.arange(1, m.weights.size + 1)) / m.span.min()
    assert np.abs(np.diff(f, axis=0)).max() <= bound / 2000


def test_bad_arguments_raise_naming_the_field():
    with pytest.raises(ValueError, match="n_units"):
        datasets.load_randman(n_units=0)
    with pytest.raises(ValueError, match="test_fraction"):
        datasets.load_digits(test_fraction=1.5)
    with pytest.raises(ValueError, match="task"):
        datasets.load_task("mnist")
    with pytest.raises(ValueError, match="limit"):
        datasets.load_digits().limit(0)
