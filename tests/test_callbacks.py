"""fit's hooks: the Callback protocol, the default callbacks and the ones a user adds."""

import json

import chex
import numpy as np
import optax
import pytest
from flax import nnx

from spark_somas import checkpointing, training as tr
from spark_somas.callbacks import (Callback, Checkpoint, EarlyStopping, EpochEnd, Logger,
                                   ProgressBar, StopOnRequest, default_callbacks,
                                   resolve_callbacks)
from spark_somas.datasets import Dataset

FEATURES, CLASSES, N, BATCH = 6, 3, 24, 8
ENCODER = tr.Encoder("current", 6)
TX = optax.adam(1e-2)  # one object: equal graph definitions reuse the compiled step


def data() -> Dataset:
    rng = np.random.default_rng(0)
    y = np.arange(N, dtype=np.int32) % CLASSES
    x = 0.2 * rng.uniform(size=(N, FEATURES)).astype(np.float32)
    x[np.arange(N), 2 * y] = 1.0
    return Dataset("tiny", x, y, x.copy(), y.copy(), n_classes=CLASSES, encoding="static")


def net(seed=0) -> tr.SpikingNetwork:
    return tr.SpikingNetwork(FEATURES, 8, CLASSES, soma="expif", input_gain=2.0,
                             rngs=nnx.Rngs(seed))


def train(epochs=3, **kwargs):
    model = net()
    history = tr.fit(model, tr.make_optimizer(model, tx=TX), data(), encoder=ENCODER,
                     epochs=epochs, batch_size=BATCH, **kwargs)
    return model, history


class Recorder(Callback):
    def __init__(self, stop_after=None):
        self.calls, self.stop_after = [], stop_after

    def on_fit_start(self, fit):
        self.calls.append(("start", fit.start_epoch, fit.epochs, fit.steps_per_epoch))

    def on_batch_end(self, fit, epoch, index, metrics):
        self.calls.append(("batch", epoch, index, float(metrics["loss"])))

    def on_epoch_end(self, fit, epoch, history):
        self.calls.append(("epoch", epoch, history["epoch"][-1], history is fit.history))
        return epoch == self.stop_after

    def on_fit_end(self, fit):
        self.calls.append(("end",))


def test_a_user_callback_sees_every_batch_and_epoch_in_order():
    recorder = Recorder()
    _, history = train(callbacks=[recorder], epoch_on_device=False)
    steps = N // BATCH
    expected = [("start", 0, 3, steps)]
    for epoch in range(3):
        expected += [("batch", epoch, i) for i in range(steps)] + [("epoch", epoch, epoch + 1, True)]
    expected.append(("end",))
    assert [c[:3] if c[0] == "batch" else c for c in recorder.calls] == expected
    assert history["epoch"] == [1, 2, 3]
    # the batch losses it saw are the ones the history averages
    losses = [c[3] for c in recorder.calls if c[0] == "batch"]
    assert history["train_loss"] == pytest.approx(
        [np.mean(losses[e * steps:(e + 1) * steps]) for e in range(3)], rel=1e-6)


def test_an_epoch_on_the_device_calls_no_batch_hook_but_every_epoch_hook():
    recorder = Recorder()
    train(epochs=2, callbacks=[recorder], epoch_on_device=True)
    assert [c[0] for c in recorder.calls] == ["start", "epoch", "epoch", "end"]


def test_the_defaults_follow_the_keywords_and_a_list_replaces_them(capsys):
    assert [type(c) for c in default_callbacks()] == [ProgressBar]
    hook = lambda fit, epoch, history: None  # noqa: E731
    assert [type(c) for c in resolve_callbacks(None, progress=False, on_epoch_end=hook)] == [
        EpochEnd]
    mine = Recorder()
    assert resolve_callbacks([mine], progress=True) == [mine]
    chained = resolve_callbacks([mine], progress=True, on_epoch_end=hook)
    assert chained[0] is mine and isinstance(chained[1], EpochEnd) and chained[1].hook is hook

    train(epochs=1, epoch_on_device=False)  # progress=True by default: a bar on stderr
    assert "step" in capsys.readouterr().err
    train(epochs=1, epoch_on_device=False, callbacks=[Recorder()])  # replaced: no bar
    assert capsys.readouterr().err == ""
    train(epochs=1, epoch_on_device=False, callbacks=[ProgressBar(), Recorder()])  # added to
    assert "step" in capsys.readouterr().err


def test_on_epoch_end_still_runs_beside_a_list_and_the_results_do_not_change():
    seen = []
    model_a, h_a = train(progress=False)
    model_b, h_b = train(callbacks=[Recorder()],
                         on_epoch_end=lambda epoch, model, opt, history: seen.append(epoch))
    assert seen == [0, 1, 2]
    h_a.pop("seconds"), h_b.pop("seconds")
    assert h_a == h_b
    chex.assert_trees_all_equal(nnx.state(model_a, nnx.Param), nnx.state(model_b, nnx.Param))


def test_a_callback_that_returns_true_stops_after_that_epoch_and_every_callback_sees_it():
    first, second = Recorder(stop_after=1), Recorder()
    _, history = train(epochs=10, callbacks=[first, second])
    assert history["epoch"] == [1, 2]
    assert [c for c in second.calls if c[0] == "epoch"][-1][1] == 1
    assert second.calls[-1] == ("end",)


def test_early_stopping_stops_when_the_metric_stops_improving():
    stop = EarlyStopping("epoch", mode="min", patience=2)  # a rising count never "improves"
    _, history = train(epochs=10, callbacks=[stop])
    assert history["epoch"] == [1, 2, 3] and stop.stopped_epoch == 2
    keep_going = EarlyStopping("epoch", mode="max", patience=1)  # improves every epoch
    _, history = train(epochs=4, callbacks=[keep_going])
    assert history["epoch"] == [1, 2, 3, 4] and keep_going.stopped_epoch is None


def test_early_stopping_reads_the_whole_history():
    stop = EarlyStopping("test_accuracy", patience=2, min_delta=0.01)
    assert stop.mode == "max"
    assert stop.epochs_without_improvement([0.5, 0.7, 0.705, 0.6]) == 2
    assert stop.epochs_without_improvement([0.5, float("nan"), 0.8]) == 0
    assert stop.epochs_without_improvement([float("nan")] * 3) == 3
    with pytest.raises(ValueError, match="patience = 0 violates the rule: an int >= 1"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="monitor = 'val_loss' violates the rule: a history key"):
        train(epochs=1, callbacks=[EarlyStopping("val_loss")])


def test_entries_that_are_not_callbacks_are_refused_before_any_step():
    model = net()
    with pytest.raises(TypeError, match=r"violates the rule: Callback instances .*EpochEnd"):
        tr.fit(model, tr.make_optimizer(model, tx=TX), data(), encoder=ENCODER, epochs=1,
               callbacks=[lambda *args: None])


def test_the_checkpoint_callback_writes_what_the_on_epoch_end_keyword_wrote(tmp_path):
    """The same steps, metrics, extra and arrays as a save function passed as
    on_epoch_end (what 'spark-somas train' did), retention included."""
    run = {"name": "tiny"}
    with checkpointing.Checkpointer(tmp_path / "keyword", max_to_keep=2,
                                    best_metric="test_accuracy", best_mode="max",
                                    keep_best=1) as ckpt:
        def save(epoch, model, optimizer, history):
            ckpt.save(epoch + 1, model, optimizer,
                      metrics={k: history[k][-1] for k in ("test_accuracy", "test_loss")},
                      extra={"history": history, "run": run})

        train(epochs=4, on_epoch_end=save, progress=False)
    callback = Checkpoint(tmp_path / "callback", keep_last=2, keep_best=1, extra={"run": run})
    train(epochs=4, callbacks=[callback])
    assert callback.checkpointer is None  # the directory it opened is closed: saves committed

    def listing(name):
        infos = checkpointing.describe(tmp_path / name)
        for info in infos:
            info.extra["history"].pop("seconds")
        return [(i.step, i.metrics, json.dumps(i.extra, sort_keys=True)) for i in infos]

    assert listing("callback") == listing("keyword")
    assert len(listing("callback")) >= 2
    a, b = checkpointing.load(tmp_path / "keyword"), checkpointing.load(tmp_path / "callback")
    chex.assert_trees_all_equal(nnx.state(a), nnx.state(b))
    files = lambda d: sorted(p.relative_to(d).parts[0] for p in d.iterdir())  # noqa: E731
    assert files(tmp_path / "callback") == files(tmp_path / "keyword")


def test_a_checkpointer_given_to_the_callback_stays_open(tmp_path):
    with checkpointing.Checkpointer(tmp_path) as ckpt:
        callback = Checkpoint(ckpt)
        train(epochs=2, callbacks=[callback])
        assert callback.checkpointer is ckpt
        ckpt.wait()
        assert ckpt.all_steps() == [1, 2]
        assert ckpt.metadata()["extra"]["history"]["epoch"] == [1, 2]


def test_a_diverging_loss_raises_before_the_epoch_hooks_and_the_fit_end_hook_still_runs():
    recorder = Recorder()
    model = net()
    tx = optax.sgd(float("inf"))
    with pytest.raises(tr.NonFiniteLossError):
        tr.fit(model, tr.make_optimizer(model, tx=tx, clip_norm=None), data(), encoder=ENCODER,
               epochs=3, batch_size=BATCH, callbacks=[recorder],
               objective=tr.Objective(), stop_on_nonfinite=True)
    kinds = [c[0] for c in recorder.calls]
    assert kinds[0] == "start" and kinds[-1] == "end" and "epoch" not in kinds


class Asked(BaseException):
    """What StopOnRequest raises in these tests."""


class AskAt(Recorder):
    """Sets ``requested`` after the given batch (or the given epoch's end), as
    a signal handler or another thread would, and does nothing else."""

    def __init__(self, requested, batch=None, epoch=None):
        super().__init__()
        self.requested, self.batch, self.epoch = requested, batch, epoch

    def on_batch_end(self, fit, epoch, index, metrics):
        super().on_batch_end(fit, epoch, index, metrics)
        if (epoch, index) == self.batch:
            self.requested.set()

    def on_epoch_end(self, fit, epoch, history):
        super().on_epoch_end(fit, epoch, history)
        if epoch == self.epoch:
            self.requested.set()


@pytest.mark.parametrize("on_device", [False, True])
def test_a_stop_request_ends_fit_at_the_next_safe_point_after_every_hook(on_device):
    """A request during epoch 1 stops after its batch (Python loop) or after
    its end, once every callback before has seen it; the fit-end hooks run;
    one during the last epoch's end lets fit finish."""
    import threading

    requested = threading.Event()
    asker = AskAt(requested, batch=None if on_device else (1, 0), epoch=1 if on_device else None)
    with pytest.raises(Asked):
        train(epochs=3, callbacks=[asker, StopOnRequest(requested, Asked)],
              epoch_on_device=on_device)
    kinds = [c[:2] for c in asker.calls]
    assert kinds[-2:] == ([("epoch", 1), ("end",)] if on_device else [("batch", 1), ("end",)])
    last = threading.Event()
    _, history = train(epochs=2, callbacks=[AskAt(last, epoch=1), StopOnRequest(last, Asked)],
                       epoch_on_device=True)
    assert last.is_set() and history["epoch"] == [1, 2]


@pytest.mark.parametrize("on_device, per_epoch", [(True, 1), (False, 4)])
def test_a_resumed_runs_progress_bar_counts_the_whole_run(on_device, per_epoch):
    from spark_somas.callbacks import FitState

    bar = ProgressBar()
    bar.on_fit_start(FitState(None, None, 30, 26, per_epoch, on_device, {}))
    assert (bar.bar.n, bar.bar.total) == (26 * per_epoch, 30 * per_epoch)
    bar.on_fit_end(None)


# -- one convention: every epoch hook takes (fit, epoch, history)

def test_an_on_epoch_end_function_takes_what_a_callback_takes_and_may_stop_fit():
    calls, recorder = [], Recorder()

    def hook(fit, epoch, history):
        calls.append((fit.model, fit.optimizer, epoch, list(history["epoch"])))
        return epoch == 1  # stop after the second epoch

    model, history = train(epochs=4, callbacks=[recorder], on_epoch_end=hook)
    assert [c[2] for c in calls] == [0, 1]  # epoch: the 0-based index
    assert [c[3][-1] for c in calls] == [1, 2]  # history["epoch"]: epochs done, epoch + 1
    assert all(c[0] is model for c in calls)
    assert history["epoch"] == [1, 2]
    assert [c[1] for c in recorder.calls if c[0] == "epoch"] == [0, 1]  # a callback's epoch


def test_the_older_four_argument_hook_still_runs_with_a_deprecation_warning():
    seen = []

    def old(epoch, model, optimizer, history):
        seen.append((epoch, history["epoch"][-1]))

    with pytest.warns(DeprecationWarning, match=r"f\(fit, epoch, history\)"):
        _, history = train(epochs=2, on_epoch_end=old, progress=False)
    assert seen == [(0, 1), (1, 2)]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        train(epochs=1, callbacks=[Logger(old)])  # the first release's callback: no warning
    assert seen[-1] == (0, 1)



def test_a_checkpoint_saves_and_ranks_the_split_fit_evaluates(tmp_path):
    """fit(eval_split="validation") names its per-epoch metrics validation_*;
    a Checkpoint left at its defaults saves and ranks those."""
    _, history = train(epochs=2, eval_split="validation",
                       callbacks=[Checkpoint(tmp_path, keep_last=1, keep_best=1)])
    assert "test_accuracy" not in history and len(history["validation_accuracy"]) == 2
    infos = checkpointing.describe(tmp_path)
    assert all(set(info.metrics) == {"validation_accuracy", "validation_loss"} for info in infos)
    kept = {info.step for info in infos}
    assert 2 in kept and len(kept) <= 2  # the newest, and the best by validation accuracy
    assert max(info.metrics["validation_accuracy"] for info in infos) == max(
        history["validation_accuracy"])


def test_fit_refuses_an_unknown_eval_split():
    with pytest.raises(ValueError, match=r"eval_split = 'dev' violates the rule: one of"):
        train(epochs=1, eval_split="dev")
