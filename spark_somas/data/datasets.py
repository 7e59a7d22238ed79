"""Classification data with no downloads: sklearn's digits and Randman
(the SHD/SSC files and the cue task are in :mod:`spark_somas.data.events` and
:mod:`spark_somas.data.tasks`; :data:`TASKS` names them all).

* :func:`load_digits` — the 1797 8×8 handwritten digits bundled with
  scikit-learn (UCI optdigits test set), pixels scaled to [0, 1], split into
  train and test with a fixed, seeded, class-stratified shuffle.
* :func:`load_randman` — the random-manifold spike-timing task of Zenke &
  Vogels (2021), "The remarkable robustness of surrogate gradient learning
  for instilling complex function in spiking neural networks", Neural
  Comput. 33:899. Each class is a random smooth D-dimensional manifold
  embedded in the F-dimensional space of input neurons; a sample is a point
  on its class's manifold, and its coordinates are the spike times of the F
  input neurons (one spike each). Classes differ only in the joint timing.

Both return a :class:`Dataset`; its arrays are NumPy (the host side of a
training loop), float32 inputs and int32 labels.
"""

from __future__ import annotations

import math

import numpy as np

from spark_somas.data.base import DataError, Dataset, check_fraction, stratified_split
from spark_somas.data.events import load_shd, load_ssc
from spark_somas.data.tasks import load_evidence_accumulation
from spark_somas.errors import RuleError, require

__all__ = ["DataError", "Dataset", "load_digits", "load_randman", "RandomManifold", "TASKS", "load_task"]


def load_digits(*, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's bundled 8×8 digits, 10 classes, 64 features in [0, 1].

    The split is stratified by class and a pure function of ``seed`` (default
    0, so every training run is tested on the same 360 images); pixel
    intensities 0…16 are divided by 16.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    check_fraction(test_fraction)
    bunch = sk_load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int32)
    train, test = stratified_split(y, test_fraction, np.random.default_rng(seed))
    return Dataset("digits", x[train], y[train], x[test], y[test], n_classes=10, encoding="static")


class RandomManifold:
    """One smooth random manifold: a map f: [0, 1]^D → [0, 1]^F.

    Following Zenke & Vogels (2021), each embedding coordinate is a random
    Fourier series with a power-law spectrum,

    .. math::

        g_i(x) = \\sum_{d=1}^{D} \\sum_{k=1}^{K} k^{-α}\\, A_{idk}
                 \\sin\\big(2π (k\\, B_{idk}\\, x_d + C_{idk})\\big),
        \\qquad A, B, C \\sim U(0, 1),

    so a larger α gives a smoother manifold; the series is cut at the first
    k whose weight k^{-α} falls below ``precision``. f rescales every g_i to
    [0, 1] with its minimum and maximum over a reference sample of the
    manifold (4096 points drawn with the same generator), so each coordinate
    spans the whole range.
    """

    def __init__(self, rng: np.random.Generator, *, embedding_dim: int, manifold_dim: int,
                 alpha: float, precision: float = 1e-3, reference_points: int = 4096):
        self.manifold_dim = manifold_dim
        n_terms = max(1, math.ceil(precision ** (-1.0 / alpha)))
        shape = (embedding_dim, manifold_dim, n_terms)
        self.weights = np.arange(1, n_terms + 1, dtype=np.float64) ** (-alpha)
        self.a, self.b, self.c = (rng.uniform(size=shape) for _ in range(3))
        ref = self.raw(rng.uniform(size=(reference_points, manifold_dim)))
        self.low, self.span = ref.min(0), np.maximum(ref.max(0) - ref.min(0), 1e-12)

    def raw(self, x: np.ndarray) -> np.ndarray:
        """g(x) for points ``x`` of shape (N, D); returns (N, F)."""
        k = np.arange(1, self.weights.size + 1)
        phase = 2.0 * np.pi * (k * self.b * x[:, None, :, None] + self.c)  # (N, F, D, K)
        return np.einsum("nfdk,fdk,k->nf", np.sin(phase), self.a, self.weights)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """f(x) in [0, 1] (points beyond the reference range are clipped)."""
        return np.clip((self.raw(x) - self.low) / self.span, 0.0, 1.0)


def load_randman(
    *,
    seed: int = 0,
    n_classes: int = 10,
    n_units: int = 20,
    n_steps: int = 50,
    manifold_dim: int = 1,
    alpha: float = 2.0,
    samples_per_class: int = 250,
    test_fraction: float = 0.2,
) -> Dataset:
    """Randman (Zenke & Vogels 2021): spike-timing classification from a seed.

    Every class c gets its own :class:`RandomManifold` f_c : [0,1]^D → [0,1]^F
    (F = ``n_units`` input neurons, D = ``manifold_dim``, smoothness α =
    ``alpha``). A sample of class c draws x ~ U([0,1]^D); input neuron i
    fires exactly one spike, at time step ⌊f_c,i(x) · n_steps⌋ (the last
    step for f = 1). Inputs come as ``(N, n_steps, n_units)`` 0/1 arrays.

    Everything — the manifolds, the points and the stratified split — is a
    pure function of ``seed``. ``draw_train(epoch, n)`` draws n new training
    samples on the same manifolds, a pure function of (seed, epoch).
    """
    for name, value in (("n_classes", n_classes), ("n_units", n_units), ("n_steps", n_steps),
                        ("manifold_dim", manifold_dim), ("samples_per_class", samples_per_class)):
        require(isinstance(value, int) and value > 0, name, value, "a positive int",
                error=RuleError)
    require(alpha > 0 and math.isfinite(alpha), "alpha", alpha, "alpha > 0 and finite",
            error=RuleError)
    check_fraction(test_fraction)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n_classes + 1)]
    manifolds, times, labels = [], [], []
    for c in range(n_classes):
        manifolds.append(RandomManifold(rngs[c], embedding_dim=n_units,
                                        manifold_dim=manifold_dim, alpha=alpha))
        times.append(manifolds[c](rngs[c].uniform(size=(samples_per_class, manifold_dim))))
        labels.append(np.full(samples_per_class, c, np.int32))

    def spikes(t: np.ndarray) -> np.ndarray:
        step = np.minimum((t * n_steps).astype(np.int64), n_steps - 1)  # (N, F)
        return (step[:, None, :] == np.arange(n_steps)[None, :, None]).astype(np.float32)

    def draw_train(epoch: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        # New points on the same manifolds, classes balanced, from a stream
        # of (seed, epoch) that the manifolds and the split never use.
        rng = np.random.default_rng([seed, epoch, 1])
        y = rng.permutation(np.arange(n) % n_classes).astype(np.int32)
        t = np.empty((n, n_units))
        for c in range(n_classes):
            t[y == c] = manifolds[c](rng.uniform(size=(int(np.sum(y == c)), manifold_dim)))
        return spikes(t), y

    x, y = spikes(np.concatenate(times)), np.concatenate(labels)
    train, test = stratified_split(y, test_fraction, rngs[n_classes])
    return Dataset("randman", x[train], y[train], x[test], y[test], n_classes=n_classes,
                   encoding="spikes", draw_train=draw_train)


#: Task name -> loader: the bundled digits, Randman, the SHD and SSC files
#: (:mod:`spark_somas.data.events`, from a ``data_dir``) and the evidence
#: accumulation cue task (:mod:`spark_somas.data.tasks`, generated).
TASKS = {"digits": load_digits, "randman": load_randman, "shd": load_shd, "ssc": load_ssc,
         "cues": load_evidence_accumulation}


def load_task(name: str, **kwargs) -> Dataset:
    """``TASKS[name](**kwargs)``; unknown names raise ValueError listing the choices."""
    require(name in TASKS, "task", name, f"one of {sorted(TASKS)}", error=RuleError)
    return TASKS[name](**kwargs)
