"""The spark-somas command line, in process (fast) and once as a console script."""

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from flax import nnx

import spark_somas as ss
from spark_somas import checkpointing, cli, training

from test_bad_input import unwritable_dir  # noqa: F401  (a fixture)


def test_train_end_to_end_tiny(tmp_path, capsys):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    code = cli.main(["train", "--epochs", "1", "--limit", "48", "--batch-size", "24",
                     "--hidden", "12", "--steps", "10", "--soma", "simplified",
                     "--trainable-neurons", "--checkpoint-dir", str(ckpt), "--out", str(out),
                     "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "final test accuracy" in text and "hidden firing rate" in text
    png = out / "train_digits_simplified.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((out / "train_digits_simplified.json").read_text())
    assert record["history"]["epoch"] == [1]
    assert record["settings"]["steps"] == 10 and record["settings"]["trainable_neurons"] is True
    # the epoch's checkpoint rebuilds the same network from the directory alone
    model = checkpointing.load(ckpt)
    assert isinstance(model, training.SpikingNetwork)
    assert model.spec["hidden"] == 12 and model.spec["soma"] == "SimplifiedAdaptiveExponentialSoma"


def test_simulate_reports_each_soma_and_writes_png(tmp_path, capsys):
    assert cli.main(["simulate", "--duration", "60", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in ("expif", "refractory", "adex", "simplified"):
        (row,) = [l for l in lines if l.split()[:1] == [name]]
        spikes, rate = int(row.split()[2]), float(row.split()[4])
        assert spikes > 0 and rate == pytest.approx(1000 * spikes / 40.0)  # 800 pA for 40 ms
    assert (tmp_path / "simulate.png").stat().st_size > 0


def run(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as stop:  # the parser's usage errors
        return stop.code


@pytest.mark.parametrize("argv, option, rule", [
    (["train", "--soma", "lif"], "--soma", "invalid choice"),
    (["train", "--epochs", "0"], "--epochs", "> 0 and finite"),
    (["train", "--data-option", "manifold_dim"], "--data-option", "KEY=VALUE"),
    (["train", "--lr", "inf"], "--lr", "'inf' violates the rule: > 0 and finite"),
    (["train", "--lr", "nan"], "--lr", "'nan' violates the rule: > 0 and finite"),
    (["simulate", "--duration", "inf"], "--duration", "'inf' violates the rule: > 0 and finite"),
    (["simulate", "--onset", "nan"], "--onset", "'nan' violates the rule: finite"),
    (["simulate", "--current=-inf"], "--current", "'-inf' violates the rule: finite"),
    ([], "COMMAND", "required"),
])
def test_bad_option_values_are_one_line_usage_errors(capsys, argv, option, rule):
    assert run(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1, err
    assert option in err and rule in err and "--help" in err, err


def test_console_script_help():
    script = os.path.join(os.path.dirname(sys.executable), "spark-somas")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "train" in result.stdout and "simulate" in result.stdout


def test_resume_continues_the_checkpointed_run(tmp_path, capsys):
    """2 epochs, then 1 + resume for the 2nd: same history, same weights."""
    common = ["train", "--limit", "48", "--batch-size", "24", "--hidden", "12", "--steps", "10",
              "--no-progress"]
    whole_ckpt, part_ckpt = tmp_path / "whole", tmp_path / "part"
    assert cli.main(common + ["--epochs", "2", "--checkpoint-dir", str(whole_ckpt),
                              "--out", str(tmp_path / "a")]) == 0
    assert cli.main(common + ["--epochs", "2", "--checkpoint-dir", str(part_ckpt),
                              "--out", str(tmp_path / "b")]) == 0
    shutil.rmtree(part_ckpt / "2")  # as if the run had stopped after epoch 1
    capsys.readouterr()
    # a run option may be repeated on resume with its saved value, not changed
    assert cli.main(["train", "--resume", str(part_ckpt), "--hidden", "99", "--no-progress",
                     "--out", str(tmp_path / "c")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and not (tmp_path / "c").exists()
    assert err.count("\n") == 1 and "--hidden 99 violates the rule: a resumed run keeps the " \
        f"settings saved in {part_ckpt} (hidden = 12); only --epochs may change" in err, err
    assert cli.main(["train", "--resume", str(part_ckpt), "--hidden", "12", "--no-progress",
                     "--out", str(tmp_path / "c")]) == 0
    assert "resumed" in capsys.readouterr().out
    whole = json.loads((tmp_path / "a" / "train_digits_adex.json").read_text())["history"]
    resumed = json.loads((tmp_path / "c" / "train_digits_adex.json").read_text())["history"]
    whole.pop("seconds"), resumed.pop("seconds")  # wall time per epoch, the only difference
    assert resumed == whole
    a, b = checkpointing.load(whole_ckpt), checkpointing.load(part_ckpt)
    chex.assert_trees_all_equal(nnx.state(a, nnx.Param), nnx.state(b, nnx.Param))

    assert cli.main(["checkpoints", str(part_ckpt)]) == 0
    listing = capsys.readouterr().out
    assert "test_accuracy" in listing and len([l for l in listing.splitlines() if l.strip()]) >= 3


def test_checkpoints_of_a_missing_directory_is_an_error(tmp_path, capsys):
    assert cli.main(["checkpoints", str(tmp_path / "nowhere")]) == 1
    assert "nowhere" in capsys.readouterr().err


def empty_dir(directory):
    directory.mkdir()
    return directory


def soma_checkpoint(directory):
    """A directory saved through the Python API, not by train."""
    with checkpointing.Checkpointer(directory) as ckpt:
        ckpt.save(1, ss.ExponentialSoma(units=2))
    return directory


TINY = ["--limit", "16", "--hidden", "4", "--steps", "4", "--epochs", "1", "--no-progress"]
FIXTURE_RUN = pathlib.Path(__file__).parent / "fixtures" / "0.1.0" / "run"


def saved_run(directory, **changes):
    """A copy of the CLI run that release 0.1.0 saved, its newest step's run
    settings edited by hand (``changes``; a value of None removes the key)."""
    shutil.copytree(FIXTURE_RUN, directory)
    path = directory / "2" / "metadata" / "metadata"
    meta = json.loads(path.read_text())
    meta["extra"]["run"] = {k: v for k, v in (meta["extra"]["run"] | changes).items()
                            if v is not None}
    path.write_text(json.dumps(meta))
    return directory


def trained_dir(directory):
    """A directory holding a train checkpoint (epoch 1)."""
    shutil.copytree(FIXTURE_RUN, directory)
    shutil.rmtree(directory / "2")
    return directory


def not_hdf5(directory):
    directory.mkdir()
    (directory / "shd_train.h5").write_text("not an HDF5 file")
    (directory / "shd_test.h5").write_text("not an HDF5 file")
    return directory


def without_times(directory):
    import h5py

    directory.mkdir()
    for name in ("shd_train.h5", "shd_test.h5"):
        with h5py.File(directory / name, "w") as f:
            f.create_dataset("labels", data=np.zeros(3, np.uint8))
    return directory


@pytest.mark.parametrize("argv, message", [
    (lambda tmp, ro: ["train", "--resume", str(tmp / "nowhere")], "--resume: .* does not exist"),
    (lambda tmp, ro: ["train", "--resume", str(empty_dir(tmp / "empty"))],
     "--resume: no checkpoints in"),
    (lambda tmp, ro: ["train", "--resume", str(soma_checkpoint(tmp / "api"))],
     "--resume .* violates the rule: a directory written by 'spark-somas train --checkpoint-dir' "
     "\\(its step 1 holds a ExponentialSoma"),
    (lambda tmp, ro: ["train", "--out", str(tmp / "file" / "x")],
     "--out .*file/x violates the rule: a directory this process can create and write"),
    (lambda tmp, ro: ["train", "--checkpoint-dir", str(ro)],
     "--checkpoint-dir .* violates the rule: a directory this process can create and write"),
    (lambda tmp, ro: ["train", "--data-option", "manifold_dim=2"],
     "--data-option violates the rule: a keyword of the digits loader"),
    (lambda tmp, ro: ["simulate", "--duration", "0.01", "--out", str(tmp)],
     "--duration 0.01 violates the rule: from one step of --dt 0.1 ms to 1e\\+06 steps"),
    (lambda tmp, ro: ["simulate", "--out", str(tmp / "file" / "x")],
     "--out .* violates the rule: a directory this process can create and write"),
    (lambda tmp, ro: ["train", "--checkpoint-dir", str(trained_dir(tmp / "old"))],
     r"--checkpoint-dir .*old violates the rule: a new or empty directory \(it holds the "
     r"checkpoints of epochs \[1\]\); continue that run with --resume"),
    (lambda tmp, ro: ["train", "--checkpoint-dir", str(tmp / "run\\a")],
     r"--checkpoint-dir = .*run\\\\a' violates the rule: a path without a backslash"),
    (lambda tmp, ro: ["train", "--resume", str(tmp / "run\\a")],
     r"--resume = .*run\\\\a' violates the rule: a path without a backslash"),
    (lambda tmp, ro: ["train", "--seed", "-1"],
     r"seed = -1 violates the rule: an int in 0 … 2\^32 − 1 \(--seed\)"),
    (lambda tmp, ro: ["train", "--data-seed", "-1"],
     r"data_seed = -1 violates the rule: an int in 0 … 2\^32 − 1 \(--data-seed\)"),
    (lambda tmp, ro: ["train", "--resume", str(saved_run(tmp / "r", future_field=1))],
     r"--resume .*: the run saved there cannot be rebuilt by this version \(run = "
     r"\['future_field'\] violates the rule: only RunConfig fields"),
    (lambda tmp, ro: ["train", "--resume", str(saved_run(tmp / "r", task="mnist"))],
     r"cannot be rebuilt by this version \(task = 'mnist' violates the rule: one of"),
    (lambda tmp, ro: ["train", "--resume", str(saved_run(tmp / "r", hidden=0))],
     r"cannot be rebuilt by this version \(hidden = 0 violates the rule: an int > 0\)"),
    (lambda tmp, ro: ["train", "--resume", str(saved_run(tmp / "r", epochs="6"))],
     r"cannot be rebuilt by this version \(epochs = '6' violates the rule: an int\)"),
    (lambda tmp, ro: ["train", "--task", "shd", "--data-dir", str(not_hdf5(tmp / "d"))],
     r"--data-dir .*/d: .*shd_train.h5 is not a readable HDF5 file"),
    (lambda tmp, ro: ["train", "--task", "shd", "--data-dir", str(without_times(tmp / "d"))],
     r"--data-dir .*/d: .*'spikes/times' is missing"),
    (lambda tmp, ro: ["simulate", "--dt", "1e-7", "--out", str(tmp)],
     r"--dt 1e-07 violates the rule: 1e-06 ≤ dt ≤ 1e\+06 ms"),
    (lambda tmp, ro: ["simulate", "--duration", "1e12", "--out", str(tmp)],
     r"--duration 1e\+12 violates the rule: from one step of --dt 0.1 ms to 1e\+06 steps "
     r"\(asked: 1e\+13\)"),
])
def test_user_errors_at_run_time_are_one_line_before_any_work(
        tmp_path, unwritable_dir, capsys, argv, message):
    (tmp_path / "file").write_text("")
    argv = argv(tmp_path, unwritable_dir)
    assert run(argv + (TINY if argv[0] == "train" else [])) == 1
    out, err = capsys.readouterr()
    assert out == "", out  # nothing loaded, trained or simulated
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"spark-somas {argv[0]}: error: ")
    assert re.search(message, err), err


def test_unwritable_checkpoint_dir_exits_at_once_from_the_console_script(unwritable_dir, tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "spark-somas")
    result = subprocess.run([script, "train", "--checkpoint-dir", str(unwritable_dir), "--out",
                             str(tmp_path), *TINY], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "--checkpoint-dir" in result.stderr, result.stderr
    assert not os.listdir(tmp_path)


@pytest.fixture(scope="module")
def shd_dir(tmp_path_factory):
    """shd_train.h5 and shd_test.h5 in the official layout, 40 + 20 samples."""
    from test_events import make_samples, write_events_file

    d = tmp_path_factory.mktemp("shd")
    rng = np.random.default_rng(0)
    write_events_file(d / "shd_train.h5", *make_samples(rng, 40, 20))
    write_events_file(d / "shd_test.h5", *make_samples(rng, 20, 20))
    return d


def test_train_shd_from_a_data_dir_with_two_recurrent_layers_and_tensorboard(shd_dir, tmp_path,
                                                                            capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, board = tmp_path / "out", tmp_path / "tb"
    assert cli.main(["train", "--task", "shd", "--data-dir", str(shd_dir), "--epochs", "2",
                     "--hidden", "6", "--depth", "2", "--recurrent", "--steps", "12",
                     "--batch-size", "20", "--out", str(out), "--tensorboard", str(board),
                     "--no-validation", "--no-progress"]) == 0
    assert "Dataset('shd', train=(40, 12, 700), test=(20, 12, 700)" in capsys.readouterr().out
    record = json.loads((out / "train_shd_adex.json").read_text())
    assert record["history"]["epoch"] == [1, 2] and record["settings"]["depth"] == 2
    events = EventAccumulator(str(board))
    events.Reload()
    scalars = events.Scalars("test/accuracy")
    assert [e.step for e in scalars] == [1, 2]
    assert [e.value for e in scalars] == pytest.approx(record["history"]["test_accuracy"])


@pytest.fixture(scope="module")
def shd_four_classes(tmp_path_factory):
    """shd_train.h5 of 60 samples (15 per class: a tenth of each class is 2)
    and shd_test.h5 of 20, 4 classes, the labels of each file known."""
    from test_events import make_samples, write_events_file

    d = tmp_path_factory.mktemp("shd4")
    rng = np.random.default_rng(1)
    train, test = make_samples(rng, 60, 4), make_samples(rng, 20, 4)
    write_events_file(d / "shd_train.h5", *train)
    write_events_file(d / "shd_test.h5", *test)
    return d


def test_shd_selects_on_a_validation_split_and_reads_the_test_file_once(shd_four_classes,
                                                                        tmp_path, capsys):
    """By default a file task evaluates each epoch, and ranks the kept
    checkpoints, on a class-stratified tenth of the training file; the test
    file is evaluated once, after training, and the report names each split."""
    from spark_somas.data.events import load_shd
    from spark_somas.training import runs
    from spark_somas.training.loop import evaluate

    run = runs.RunConfig(task="shd", data_dir=str(shd_four_classes), epochs=2, hidden=6,
                         steps=12, batch_size=13)
    assert run.validation is True and "--validation" not in run.command()
    result = runs.train(run, str(tmp_path / "out"), checkpoint_dir=str(tmp_path / "ckpt"),
                        progress=False)
    assert len(result.data.x_test) == 8 and len(result.data.x_train) == 52  # 2 + 13 per class
    assert sorted(np.bincount(result.data.y_test)) == [2, 2, 2, 2]
    assert "test_accuracy" not in result.history
    assert len(result.history["validation_accuracy"]) == 2

    # The test file, loaded on its own (another order): the final network's metrics.
    alone = load_shd(shd_four_classes, steps=12, holdout="test")
    expected = evaluate(result.model, alone.x_test, alone.y_test, encoder=result_encoder(result))
    assert result.test["accuracy"] == expected["accuracy"]
    assert result.test["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    # The validation samples are training-file samples, none of them a test sample.
    train_file = load_shd(shd_four_classes, steps=12, holdout="test").x_train
    for x in result.data.x_test:
        assert any(np.array_equal(x, t) for t in train_file)
        assert not any(np.array_equal(x, t) for t in alone.x_test if x.any())

    record = json.loads((tmp_path / "out" / "train_shd_adex.json").read_text())
    assert record["test"] == result.test
    assert record["splits"]["validation_*"].startswith("a class-stratified 0.1 of shd_train.h5")
    assert record["splits"]["test"].startswith("the test file shd_test.h5")
    steps = checkpointing.describe(str(tmp_path / "ckpt"))
    assert all(set(step.metrics) == {"validation_accuracy", "validation_loss"} for step in steps)


def test_ssc_selects_on_its_validation_file(tmp_path):
    """SSC ships a validation file: the per-epoch split is ssc_valid.h5 whole,
    the training file is not cut, and the test file is evaluated once."""
    from test_events import make_samples, write_events_file

    from spark_somas.training import runs

    rng = np.random.default_rng(2)
    for name, n in (("ssc_train.h5", 70), ("ssc_valid.h5", 35), ("ssc_test.h5", 21)):
        write_events_file(tmp_path / name, *make_samples(rng, n, 35))
    run = runs.RunConfig(task="ssc", data_dir=str(tmp_path), epochs=1, hidden=6, steps=10,
                         batch_size=35)
    result = runs.train(run, str(tmp_path / "out"), progress=False)
    assert len(result.data.x_train) == 70 and len(result.data.x_test) == 35
    assert "validation_accuracy" in result.history and set(result.test) >= {"accuracy", "loss"}
    assert runs.describe_splits(run) == {
        "epochs": "the validation file ssc_valid.h5",
        "test": "the test file ssc_test.h5 (once, after training)"}


def result_encoder(result):
    return training.Encoder("spikes", int(result.data.x_train.shape[1]))


def test_the_command_line_reports_which_split_each_number_is(shd_four_classes, tmp_path, capsys):
    assert cli.main(["train", "--task", "shd", "--data-dir", str(shd_four_classes), "--epochs",
                     "1", "--hidden", "6", "--steps", "12", "--batch-size", "13", "--out",
                     str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"final test accuracy [0-9.]+% on the test file shd_test.h5 \(once, after "
                     r"training\)", out), out
    assert re.search(r"final validation accuracy [0-9.]+% \(\d+/8, a class-stratified 0.1 of "
                     r"shd_train.h5 held out of training\)", out), out


def test_without_validation_each_epoch_is_the_test_file_and_no_extra_test(shd_four_classes,
                                                                         tmp_path):
    from spark_somas.training import runs

    run = runs.RunConfig(task="shd", data_dir=str(shd_four_classes), epochs=1, hidden=6,
                         steps=12, batch_size=20, validation=False)
    result = runs.train(run, str(tmp_path), progress=False)
    assert result.test is None and len(result.data.x_test) == 20
    assert "validation_accuracy" not in result.history


@pytest.mark.parametrize("make, message", [
    (lambda d: dict(task="digits", validation=True),
     "validation = True violates the rule: only for a task read from files"),
])
def test_validation_is_refused_where_it_cannot_apply(shd_four_classes, make, message):
    from spark_somas.training import runs

    with pytest.raises(ss.errors.RuleError, match=re.escape(message)):
        runs.RunConfig(**make(shd_four_classes))


def test_a_validation_split_that_would_be_empty_is_one_line_before_training(shd_dir, tmp_path,
                                                                            capsys):
    assert run(["train", "--task", "shd", "--data-dir", str(shd_dir), "--steps", "12",
                "--out", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1, err
    assert "--data-option validation_fraction=0.1 violates the rule: a validation split of at " \
           "least one sample" in err, err


def test_a_run_saved_before_validation_existed_resumes_without_it():
    from spark_somas.training import runs

    saved = runs.RunConfig(task="shd", data_dir="/data", validation=False).to_dict()
    del saved["validation"]
    assert runs.RunConfig.from_dict(saved).validation is False


@pytest.mark.parametrize("task, argv, message", [
    ("shd", ["--data-dir", "EMPTY"], "--data-dir EMPTY: shd_train.h5 is missing in EMPTY: "
                                      "download shd_train.h5.gz from"),
    ("ssc", ["--data-dir", "EMPTY"], "--data-dir EMPTY: ssc_train.h5 is missing in EMPTY"),
    ("shd", [], "data_dir = None violates the rule: the directory holding shd_train.h5 and "
                "shd_test.h5 for task 'shd', or download them once: --download on the command "
                "line, spark_somas.data.fetch.fetch('shd') in Python (--data-dir)"),
])
def test_event_tasks_without_their_files_fail_in_one_line(tmp_path, capsys, task, argv, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [str(empty) if a == "EMPTY" else a for a in argv]
    assert run(["train", "--task", task, *argv, "--out", str(tmp_path / "out")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1, err
    assert message.replace("EMPTY", str(empty)) in err, err


def test_train_cues_reads_the_recall_window_only(tmp_path, capsys):
    assert cli.main(["train", "--task", "cues", "--epochs", "1", "--hidden", "8", "--recurrent",
                     "--data-option", "delay_ms=40", "--data-option", "n_samples=32",
                     "--data-option", "recall_ms=30", "--batch-size", "16",
                     "--out", str(tmp_path), "--no-progress"]) == 0
    record = json.loads((tmp_path / "train_cues_adex.json").read_text())
    assert record["settings"]["readout_window"] == [-30, None]
    # The recipe's cues: 7 of 50 ms, 25 ms apart, then the delay and the recall.
    assert record["settings"]["steps"] == 7 * 75 - 25 + 40 + 30


def test_train_with_remat_and_the_fused_backend_matches_the_scan(tmp_path, capsys):
    """--remat and --backend reach the network, are saved with its
    checkpoint, and change the run only to float32 rounding: the fused,
    rematerialised recurrent run's history equals the plain scan's."""
    histories = {}
    for backend, extra in (("scan", []), ("fused", ["--remat", "3"])):
        out, ckpt = tmp_path / backend, tmp_path / f"ckpt-{backend}"
        assert cli.main(["train", "--epochs", "2", "--limit", "24", "--batch-size", "12",
                         "--hidden", "8", "--steps", "8", "--recurrent", "--trainable-neurons",
                         "--backend", backend, "--checkpoint-dir", str(ckpt), "--out", str(out),
                         "--no-progress", *extra]) == 0
        histories[backend] = json.loads((out / "train_digits_adex.json").read_text())["history"]
        spec = checkpointing.load(ckpt).spec
        assert (spec["backend"], spec["remat"]) == (backend, 3 if extra else False)
    capsys.readouterr()
    for key in ("train_loss", "test_loss", "test_accuracy"):
        assert histories["fused"][key] == pytest.approx(histories["scan"][key], rel=1e-4), key


def test_resume_with_more_epochs_extends_a_finished_run_on_the_longer_cosine(tmp_path, capsys):
    common = ["train", "--limit", "48", "--batch-size", "24", "--hidden", "12", "--steps", "10",
              "--no-progress"]
    ckpt = tmp_path / "run"
    assert cli.main(common + ["--epochs", "2", "--checkpoint-dir", str(ckpt),
                              "--out", str(tmp_path / "a")]) == 0
    before = checkpointing.load(ckpt)
    capsys.readouterr()
    # the finished run: nothing to do without a longer --epochs
    assert cli.main(["train", "--resume", str(ckpt), "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "has done all its 2 epochs; pass --epochs N with N > 2" in err
    assert "--epochs 30" not in err and "violates" not in err  # no option the user did not give
    assert cli.main(["train", "--resume", str(ckpt), "--epochs", "1", "--out",
                     str(tmp_path / "b")]) == 1
    assert "--epochs 1 violates the rule: at least the 2 epochs" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(ckpt), "--epochs", "3", "--no-progress",
                     "--out", str(tmp_path / "b")]) == 0
    first = json.loads((tmp_path / "a" / "train_digits_adex.json").read_text())["history"]
    extended = json.loads((tmp_path / "b" / "train_digits_adex.json").read_text())["history"]
    assert extended["epoch"] == [1, 2, 3]
    assert extended["train_loss"][:2] == first["train_loss"]
    infos = checkpointing.describe(ckpt)
    assert infos[-1].step == 3 and infos[-1].extra["run"]["epochs"] == 3
    after = checkpointing.load(ckpt)
    # The 2-epoch schedule is 0 from its last step on; the 3-epoch one, which
    # the resumed run follows, is lr/2 there: the weights move in epoch 3.
    import optax
    assert optax.cosine_decay_schedule(1.0, 2 * 2)(4) == 0
    assert optax.cosine_decay_schedule(1.0, 3 * 2)(4) == pytest.approx(0.25)
    moved = [float(np.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(nnx.state(before, nnx.Param)), jax.tree.leaves(nnx.state(after, nnx.Param)))]
    assert max(moved) > 1e-4, moved


def test_checkpoint_retention_keeps_the_newest_and_the_best(tmp_path, capsys):
    ckpt = tmp_path / "run"
    assert cli.main(["train", "--limit", "48", "--batch-size", "24", "--hidden", "12",
                     "--steps", "10", "--no-progress", "--epochs", "5", "--keep-last", "2",
                     "--keep-best", "1", "--checkpoint-dir", str(ckpt),
                     "--out", str(tmp_path / "a")]) == 0
    history = json.loads((tmp_path / "a" / "train_digits_adex.json").read_text())["history"]
    accuracy = history["test_accuracy"]
    kept = [info.step for info in checkpointing.describe(ckpt)]
    assert {4, 5} <= set(kept) and len(kept) <= 3, (kept, accuracy)
    assert max(accuracy[step - 1] for step in kept) == max(accuracy), (kept, accuracy)


def test_version_module_entry_point_and_a_help_without_python_values():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    version = subprocess.run([sys.executable, "-m", "spark_somas", "--version"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == f"spark-somas {ss.__version__}"
    help_ = subprocess.run([sys.executable, "-m", "spark_somas", "train", "--help"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert help_.returncode == 0 and "--keep-last N" in help_.stdout
    text = " ".join(help_.stdout.split())
    description = text[text.index("Train input"):text.index("options:")]
    assert "Recipe(" not in description and "{" not in description, description
    assert "(default: None)" not in text and "(default: [])" not in text
    assert "digits: current input, 25 steps, input gain 1, no synapse" in text


@pytest.mark.parametrize("signum, status", [(2, 130), (15, 143)])  # SIGINT, SIGTERM
def test_a_signal_stops_training_in_one_line_that_says_how_to_resume(tmp_path, signum, status):
    import signal
    import time

    ckpt = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(
        [sys.executable, "-m", "spark_somas", "train", "--limit", "48", "--batch-size", "24",
         "--hidden", "12", "--steps", "10", "--epochs", "500", "--no-progress",
         "--checkpoint-dir", str(ckpt), "--out", str(tmp_path / "out")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 200
    while not (ckpt / "2").is_dir() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    name = signal.Signals(signum).name
    match = re.fullmatch(rf"spark-somas train: stopped by {name}; epochs ([\d, ]+) and (\d+) are "
                         rf"saved in {re.escape(str(ckpt))}; continue with: spark-somas train "
                         rf"--resume {re.escape(str(ckpt))}\n", err)
    assert match, err
    named = [int(k) for k in match.group(1).split(", ")] + [int(match.group(2))]
    # exactly the epochs retention kept, the newest complete and listed
    assert named[-1] >= 2 and [c.step for c in checkpointing.describe(ckpt)] == named
    net = checkpointing.load(ckpt)
    assert isinstance(net, training.SpikingNetwork)


def test_a_network_too_large_for_memory_is_one_line(tmp_path, capsys):
    assert cli.main(["train", "--limit", "48", "--batch-size", "24", "--hidden", str(10**12),
                     "--epochs", "1", "--no-progress", "--out", str(tmp_path / "out")]) == 1
    _, err = capsys.readouterr()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("spark-somas train: error: SpikingNetwork(") and "needs about" in err


def test_resuming_a_run_of_release_0_1_0_warns_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE_RUN, run)
    assert cli.main(["train", "--resume", str(run), "--epochs", "3", "--no-progress",
                     "--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert "resumed" in out and "final test accuracy" in out
    (line,) = [l for l in err.splitlines() if "warning" in l]
    assert line.startswith("spark-somas train: warning: checkpoint step 2 of ") and \
        "written by spark_somas 0.1.0" in line and "method euler unchecked" in line
    assert checkpointing.describe(run)[-1].step == 3


def test_a_save_that_fails_on_the_file_system_ends_train_with_its_one_line(tmp_path, full_disk_env):
    import resource
    import signal

    def full_disk():  # every file stops at 40 kB, as on a disk that filled up
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    proc = subprocess.run(
        [sys.executable, "-m", "spark_somas.cli", "train", "--limit", "48", "--batch-size", "24",
         "--hidden", "256", "--steps", "5", "--epochs", "2", "--no-progress",
         "--checkpoint-dir", str(tmp_path / "run"), "--out", str(tmp_path / "out")],
        env=full_disk_env, preexec_fn=full_disk, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    # One line: TensorStore's "Event loop is closed" reports of the failed
    # write, unraisable on its threads, are dropped.
    (line,) = proc.stderr.splitlines()
    assert line.startswith("spark-somas train: error: a save to ")
    assert "failed on the file system and was not committed" in line and "File too large" in line
    assert line.endswith("no epoch was saved")  # what is kept, and how to go on
    assert "final test accuracy" not in proc.stdout


# -- signals at any moment: each stops at a safe point, every epoch named loads

#: A short run with a Python loop over batches (so that a batch's end is a
#: safe point too) whose every save after the first deletes a step.
STRESS_RUN = ["train", "--task", "digits", "--epochs", "4", "--limit", "128", "--hidden", "16",
              "--no-progress", "--no-epoch-on-device", "--keep-last", "1", "--keep-best", "0"]


def signal_once(signum):
    """A function that sends ``signum`` to this process on its first call
    (from any thread; the handler runs in the main thread), then nothing."""
    sent = []

    def send():
        if not sent:
            sent.append(signum)
            os.kill(os.getpid(), signum)
    return send


def before_calling(monkeypatch, owner, name, send, pause=0.0):
    """``owner.name`` patched to call ``send()`` and wait ``pause`` seconds
    (the main thread meanwhile handles the signal) before doing its work."""
    import time

    original = getattr(owner, name)

    def patched(*args, **kwargs):
        send()
        time.sleep(pause)
        return original(*args, **kwargs)
    monkeypatch.setattr(owner, name, patched)


def in_a_gc_callback(monkeypatch, request, send):
    """During the first garbage collection after train installs its handlers
    (where JAX's own GC callback runs): an exception raised there is printed
    as ignored and lost."""
    import gc
    import signal

    before = signal.getsignal(signal.SIGINT)

    def callback(phase, info):
        if signal.getsignal(signal.SIGINT) is not before:
            send()
    gc.callbacks.append(callback)
    request.addfinalizer(lambda: gc.callbacks.remove(callback))


def in_the_first_save(monkeypatch, request, send):
    """Inside Orbax's save of epoch 1, in the main thread, after its
    temporary step directory exists."""
    import orbax.checkpoint as ocp

    before_calling(monkeypatch, ocp.StandardCheckpointHandler, "async_save", send)


def in_the_first_commit(monkeypatch, request, send):
    """In the background thread that commits epoch 1 while epoch 2 trains."""
    import orbax.checkpoint as ocp

    before_calling(monkeypatch, ocp.CheckpointManager, "_finalize", send, pause=0.2)


def in_the_first_deletion(monkeypatch, request, send):
    """While retention deletes epoch 1 (after epoch 2 is committed)."""
    from orbax.checkpoint._src.path import deleter

    before_calling(monkeypatch, deleter.StandardCheckpointDeleter, "delete", send, pause=0.2)


MOMENTS = {"gc-callback": in_a_gc_callback, "save": in_the_first_save,
           "commit": in_the_first_commit, "retention": in_the_first_deletion}


@pytest.mark.parametrize("signum", [2, 15], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_signal_at_any_moment_stops_train_with_every_epoch_it_names_loadable(
        tmp_path, monkeypatch, request, capsys, moment, signum):
    """The signal is sent from inside the moment itself, so the outcome
    cannot depend on timing: the handler only sets a flag, and train stops
    at its next safe point, the save in progress committed."""
    import signal
    import warnings

    ckpt = tmp_path / "run"
    MOMENTS[moment](monkeypatch, request, signal_once(signum))
    code = cli.main([*STRESS_RUN, "--checkpoint-dir", str(ckpt), "--out", str(tmp_path / "out")])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 128 + signum, err
    (line,) = err.splitlines()
    name = signal.Signals(signum).name
    match = re.fullmatch(rf"spark-somas train: stopped by {name}; (?:no epoch was saved|"
                         rf"epochs? ([\d, ]+?)(?: and (\d+))? (?:is|are) saved in "
                         rf"{re.escape(str(ckpt))}; continue with: spark-somas train --resume "
                         rf"{re.escape(str(ckpt))})", line)
    assert match, line
    named = [int(e) for e in (match.group(1) or "").split(", ") if e] + (
        [int(match.group(2))] if match.group(2) else [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no step is left incomplete
        listed = [info.step for info in checkpointing.describe(ckpt)] if ckpt.is_dir() else []
    assert named == listed
    for step in named:
        assert isinstance(checkpointing.load(ckpt, step), training.SpikingNetwork)
    if ckpt.is_dir():
        assert cli.main(["checkpoints", str(ckpt)]) == 0
        assert sorted(os.listdir(ckpt)) == [str(step) for step in named], os.listdir(ckpt)
    if moment in ("save", "commit"):
        assert 1 in named  # the epoch being written when the signal came was committed
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")  # no report


def test_steps_saved_without_keep_best_are_cleaned_after_a_resume_that_keeps_the_best(
        tmp_path, capsys):
    common = ["--limit", "48", "--batch-size", "24", "--hidden", "12", "--steps", "10",
              "--no-progress", "--out", str(tmp_path / "out")]
    ckpt = tmp_path / "run"
    assert cli.main(["train", *common, "--epochs", "3", "--keep-best", "0",
                     "--checkpoint-dir", str(ckpt)]) == 0
    assert [info.step for info in checkpointing.describe(ckpt)] == [1, 2, 3]
    assert cli.main(["train", "--resume", str(ckpt), *common, "--epochs", "4",
                     "--keep-last", "1"]) == 0
    history = json.loads((tmp_path / "out" / "train_digits_adex.json").read_text())["history"]
    kept = [info.step for info in checkpointing.describe(ckpt)]
    accuracy = history["test_accuracy"]
    assert 4 in kept and len(kept) <= 2, (kept, accuracy)
    assert max(accuracy[step - 1] for step in kept) == max(accuracy), (kept, accuracy)


def test_a_cue_run_resumes_with_its_own_options_repeated(tmp_path, capsys):
    """The recipe adds its own data and soma options under the user's; the
    same command repeated with --resume is the same run, not a change."""
    options = ["--task", "cues", "--hidden", "8", "--data-option", "delay_ms=40",
               "--data-option", "n_samples=32", "--soma-option", "adaptation_tau=500",
               "--batch-size", "16", "--no-progress", "--out", str(tmp_path / "out")]
    ckpt = str(tmp_path / "ckpt")
    assert cli.main(["train", *options, "--epochs", "1", "--checkpoint-dir", ckpt]) == 0
    assert cli.main(["train", *options, "--epochs", "2", "--resume", ckpt]) == 0
    assert "resumed" in capsys.readouterr().out.lower()
    assert cli.main(["train", "--task", "cues", "--data-option", "delay_ms=41", "--epochs", "3",
                     "--resume", ckpt, "--no-progress"]) != 0
    assert "('delay_ms', 41)" in capsys.readouterr().err


def test_a_mistyped_option_gets_the_nearest_name(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--epocs", "3"])
    assert "did you mean --epochs?" in capsys.readouterr().err


def test_a_soma_named_in_other_case_is_pointed_at_its_name():
    with pytest.raises(ValueError, match="did you mean 'adex'"):
        ss.runs.RunConfig(soma="AdEx")


@pytest.mark.parametrize("fields", [
    {},
    {"task": "cues", "soma": "expif", "epochs": 3, "soma_option": (("potential_tau", 20.0),),
     "data_option": (("delay_ms", 500.0),)},
    {"task": "cues", "soma": "adex", "recurrent": False, "rate_strength": 0.0},
    {"task": "digits", "hidden": 256, "lr": 0.01, "detach_reset": True},
    {"task": "shd", "data_dir": "/d", "validation": False, "steps": 50},
    {"task": "randman", "fresh_data": True, "data_option": (("manifold_dim", 2),)},
])
def test_a_runs_command_line_parses_back_into_the_same_run(fields):
    """RunConfig fills its None fields and command() leaves out the same
    recipe values (recipe_values, the one place): the printed command runs
    the run it was printed for."""
    import dataclasses

    from spark_somas.training.runs import RunConfig, recipe_values

    run_ = RunConfig(**fields)
    recipe = recipe_values(run_.task, run_.soma)
    for name, value in recipe.items():
        if name not in ("soma_option", "data_option") and name not in fields:
            assert getattr(run_, name) == value
    words = shlex.split(run_.command())
    args = cli.build_parser().parse_args(words[1:])
    again = RunConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)})
    assert again == run_
