"""SHD/SSC loading, checked on small HDF5 files written in the official layout
against a per-event NumPy reference."""

import math

import h5py
import numpy as np
import pytest

from spark_somas import events
from spark_somas.datasets import DataError, Dataset


def write_events_file(path, times, units, labels, *, times_dtype=np.float16, extra=True):
    """An HDF5 file in the SHD/SSC layout: vlen ``spikes/times`` (s) and
    ``spikes/units``, ``labels``, and (optionally) an ``extra/`` group."""
    with h5py.File(path, "w") as f:
        spikes = f.create_group("spikes")
        t = spikes.create_dataset("times", (len(times),), dtype=h5py.vlen_dtype(times_dtype))
        u = spikes.create_dataset("units", (len(units),), dtype=h5py.vlen_dtype(np.uint16))
        for i, (ti, ui) in enumerate(zip(times, units)):
            t[i] = np.asarray(ti, times_dtype)
            u[i] = np.asarray(ui, np.uint16)
        f.create_dataset("labels", data=np.asarray(labels, np.uint8))
        if extra:
            g = f.create_group("extra")
            g.create_dataset("speaker", data=np.arange(len(labels)) % 7)
            g.create_dataset("keys", data=np.array([b"zero", b"one"]))


def make_samples(rng, n, n_classes, *, window_s=1.4, times_dtype=np.float16):
    """n samples with known content: every 10th is empty; the others have
    random events over 0 … 1.2 × the window plus events at t = 0, exactly at
    the window's end, and just before it."""
    times, units = [], []
    for i in range(n):
        if i % 10 == 0:
            times.append(np.zeros(0)), units.append(np.zeros(0, int))
            continue
        k = int(rng.integers(1, 120))
        t = rng.uniform(0.0, 1.2 * window_s, size=k)
        end_below = np.nextafter(np.asarray(window_s, times_dtype), np.asarray(0, times_dtype))
        t = np.concatenate([t, [0.0, window_s, float(end_below)]]).astype(times_dtype)
        u = rng.integers(0, events.N_CHANNELS, size=t.size)
        u[:3] = [0, events.N_CHANNELS - 1, 5]  # a few repeated cells
        t[:3] = t[3]
        times.append(t), units.append(u)
    labels = np.arange(n) % n_classes
    return times, units, labels


def reference_bins(times, units, *, steps, bin_ms, pool=1, binary=False):
    """One event at a time: bin ⌊t·1000/bin_ms⌋ (float64), kept when < steps."""
    width = math.ceil(events.N_CHANNELS / pool)
    out = np.zeros((len(times), steps, width), np.int64)
    for i, (ts, us) in enumerate(zip(times, units)):
        for t, u in zip(ts, us):
            k = math.floor(float(t) * 1000.0 / bin_ms)
            if k < steps:
                out[i, k, int(u) // pool] += 1
    return np.minimum(out, 1) if binary else out


def rows(x, y):
    """The multiset of (sample, label) as sorted bytes: order-free comparison."""
    return sorted(xi.tobytes() + np.int32(yi).tobytes() for xi, yi in zip(x, y))


@pytest.fixture(scope="module")
def shd_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("shd")
    rng = np.random.default_rng(1)
    train = make_samples(rng, 300, 20)
    test = make_samples(rng, 100, 20)
    write_events_file(d / "shd_train.h5", *train)
    write_events_file(d / "shd_test.h5", *test, extra=False)
    return d, train, test


def test_hand_computed_edges():
    # 8 bins of 62.5 ms (values exact in binary): the window is [0, 0.5) s.
    times = [np.array([0.0, 0.0625, 0.0624, 0.4375, 0.49, 0.5, 0.75]), np.array([])]
    units = [np.array([3, 3, 3, 699, 699, 699, 0]), np.array([], int)]
    x = events.bin_events(times, units, steps=8, bin_ms=62.5)
    expected = np.zeros((2, 8, 700), np.float32)
    expected[0, 0, 3] = 2   # t = 0 and t = 62.4 ms
    expected[0, 1, 3] = 1   # t = 62.5 ms: the first instant of bin 1
    expected[0, 7, 699] = 2  # 437.5 ms and 490 ms; 500 ms (the end) and 750 ms are dropped
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, expected)
    pooled = events.bin_events(times, units, steps=8, bin_ms=62.5, pool=300)
    assert pooled.shape == (2, 8, 3)  # ⌈700 / 300⌉: groups 0–299, 300–599, 600–699
    assert pooled[0, 0, 0] == 2 and pooled[0, 7, 2] == 2 and pooled.sum() == 5


@pytest.mark.parametrize("times_dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("steps, bin_ms, pool, binary", [
    (100, 14.0, 1, False),
    (50, 20.0, 3, False),
    (250, 4.0, 7, True),
    (7, 1000.0 / 7.0, 700, False),
])
def test_binning_matches_reference(times_dtype, steps, bin_ms, pool, binary):
    rng = np.random.default_rng(3)
    window_s = steps * bin_ms / 1000.0
    times, units, _ = make_samples(rng, 200, 20, window_s=window_s, times_dtype=times_dtype)
    x = events.bin_events(times, units, steps=steps, bin_ms=bin_ms, pool=pool, binary=binary)
    ref = reference_bins(times, units, steps=steps, bin_ms=bin_ms, pool=pool, binary=binary)
    assert x.shape == (200, steps, math.ceil(700 / pool))
    np.testing.assert_array_equal(x, ref)
    assert not x[::10].any()  # the empty samples
    assert x.max() > 1 or binary  # repeated cells count


def test_chunked_binning_is_the_same(monkeypatch):
    rng = np.random.default_rng(4)
    times, units, _ = make_samples(rng, 57, 20)
    whole = events.bin_events(times, units, steps=100, bin_ms=14.0)
    monkeypatch.setattr(events, "_CHUNK_CELLS", 100 * 700 * 4)  # 4 samples a chunk
    np.testing.assert_array_equal(events.bin_events(times, units, steps=100, bin_ms=14.0), whole)


def test_integer_dtype_saturates():
    times = [np.zeros(300)]
    units = [np.full(300, 9)]
    assert events.bin_events(times, units, steps=2, bin_ms=1.0, dtype=np.uint8)[0, 0, 9] == 255
    assert events.bin_events(times, units, steps=2, bin_ms=1.0, dtype=np.int32)[0, 0, 9] == 300
    assert events.bin_events(times, units, steps=2, bin_ms=1.0, binary=True)[0, 0, 9] == 1


@pytest.mark.parametrize("times, units, match", [
    ([np.array([0.1, -0.001])], [np.array([1, 2])], "sample 0 has an event at t = -0.001"),
    ([np.array([np.nan])], [np.array([1])], "finite"),
    ([np.array([], float), np.array([0.1])], [np.array([], int), np.array([700])],
     "sample 1 .*unit 700"),
    ([np.array([0.1, 0.2])], [np.array([1])], "sample 0 has 2 times but 1 units"),
    ([np.array([0.1])], [], "1 time arrays but 0 unit arrays"),
])
def test_bad_events_raise(times, units, match):
    with pytest.raises(ValueError, match=match):
        events.bin_events(times, units, steps=10, bin_ms=10.0)


@pytest.mark.parametrize("kwargs, name", [
    (dict(steps=0), "steps"), (dict(steps=2.0), "steps"), (dict(bin_ms=0.0), "bin_ms"),
    (dict(bin_ms=float("inf")), "bin_ms"), (dict(pool=0), "pool"),
])
def test_bad_binning_raises(kwargs, name):
    args = dict(steps=10, bin_ms=10.0) | kwargs
    with pytest.raises(ValueError, match=name):
        events.bin_events([np.array([0.1])], [np.array([1])], **args)


def test_read_events_round_trips(shd_dir):
    d, (times, units, labels), _ = shd_dir
    t, u, y = events.read_events(d / "shd_train.h5")
    assert len(t) == len(u) == 300 and y.dtype == np.int32
    np.testing.assert_array_equal(y, labels)
    for a, b in zip(t, times):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(u, units):
        np.testing.assert_array_equal(a, b)
    t, u, y = events.read_events(d / "shd_train.h5", limit=25)
    assert len(t) == len(u) == len(y) == 25


def test_load_shd_test_holdout(shd_dir):
    d, train, test = shd_dir
    data = events.load_shd(d, steps=100, bin_ms=14.0, pool=2, seed=5)
    assert isinstance(data, Dataset)
    assert (data.name, data.n_classes, data.encoding) == ("shd", 20, "spikes")
    assert data.x_train.shape == (300, 100, 350) and data.x_test.shape == (100, 100, 350)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    for split, x, y, (times, units, labels) in (("train", data.x_train, data.y_train, train),
                                                ("test", data.x_test, data.y_test, test)):
        ref = reference_bins(times, units, steps=100, bin_ms=14.0, pool=2).astype(np.float32)
        assert rows(x, y) == rows(ref, labels), split
    again = events.load_shd(d, steps=100, bin_ms=14.0, pool=2, seed=5)
    np.testing.assert_array_equal(again.x_train, data.x_train)
    np.testing.assert_array_equal(again.y_test, data.y_test)
    other = events.load_shd(d, steps=100, bin_ms=14.0, pool=2, seed=6)
    assert not np.array_equal(other.y_train, data.y_train)


def test_load_shd_validation_holdout(shd_dir, tmp_path):
    d, (times, units, labels), _ = shd_dir
    only_train = tmp_path / "only_train"
    only_train.mkdir()
    (only_train / "shd_train.h5").write_bytes((d / "shd_train.h5").read_bytes())
    data = events.load_shd(only_train, holdout="validation", validation_fraction=0.2, seed=2,
                           steps=20, bin_ms=50.0)
    assert len(data.y_test) == 20 * round(0.2 * 15)  # 15 samples per class, stratified
    assert np.array_equal(np.bincount(data.y_test, minlength=20), np.full(20, 3))
    ref = reference_bins(times, units, steps=20, bin_ms=50.0).astype(np.float32)
    assert rows(np.concatenate([data.x_train, data.x_test]),
                np.concatenate([data.y_train, data.y_test])) == rows(ref, labels)


def test_limit_reads_first_samples(shd_dir):
    d, (times, units, labels), _ = shd_dir
    data = events.load_shd(d, limit=30, steps=10, bin_ms=140.0)
    assert len(data.y_train) == 30 and len(data.y_test) == 30
    ref = reference_bins(times[:30], units[:30], steps=10, bin_ms=140.0).astype(np.float32)
    assert rows(data.x_train, data.y_train) == rows(ref, labels[:30])


def test_load_ssc_uses_its_validation_file(tmp_path):
    rng = np.random.default_rng(7)
    parts = {name: make_samples(rng, n, 35) for name, n in
             (("ssc_train.h5", 70), ("ssc_valid.h5", 35), ("ssc_test.h5", 40))}
    for name, part in parts.items():
        write_events_file(tmp_path / name, *part, times_dtype=np.float32)
    for holdout, file in (("validation", "ssc_valid.h5"), ("test", "ssc_test.h5")):
        data = events.load_ssc(tmp_path, holdout=holdout, pool=10, dtype=np.uint8)
        assert (data.name, data.n_classes) == ("ssc", 35)
        assert data.x_train.shape == (70, 100, 70) and data.x_train.dtype == np.uint8
        times, units, labels = parts[file]
        ref = reference_bins(times, units, steps=100, bin_ms=10.0, pool=10).astype(np.uint8)
        assert rows(data.x_test, data.y_test) == rows(ref, labels)


def test_missing_files_say_what_and_where(shd_dir, tmp_path):
    with pytest.raises(events.EventDatasetMissing) as err:
        events.load_shd(tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert "shd_train.h5" in message and str(tmp_path) in message
    assert "Heidelberg SHD/SSC download page" in message and "gunzip" in message
    assert isinstance(err.value, FileNotFoundError)

    d, _, _ = shd_dir
    (tmp_path / "shd_train.h5").write_bytes((d / "shd_train.h5").read_bytes())
    with pytest.raises(events.EventDatasetMissing, match=r"shd_test\.h5 is missing in"):
        events.load_shd(tmp_path)
    (tmp_path / "shd_test.h5.gz").write_bytes(b"")
    with pytest.raises(events.EventDatasetMissing, match=r"shd_test\.h5\.gz is there: unpack it"):
        events.load_shd(tmp_path)
    with pytest.raises(events.EventDatasetMissing, match=r"ssc_train\.h5 is missing"):
        events.load_ssc(tmp_path)


def test_bad_files_and_labels_raise(tmp_path):
    with h5py.File(tmp_path / "shd_train.h5", "w") as f:
        f.create_dataset("labels", data=np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="'spikes/times' is missing"):
        events.read_events(tmp_path / "shd_train.h5")
    rng = np.random.default_rng(0)
    times, units, _ = make_samples(rng, 4, 20)
    write_events_file(tmp_path / "shd_train.h5", times, units, [0, 1, 20, 3])
    write_events_file(tmp_path / "shd_test.h5", times, units, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="labels span 0…20"):
        events.load_shd(tmp_path)
    with pytest.raises(ValueError, match="holdout"):
        events.load_shd(tmp_path, holdout="train")


def write_raw(path, *, times=None, units=None, labels=None):
    """An SHD-like file whose datasets hold exactly the arrays given (any dtype)."""
    with h5py.File(path, "w") as f:
        for key, value in (("spikes/times", times), ("spikes/units", units),
                           ("labels", labels)):
            if isinstance(value, list):
                kind = h5py.vlen_dtype(np.asarray(value[0]).dtype)
                d = f.create_dataset(key, (len(value),), dtype=kind)
                for i, v in enumerate(value):
                    d[i] = v
            elif value is not None:
                f.create_dataset(key, data=value)


GOOD_TIMES = [np.array([0.01, 0.02]), np.array([0.03])]
GOOD_UNITS = [np.array([1, 2], np.uint16), np.array([3], np.uint16)]


@pytest.mark.parametrize("labels, message", [
    (np.array([1, 2**32 + 3], np.int64), r"labels\[1\] = 4294967299 violates the rule: a class"),
    (np.array([1, 2**40], np.uint64), r"labels\[1\] = 1099511627776 violates"),
    (np.array([1.0, 19.9]), r"labels\[1\] = .*19\.9.* violates the rule: an integer"),
    (np.array([np.nan, 1.0]), r"labels\[0\] = .*nan.* violates the rule: an integer"),
    (np.array([-1, 2], np.int8), r"labels\[0\] = -1 violates the rule: a class"),
])
def test_labels_are_checked_before_any_cast(tmp_path, labels, message):
    write_raw(tmp_path / "f.h5", times=GOOD_TIMES, units=GOOD_UNITS, labels=labels)
    with pytest.raises(DataError, match=message):
        events.read_events(tmp_path / "f.h5")


def test_integral_float_labels_and_units_are_read_exactly(tmp_path):
    units = [np.array([1.0, 699.0]), np.array([3.0])]
    write_raw(tmp_path / "f.h5", times=GOOD_TIMES, units=units, labels=np.array([4.0, 19.0]))
    t, u, y = events.read_events(tmp_path / "f.h5")
    np.testing.assert_array_equal(y, [4, 19])
    x = events.bin_events(t, u, steps=5, bin_ms=10.0)
    assert x[0, 1, 1] == 1 and x[0, 2, 699] == 1 and x[1, 3, 3] == 1 and x.sum() == 3


@pytest.mark.parametrize("units, message", [
    ([np.array([1.0, 699.9])], "sample 0 has an event on unit .*699.9.*: units must be integers"),
    ([np.array([np.nan])], "sample 0 has an event on unit .*nan.*: units must be integers"),
    ([np.array([2**40 + 5], np.int64)], "unit 1099511627781"),
    ([np.array([2**63 + 5], np.uint64)], "unit 9223372036854775813"),
])
def test_units_are_checked_before_any_cast(units, message):
    with pytest.raises(DataError, match=message):
        events.bin_events([np.array([0.01] * len(units[0]))], units, steps=5, bin_ms=10.0)


def test_a_file_that_is_not_hdf5_or_not_in_the_layout_is_a_data_error(tmp_path):
    (tmp_path / "shd_train.h5").write_text("not hdf5")
    with pytest.raises(DataError, match="is not a readable HDF5 file"):
        events.read_events(tmp_path / "shd_train.h5")
    write_raw(tmp_path / "scalar.h5", times=np.float64(0.5), units=GOOD_UNITS,
              labels=np.array([1, 2]))
    with pytest.raises(DataError, match=r"'spikes/times' is a dataset of shape \(\)"):
        events.read_events(tmp_path / "scalar.h5")
