"""What every dataset of the package is: a :class:`Dataset` (a train/test
split of NumPy arrays), the :class:`DataError` its checks raise, and the two
helpers every loader splits with: :func:`check_fraction` and the seeded,
class-stratified :func:`stratified_split`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from spark_somas.errors import RuleError, require, rule_message, violation

__all__ = ["DataError", "Dataset", "check_fraction", "stratified_split"]


class DataError(RuleError):
    """A dataset breaks a rule a training run needs; names the array, the
    offending value and the rule."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split.

    ``x_*`` is ``(N, F)`` for static data (``encoding = "static"``: an
    encoder turns it into spikes or currents) or ``(N, T, F)`` for spike
    data (``encoding = "spikes"``, 0/1 per time step): samples first, as
    NumPy data usually come; the encoder hands the network each batch
    time-major, ``(T, B, F)``.

    A generated task may also offer ``draw_train(epoch, n) -> (x, y)``: n
    new training samples for epoch ``epoch``, shaped as ``x_train`` and
    ``y_train``, a pure function of the task's seed and the epoch (so a
    resumed run draws what the unbroken one would) and never a test
    sample: ``fit(..., fresh_data=True)`` trains on those.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    encoding: str
    draw_train: Callable[[int, int], tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[-1])

    def limit(self, n: int | None) -> "Dataset":
        """The first ``n`` samples of each split (all when ``n`` is None)."""
        if n is None:
            return self
        require(isinstance(n, int) and n > 0, "limit", n, "a positive int or None",
                error=RuleError)
        return dataclasses.replace(
            self, x_train=self.x_train[:n], y_train=self.y_train[:n],
            x_test=self.x_test[:n], y_test=self.y_test[:n],
        )

    def check(self) -> None:
        """Checks what training relies on, before any step runs.

        Each split is non-empty with as many labels as samples; inputs are
        real and finite, ``(N, F)`` for static data or ``(N, T, F)`` for
        spike data, with the same trailing shape in both splits; labels are
        integers in [0, ``n_classes``).

        Raises:
          DataError: naming the array, the offending value (and its index) and the rule.
        """
        ndim = {"static": 2, "spikes": 3}.get(self.encoding)
        require(ndim is not None, f"{self.name}: encoding", self.encoding,
                "'static' or 'spikes'", error=DataError)
        require(not isinstance(self.n_classes, bool)
                and isinstance(self.n_classes, (int, np.integer)) and self.n_classes >= 1,
                f"{self.name}: n_classes", self.n_classes, "a positive int", error=DataError)
        for split in ("train", "test"):
            x, y = np.asarray(getattr(self, f"x_{split}")), np.asarray(getattr(self, f"y_{split}"))
            where = f"{self.name}: x_{split}"
            if x.ndim != ndim or x.shape[0] == 0:
                raise DataError(violation(
                    f"{where} has shape {x.shape}, which",
                    f"{'(N, F)' if ndim == 2 else '(N, T, F)'} with N >= 1 for {self.encoding} data"))
            if x.shape[1:] != np.shape(self.x_train)[1:]:
                raise DataError(violation(
                    f"{where} has shape {x.shape}, which",
                    f"the trailing shape {np.shape(self.x_train)[1:]} of x_train"))
            if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
                    or x.dtype == bool):
                raise DataError(violation(f"{where} has dtype {x.dtype}, which", "real numbers"))
            bad = ~np.isfinite(x)
            if bad.any():
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                raise DataError(rule_message(f"{where}[{index}]", x[index], "finite inputs (one "
                                             "NaN or inf would make every weight NaN)"))
            where = f"{self.name}: y_{split}"
            if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
                raise DataError(violation(
                    f"{where} has shape {y.shape} and dtype {y.dtype}, which",
                    f"{x.shape[0]} integer labels, one per sample", plural=True))
            bad = (y < 0) | (y >= self.n_classes)
            if bad.any():
                index = int(np.argmax(bad))
                raise DataError(rule_message(f"{where}[{index}]", int(y[index]),
                                             f"0 <= label < n_classes = {self.n_classes}"))

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, "
            f"classes={self.n_classes}, encoding={self.encoding!r})"
        )


def check_fraction(test_fraction: float) -> None:
    """Refuses a held-out fraction outside (0, 1), naming the field."""
    require(0.0 < test_fraction < 1.0, "test_fraction", test_fraction, "0 < test_fraction < 1",
            error=RuleError)


def stratified_split(
    y: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): each class shuffled and cut at ``test_fraction``,
    then both index sets shuffled. A pure function of ``y`` and the rng state."""
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(test_fraction * len(idx)))
        test.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))
