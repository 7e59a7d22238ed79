"""The spark-somas command line, in process (fast) and once as a console script."""

import json
import os
import shutil
import subprocess
import sys

import chex
import pytest
from flax import nnx

from spark_somas import checkpointing, cli, training


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


def test_bad_options_exit_with_usage(capsys):
    for argv in (["train", "--soma", "lif"], ["train", "--epochs", "0"], [],
                 ["train", "--data-option", "manifold_dim"]):
        with pytest.raises(SystemExit) as err:
            cli.main(argv)
        assert err.value.code == 2
    assert "usage: spark-somas" in capsys.readouterr().err


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
    # options on the command line other than --out are ignored in favour of the saved ones
    assert cli.main(["train", "--resume", str(part_ckpt), "--hidden", "99", "--no-progress",
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
