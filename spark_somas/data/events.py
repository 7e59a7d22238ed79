"""Event-based spike datasets: the Spiking Heidelberg Digits (SHD) and the
Spiking Speech Commands (SSC), read offline from their HDF5 files.

Cramer, Stradmann, Schemmel & Zenke (2022), "The Heidelberg Spiking Data
Sets for the Systematic Evaluation of Spiking Neural Networks", IEEE TNNLS
33:2744. Spoken words were passed through a model of the inner ear; each
sample is the spike train of 700 auditory channels.

**Files.** One HDF5 file per partition, read from a directory the caller
names; nothing is downloaded:

=====  ========  =======================================================
set    classes   files
=====  ========  =======================================================
SHD    20        ``shd_train.h5``, ``shd_test.h5``
SSC    35        ``ssc_train.h5``, ``ssc_valid.h5``, ``ssc_test.h5``
=====  ========  =======================================================

They are distributed gzipped on the Heidelberg SHD/SSC download page
(compneuro.net); unpack them (``gunzip *.h5.gz``) into one directory.

**Layout** of every file (the group ``extra/`` — speakers, keys, meta
information — is optional and not read)::

    spikes/times   (N,) variable-length float arrays: event times in seconds
    spikes/units   (N,) variable-length integer arrays: channel of each event, 0…699
    labels         (N,) integer class of each sample

**Binning.** A sample's events become a ``(steps, channels)`` array of
counts on the half-open window [0, steps · bin_ms) ms. An event at time t
(seconds, taken from the file and evaluated in float64) falls into bin

    k = ⌊ t · 1000 / bin_ms ⌋ ,

so an event at t = 0 is counted in bin 0, one exactly at the window's end
t = steps · bin_ms / 1000 (and every later one) is dropped, and a sample
with no events is all zeros. Channel pooling by ``pool`` sums the adjacent
channels c with the same ⌊c / pool⌋, giving ⌈700 / pool⌉ inputs (the last
group is smaller when ``pool`` does not divide 700). With ``binary=True``
every positive count becomes 1 (a 0/1 spike raster).

The loaders return a :class:`~spark_somas.data.base.Dataset` with encoding
``"spikes"``: ``x`` is ``(N, steps, channels)``, time-major per sample, and
``y`` int32. Mind the memory: at 100 steps × 700 channels the SHD training
file takes 2.3 GB as float32 and SSC's 21 GB; ``pool``, an integer
``dtype`` (``np.uint8``: a quarter; counts saturate at 255) and ``limit``
bound it.
"""

from __future__ import annotations

import inspect
import math
import os
from typing import Sequence

import numpy as np

from spark_somas.models.configs import as_number
from spark_somas.data.base import DataError, Dataset, check_fraction, stratified_split
from spark_somas.errors import RuleError, SparkSomasError, require, rule_message, violation

__all__ = [
    "N_CHANNELS",
    "EVENT_DATASETS",
    "EventDatasetMissing",
    "bin_events",
    "read_events",
    "load_events",
    "load_shd",
    "load_ssc",
    "load_test_file",
]

N_CHANNELS = 700
"""Auditory channels of every SHD/SSC sample."""

EVENT_DATASETS = {
    "shd": {"classes": 20, "train": "shd_train.h5", "validation": None, "test": "shd_test.h5"},
    "ssc": {"classes": 35, "train": "ssc_train.h5", "validation": "ssc_valid.h5",
            "test": "ssc_test.h5"},
}
"""File names and class counts of the Heidelberg spiking data sets."""

_CHUNK_CELLS = 1 << 24  # binning works on this many (sample, step, channel) cells at a time

_SOURCE = "the Heidelberg SHD/SSC download page (compneuro.net)"


class EventDatasetMissing(SparkSomasError, FileNotFoundError):
    """An SHD/SSC file is not in the directory given; the message says which
    file, where it was looked for and where to get it, on one line."""


def _missing_message(path: str) -> str:
    directory, name = os.path.split(os.path.abspath(path))
    if os.path.exists(path + ".gz"):
        return f"{name} is missing in {directory}, but {name}.gz is there: unpack it with gunzip"
    return (f"{name} is missing in {directory}: download {name}.gz from {_SOURCE} "
            f"and unpack it there with gunzip")


def _integral(arr: np.ndarray) -> np.ndarray:
    """Where ``arr`` holds an integer that int64 keeps exactly (any integer
    dtype; a float equal to an integer within ±2^62); :class:`DataError` for
    a dtype that holds no numbers."""
    if arr.dtype.kind == "i":
        return np.ones(arr.shape, bool)
    if arr.dtype.kind == "u":
        return arr <= np.iinfo(np.int64).max
    if arr.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            return np.isfinite(arr) & (np.floor(arr) == arr) & (np.abs(arr) <= 2.0**62)
    raise DataError(violation(f"an array of dtype {arr.dtype}", "integers"))


def _integers(values: np.ndarray, what: str) -> np.ndarray:
    """``values`` as int64 when every one is an integer, checked before any
    cast (a cast would wrap 2^32 + 3 to 3 or truncate 19.9 to 19); else
    :class:`DataError` naming ``what``, the first offending value and its
    index."""
    arr = np.asarray(values)
    ok = _integral(arr)
    if not np.all(ok):
        index = tuple(int(i) for i in np.argwhere(~ok)[0])
        raise DataError(rule_message(f"{what}[{', '.join(map(str, index))}]", arr[index].item(),
                                     "an integer"))
    return arr.astype(np.int64)


def _check_binning(steps: int, bin_ms: float, pool: int, n_channels: int) -> None:
    for name, value in (("steps", steps), ("pool", pool), ("n_channels", n_channels)):
        require(as_number(value, name, integer=True, error=RuleError) > 0, name, value,
                "a positive int", error=RuleError)
    bin_ms = as_number(bin_ms, "bin_ms", error=RuleError)  # NumPy and JAX scalars too
    require(math.isfinite(bin_ms) and bin_ms > 0, "bin_ms", bin_ms, "bin_ms > 0 and finite",
            error=RuleError)


def bin_events(
    times: Sequence[np.ndarray],
    units: Sequence[np.ndarray],
    *,
    steps: int,
    bin_ms: float,
    pool: int = 1,
    n_channels: int = N_CHANNELS,
    binary: bool = False,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Event lists → counts ``(N, steps, ⌈n_channels / pool⌉)``.

    ``times[i]`` (seconds) and ``units[i]`` (channels 0 … n_channels − 1)
    are sample i's events, equal in length. Binning, pooling and
    ``binary`` follow the module's rules. An integer ``dtype`` saturates
    counts at its largest value. Raises ValueError for a negative or
    non-finite time, a unit outside 0 … n_channels − 1, or lengths that differ.
    """
    _check_binning(steps, bin_ms, pool, n_channels)
    if len(times) != len(units):
        raise RuleError(f"{len(times)} time arrays but {len(units)} unit arrays: one each per "
                        f"sample")
    n, width = len(times), -(-n_channels // pool)
    dtype = np.dtype(dtype)
    lengths = np.fromiter((np.size(t) for t in times), np.int64, count=n)
    unit_lengths = np.fromiter((np.size(u) for u in units), np.int64, count=n)
    if not np.array_equal(lengths, unit_lengths):
        i = int(np.flatnonzero(lengths != unit_lengths)[0])
        raise RuleError(f"sample {i} has {lengths[i]} times but {unit_lengths[i]} units")
    out = np.zeros((n, steps, width), dtype)
    cap = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else None
    chunk = max(1, _CHUNK_CELLS // (steps * width))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        out[start:stop] = _bin_chunk(times[start:stop], units[start:stop], lengths[start:stop],
                                     first=start, steps=steps, bin_ms=bin_ms, pool=pool,
                                     n_channels=n_channels, binary=binary, cap=cap)
    return out


def _bin_chunk(times, units, lengths, *, first, steps, bin_ms, pool, n_channels, binary, cap):
    n, width = len(lengths), -(-n_channels // pool)
    sample = np.repeat(np.arange(n, dtype=np.int64), lengths)
    t = np.concatenate([np.ravel(x) for x in times] + [np.empty(0)]).astype(np.float64)
    # Without an int64 filler: uint64 with int64 would be promoted to float64.
    u = np.concatenate([np.ravel(x) for x in units]) if n else np.empty(0, np.int64)
    valid = np.isfinite(t) & (t >= 0)
    if not valid.all():
        bad = int(np.flatnonzero(~valid)[0])
        raise DataError(f"sample {first + sample[bad]} has an event at t = {float(t[bad])!r} s: "
                        f"times must be finite and >= 0")
    with np.errstate(invalid="ignore"):  # checked before the cast: 699.9 is not channel 699
        outside = ~_integral(u) | ~(u >= 0) | ~(u < n_channels)
    if outside.any():
        bad = int(np.flatnonzero(outside)[0])
        raise DataError(f"sample {first + sample[bad]} has an event on unit {u[bad].item()!r}: units "
                        f"must be integers in 0 … {n_channels - 1}")
    u = u.astype(np.int64)
    k = np.floor(t * 1000.0 / bin_ms)
    keep = k < steps
    flat = (sample[keep] * steps + k[keep].astype(np.int64)) * width + u[keep] // pool
    counts = np.bincount(flat, minlength=n * steps * width).reshape(n, steps, width)
    if binary:
        return np.minimum(counts, 1)
    return counts if cap is None else np.minimum(counts, cap)


def read_events(path: str | os.PathLike, *, limit: int | None = None
                ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """The raw events of one SHD/SSC file: ``(times, units, labels)``, one
    array per sample in the first two (seconds; channels), labels int32.

    ``limit`` reads only the first ``limit`` samples. A missing file raises
    :class:`EventDatasetMissing`; a file that is not HDF5, lacks one of the
    three datasets of shape (N,) or holds a label that is not an integer
    raises :class:`~spark_somas.data.base.DataError`, before any cast.
    """
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise EventDatasetMissing(_missing_message(path))
    require(limit is None or isinstance(limit, int) and limit > 0, "limit", limit,
            "a positive int or None", error=RuleError)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path} is not a readable HDF5 file ({err}): not an SHD/SSC file") from None
    with f:
        for key in ("spikes/times", "spikes/units", "labels"):
            if key not in f or not isinstance(f[key], h5py.Dataset) or f[key].ndim != 1:
                found = "missing" if key not in f else (
                    f"a dataset of shape {f[key].shape}" if isinstance(f[key], h5py.Dataset)
                    else "a group")
                raise DataError(violation(f"{path}: {key!r} is {found}, which", "a dataset of "
                                          "shape (N,), one entry per sample (the SHD/SSC layout)"))
        times = list(f["spikes/times"][:limit])
        units = list(f["spikes/units"][:limit])
        labels = _integers(f["labels"][:limit], f"{path}: labels")
    outside = (labels < 0) | (labels > np.iinfo(np.int32).max)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise DataError(rule_message(f"{path}: labels[{i}]", int(labels[i]),
                                     f"a class index, 0 … {np.iinfo(np.int32).max}"))
    labels = labels.astype(np.int32)
    if not len(times) == len(units) == len(labels):
        raise DataError(f"{path}: {len(times)} time arrays, {len(units)} unit arrays and "
                         f"{len(labels)} labels: they must be equal in number")
    return times, units, labels


def load_events(
    path: str | os.PathLike,
    *,
    steps: int = 100,
    bin_ms: float = 14.0,
    pool: int = 1,
    binary: bool = False,
    limit: int | None = None,
    dtype: np.dtype | type = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """One file, binned: ``x`` ``(N, steps, ⌈700 / pool⌉)`` and ``y`` (N,) int32."""
    _check_binning(steps, bin_ms, pool, N_CHANNELS)
    times, units, labels = read_events(path, limit=limit)
    return bin_events(times, units, steps=steps, bin_ms=bin_ms, pool=pool, binary=binary,
                      dtype=dtype), labels


def _load(
    name: str,
    data_dir: str | os.PathLike,
    *,
    steps: int,
    bin_ms: float,
    pool: int,
    binary: bool,
    holdout: str,
    validation_fraction: float,
    seed: int,
    limit: int | None,
    dtype: np.dtype | type,
) -> Dataset:
    spec = EVENT_DATASETS[name]
    require(holdout in ("test", "validation"), "holdout", holdout, "'test' or 'validation'",
            error=RuleError)
    _check_binning(steps, bin_ms, pool, N_CHANNELS)
    carve = holdout == "validation" and spec["validation"] is None
    if carve:
        check_fraction(validation_fraction)
    data_dir = os.fspath(data_dir)
    needed = [spec["train"]] + ([] if carve else [spec[holdout]])
    for file in needed:
        if not os.path.isfile(os.path.join(data_dir, file)):
            raise EventDatasetMissing(_missing_message(os.path.join(data_dir, file)))
    rng = np.random.default_rng(seed)
    times, units, y = read_events(os.path.join(data_dir, spec["train"]), limit=limit)
    if carve:
        train, held = stratified_split(y, validation_fraction, rng)
        parts = [("training", times, units, y, train), (holdout, times, units, y, held)]
    else:
        held_times, held_units, held_y = read_events(os.path.join(data_dir, spec[holdout]),
                                                     limit=limit)
        parts = [("training", times, units, y, rng.permutation(len(y))),
                 (holdout, held_times, held_units, held_y, rng.permutation(len(held_y)))]
    arrays = []
    for split, t, u, labels, order in parts:
        if labels.size and not (labels.min() >= 0 and labels.max() < spec["classes"]):
            raise DataError(f"{name.upper()} {split} labels span {labels.min()}…{labels.max()}: "
                            f"they must lie in 0 … {spec['classes'] - 1}")
        arrays += [bin_events([t[i] for i in order], [u[i] for i in order], steps=steps,
                              bin_ms=bin_ms, pool=pool, binary=binary, dtype=dtype),
                   labels[order]]
    x_train, y_train, x_held, y_held = arrays
    return Dataset(name, x_train, y_train, x_held, y_held, n_classes=spec["classes"],
                   encoding="spikes")


def load_shd(
    data_dir: str | os.PathLike,
    *,
    steps: int = 100,
    bin_ms: float = 14.0,
    pool: int = 1,
    binary: bool = False,
    holdout: str = "test",
    validation_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
    dtype: np.dtype | type = np.float32,
) -> Dataset:
    """The Spiking Heidelberg Digits from ``data_dir``: 20 classes (spoken
    digits 0–9 in English and German), 700 channels binned as the module
    describes (default 100 bins of 14 ms: a 1.4 s window).

    ``holdout="test"`` evaluates on ``shd_test.h5`` (speakers absent from
    the training file); ``holdout="validation"`` leaves the test file
    unread and holds out a class-stratified ``validation_fraction`` of
    ``shd_train.h5`` instead. Either way the order of both splits is a pure
    function of ``seed``. ``limit`` bins only the first ``limit`` samples of
    each file read. A missing file raises :class:`EventDatasetMissing`.
    """
    return _load("shd", data_dir, steps=steps, bin_ms=bin_ms, pool=pool, binary=binary,
                 holdout=holdout, validation_fraction=validation_fraction, seed=seed,
                 limit=limit, dtype=dtype)


def load_ssc(
    data_dir: str | os.PathLike,
    *,
    steps: int = 100,
    bin_ms: float = 10.0,
    pool: int = 1,
    binary: bool = False,
    holdout: str = "test",
    seed: int = 0,
    limit: int | None = None,
    dtype: np.dtype | type = np.float32,
) -> Dataset:
    """The Spiking Speech Commands from ``data_dir``: 35 classes, 700
    channels binned as the module describes (default 100 bins of 10 ms: the
    1 s clips).

    ``holdout`` picks the evaluation file: ``"test"`` (``ssc_test.h5``) or
    ``"validation"`` (``ssc_valid.h5``); the order of both splits is a pure
    function of ``seed``. Mind the memory (see the module).
    """
    return _load("ssc", data_dir, steps=steps, bin_ms=bin_ms, pool=pool, binary=binary,
                 holdout=holdout, validation_fraction=0.1, seed=seed, limit=limit, dtype=dtype)


def load_test_file(name: str, data_dir: str | os.PathLike, **loader_kwargs) -> tuple[
        np.ndarray, np.ndarray]:
    """The test file of ``name`` ("shd" or "ssc") alone, binned as
    ``load_shd`` / ``load_ssc`` with ``loader_kwargs`` bin it (their
    defaults for what is not given; ``holdout``, ``seed`` and
    ``validation_fraction`` do not apply): ``x`` ``(N, steps, channels)``
    and ``y`` (N,) int32, in the file's order. What a run that selects its
    model on a validation split evaluates once, after training, without
    binning the training file again. A missing file raises
    :class:`EventDatasetMissing`; labels outside the classes ``DataError``.
    """
    require(name in EVENT_DATASETS, "name", name, f"one of {sorted(EVENT_DATASETS)}",
            error=RuleError)
    loader = {"shd": load_shd, "ssc": load_ssc}[name]
    bound = inspect.signature(loader).bind(data_dir, **loader_kwargs)
    bound.apply_defaults()
    kw = bound.arguments
    path = os.path.join(os.fspath(data_dir), EVENT_DATASETS[name]["test"])
    if not os.path.isfile(path):
        raise EventDatasetMissing(_missing_message(path))
    x, y = load_events(path, steps=kw["steps"], bin_ms=kw["bin_ms"], pool=kw["pool"],
                       binary=kw["binary"], limit=kw["limit"], dtype=kw["dtype"])
    classes = EVENT_DATASETS[name]["classes"]
    if y.size and not (y.min() >= 0 and y.max() < classes):
        raise DataError(f"{name.upper()} test labels span {y.min()}…{y.max()}: they must lie "
                        f"in 0 … {classes - 1}")
    return x, y
