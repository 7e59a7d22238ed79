"""Loggers for fit's on_epoch_end: JSON lines read back with json, TensorBoard
event files read back with TensorBoard's own EventAccumulator."""

import json
import sys
import time
import types

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from tensorboard.backend.event_processing import event_accumulator

import spark_somas as ss
from spark_somas import loggers
from spark_somas import training as tr
from spark_somas.datasets import Dataset


def read_events(logdir):
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={
        event_accumulator.SCALARS: 0, event_accumulator.HISTOGRAMS: 0})
    acc.Reload()
    return acc


def scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def history_of(n):
    """A fit-style history of n epochs with known values."""
    return {
        "epoch": list(range(1, n + 1)),
        "train_loss": [np.float32(2.0 / e) for e in range(1, n + 1)],
        "train_accuracy": [0.25 * e for e in range(1, n + 1)],
        "test_accuracy": [jnp.asarray(0.125 * e) for e in range(1, n + 1)],
        "test_rate_hz": [float("nan")] * n,
        "seconds": [1.5] * n,
    }


class Params(nnx.Module):
    def __init__(self):
        self.input = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
        self.hidden = ss.AdaptiveExponentialSoma(units=4, dt=1.0, trainable=("threshold",))


def test_last_entry_and_tags():
    h = history_of(3) | {"note": ["a", "b", "c"], "empty": [], "flag": [True] * 3}
    last = loggers.last_entry(h)
    assert last["epoch"] == 3 and last["note"] == "c" and "empty" not in last
    assert type(last["train_loss"]) is float and type(last["test_accuracy"]) is float
    assert loggers.scalar_tags(h) == {
        "train/loss": pytest.approx(2.0 / 3), "train/accuracy": 0.75, "test/accuracy": 0.375,
        "seconds": 1.5,
    }


def test_chain_calls_hooks_in_order():
    calls = []
    hook = loggers.chain(lambda fit, epoch, history: calls.append(("a", epoch)), None,
                         lambda fit, epoch, history: calls.append(("b", epoch)) or True)
    assert hook(None, 4, {}) is True  # one hook asked fit to stop
    assert calls == [("a", 4), ("b", 4)]


def test_chain_runs_a_hook_of_the_older_form_with_a_deprecation_warning():
    calls = []

    def old(epoch, model, optimizer, history):
        calls.append((epoch, model, optimizer))

    fit = types.SimpleNamespace(model="m", optimizer="o")
    with pytest.warns(DeprecationWarning, match=r"\(fit, epoch, history\)"):
        hook = loggers.chain(old)
    assert hook(fit, 2, {}) is False and calls == [(2, "m", "o")]


def test_json_lines_append_across_resumes(tmp_path):
    path = tmp_path / "run" / "history.jsonl"
    h = history_of(3)
    first = loggers.JsonLinesLogger(path, fields={"soma": "adex", "lr": np.float32(0.5)})
    for e in range(2):
        first(None, e, {k: v[:e + 1] for k, v in h.items()})
    loggers.JsonLinesLogger(path, fields={"soma": "adex", "lr": 0.5})(None, 2, h)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    for e, line in enumerate(lines):
        assert line["soma"] == "adex" and line["lr"] == 0.5
        assert line["train_loss"] == float(h["train_loss"][e])
        assert line["test_accuracy"] == 0.125 * (e + 1)
        assert np.isnan(line["test_rate_hz"])
    with pytest.raises(TypeError):
        loggers.JsonLinesLogger(path, fields={"bad": object()})


def test_tensorboard_scalars_and_histograms(tmp_path):
    model = Params()
    h = history_of(3)
    with loggers.TensorBoardLogger(tmp_path, histograms=True) as tb:
        for e in range(3):
            tb(types.SimpleNamespace(model=model), e, {k: v[:e + 1] for k, v in h.items()})
    acc = read_events(tmp_path)
    tags = acc.Tags()
    assert set(tags["scalars"]) == {"train/loss", "train/accuracy", "test/accuracy", "seconds"}
    assert scalars(acc, "train/loss") == [(e, np.float32(2.0 / e)) for e in (1, 2, 3)]
    assert scalars(acc, "test/accuracy") == [(e, 0.125 * e) for e in (1, 2, 3)]
    assert set(tags["histograms"]) == {"input/kernel", "input/bias", "hidden/threshold"}
    for tag, value in (("input/kernel", model.input.kernel[...]),
                       ("hidden/threshold", model.hidden.threshold[...])):
        events = acc.Histograms(tag)
        assert [e.step for e in events] == [1, 2, 3]
        hist, values = events[-1].histogram_value, np.asarray(value, np.float64)
        assert hist.num == values.size
        assert hist.min == values.min() and hist.max == values.max()
        assert hist.sum == pytest.approx(values.sum())


def test_tensorboard_resume_purges_later_steps(tmp_path):
    h = history_of(3)
    with loggers.TensorBoardLogger(tmp_path) as tb:
        for e in range(3):
            tb(None, e, {k: v[:e + 1] for k, v in h.items()})
    time.sleep(1.1)  # event file names carry the second they were opened
    resumed = {k: v[:1] for k, v in h.items()}
    with loggers.TensorBoardLogger(tmp_path, purge_step=2) as tb:
        for e in (1, 2):
            resumed = {k: v + [v[-1]] for k, v in resumed.items()}
            resumed["epoch"][-1] = e + 1
            resumed["train_accuracy"][-1] = 0.01 * (e + 1)
            tb(None, e, resumed)
    assert scalars(read_events(tmp_path), "train/accuracy") == [
        (1, 0.25), (2, np.float32(0.02)), (3, np.float32(0.03))]


def test_tensorboard_needs_its_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match=r'pip install "spark_somas\[tensorboard\]"'):
        loggers.TensorBoardLogger(tmp_path)


def test_fit_writes_what_it_returns(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(24, dtype=np.int32) % 3
    x = 0.2 * rng.uniform(size=(24, 6)).astype(np.float32)
    x[np.arange(24), 2 * y] = 1.0
    data = Dataset("tiny", x, y, x[:12], y[:12], n_classes=3, encoding="static")
    model = tr.SpikingNetwork(6, 8, 3, input_gain=2.0, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    jsonl = loggers.JsonLinesLogger(tmp_path / "h.jsonl")
    with loggers.TensorBoardLogger(tmp_path / "tb") as tb:
        history = tr.fit(model, optimizer, data, encoder=tr.Encoder("current", 8), epochs=2,
                         batch_size=12, progress=False, on_epoch_end=loggers.chain(tb, jsonl))
    lines = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == history["epoch"] == [1, 2]
    acc = read_events(tmp_path / "tb")
    for key, values in history.items():
        assert [line[key] for line in lines] == values
        if key != "epoch":
            split, _, metric = key.partition("_")
            tag = f"{split}/{metric}" if split in ("train", "test") else key
            assert scalars(acc, tag) == [(e, np.float32(v)) for e, v in zip((1, 2), values)]
