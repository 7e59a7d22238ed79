"""The ``spark-somas`` command line.

Subcommands (one ``add_<name>_parser`` / ``cmd_<name>`` pair each; register a
new one in :data:`SUBCOMMANDS`):

* ``spark-somas train`` — trains :class:`~spark_somas.training.SpikingNetwork`
  on a task of :data:`spark_somas.datasets.TASKS` (digits, Randman, the cue
  task, or SHD/SSC read from ``--data-dir``, or first downloaded there by
  ``--download``: :mod:`spark_somas.fetch`), prints progress, the final
  test accuracy and the firing rates, and writes
  ``<out>/train_<task>_<soma>.png`` (loss and accuracy curves, spike raster
  of one test sample) and ``.json`` (history and settings); with
  ``--tensorboard DIR`` also TensorBoard event files, one scalar per history
  key per epoch. ``make demo`` runs it with its defaults: AdEx on digits.
* ``spark-somas simulate`` — each of the four default somas under a step
  current: spike counts, firing rates and ``<out>/simulate.png`` (voltage traces).

``train --checkpoint-dir D`` saves after every epoch e (0-based) the step
e + 1 of a :class:`spark_somas.checkpointing.Checkpointer`: model (weights,
neuron parameters and state), optimizer (Adam moments, step count, hence the
learning-rate schedule), test metrics, and ``extra = {"history", "run"}``, the
run's :class:`~spark_somas.runs.RunConfig` as a dict. ``train --resume D``
restores the newest step into a network built from the saved run and runs ``fit(..., start_epoch=e + 1, history=extra["history"])``:
data order and noise are pure functions of (seed, epoch), so the resumed run
is the run that never stopped.
* ``spark-somas checkpoints D`` — the steps saved in D with their metrics.

User errors end the command with one line on stderr naming the option and
the rule it breaks, and no traceback: exit status 2 for an option value the
parser refuses (usage), 1 for what is found while running — an unwritable
``--out`` or ``--checkpoint-dir``, a ``--resume`` directory that holds no
training run, a diverging loss. Everything that can be checked before
training (options, directories, the checkpoint to resume) is checked before
the data are loaded.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

__all__ = ["main", "build_parser", "SUBCOMMANDS", "CommandError"]


class CommandError(Exception):
    """A user error found while a command runs: reported as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line: the option and the rule."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} violates the rule: finite")
    return value


def _positive(kind: type) -> Callable[[str], float | int]:
    def parse(text: str):
        value = kind(text)
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text!r} violates the rule: > 0 and finite")
        return value

    parse.__name__ = kind.__name__
    return parse


def _writable_dir(path: str, option: str) -> None:
    """Creates ``path`` and a file in it (removed at once), or raises
    :class:`CommandError` naming ``option``: before any work depends on it."""
    from spark_somas.checkpointing import _check_writable

    _check_writable(path, option, error=CommandError)


def add_train_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``train`` options: one per :class:`~spark_somas.runs.RunConfig`
    field (``--batch-size`` for ``batch_size``), then where the run goes."""
    import dataclasses
    import typing

    from spark_somas.runs import RECIPES, RunConfig

    p = sub.add_parser(
        "train", help="train a spiking network on digits, Randman, the cue task, SHD or SSC",
        description="Train input Linear -> soma layers -> Linear -> leaky readout with BPTT "
                    "through surrogate spikes (Adam, cosine-decayed learning rate). "
                    f"Per-task recipe (encoder, steps, input gain, synapse): {RECIPES}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    hints = typing.get_type_hints(RunConfig)
    for field in dataclasses.fields(RunConfig):
        meta = field.metadata
        flag = "--" + field.name.replace("_", "-")
        kind = next((t for t in (bool, int, float, str) if t in (hints[field.name],
                                                                  *typing.get_args(hints[field.name]))),
                    None)
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        kwargs = {"default": field.default, "help": meta["help"]}
        if meta["metavar"]:
            kwargs["metavar"] = meta["metavar"]
        if field.name in ("data_option", "soma_option"):
            kwargs |= {"action": "append", "type": _data_option, "default": []}
        elif kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif choices is not None:
            kwargs["choices"] = choices
        else:
            kwargs["type"] = _positive(kind) if meta["positive"] else kind
        p.add_argument(flag, **kwargs)
    p.add_argument("--download", action="store_true",
                   help="shd/ssc: first download the official files (checksummed, resumable) "
                        "into --data-dir, default the cache directory of spark_somas.fetch")
    p.add_argument("--checkpoint-dir", default=None,
                   help="save model, optimizer and history after every epoch (Orbax)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the run checkpointed in DIR from its newest epoch, with the "
                        "settings saved there (other options but --out are ignored); keeps "
                        "saving to DIR")
    p.add_argument("--out", default="out", help="directory for the PNG and JSON")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also write TensorBoard event files (scalars per epoch, parameter "
                        "histograms) to DIR; needs the tensorboard extra")
    p.add_argument("--epoch-on-device", action=argparse.BooleanOptionalAction, default=None,
                   help="run each epoch as one compiled program over batches on the device "
                        "(default: when the training split fits in a quarter of its memory)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="tqdm progress bar")
    return p


def _data_option(text: str) -> tuple[str, int | float]:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} violates the rule: KEY=VALUE")
    try:
        return key, int(value)
    except ValueError:
        try:
            return key, float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} violates the rule: a numeric VALUE") from None


def _percent(x: float) -> str:
    return f"{100.0 * x:.2f}%"


def cmd_train(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    import dataclasses

    import jax
    import numpy as np
    from flax import nnx

    from spark_somas import datasets, loggers, training
    from spark_somas.checkpointing import Checkpointer
    from spark_somas.events import EventDatasetMissing
    from spark_somas.runs import RunConfig

    if args.download:
        from spark_somas.fetch import default_cache_dir
        from spark_somas.runs import FILE_TASKS

        if args.task not in FILE_TASKS or args.resume:
            raise CommandError(f"--download violates the rule: only for --task "
                               f"{' or '.join(sorted(FILE_TASKS))}, without --resume")
        args.data_dir = args.data_dir or str(default_cache_dir(args.task))
    resumed = None
    if args.resume:
        resumed = _resumable(args.resume)
        run = RunConfig.from_dict(resumed["run"])
        args.checkpoint_dir = args.resume
    else:
        try:
            run = RunConfig(**{f.name: getattr(args, f.name)
                               for f in dataclasses.fields(RunConfig)})
        except ValueError as err:  # a rule between options, e.g. --task shd without --data-dir
            raise CommandError(f"{err} (--{str(err).split()[0].replace('_', '-')})") from None
    _writable_dir(args.out, "--out")
    for option, directory in (("--checkpoint-dir", args.checkpoint_dir),
                              ("--tensorboard", args.tensorboard)):
        if directory:
            _writable_dir(directory, option)
    if args.tensorboard and importlib.util.find_spec("tensorboardX") is None:
        raise CommandError('--tensorboard needs tensorboardX: pip install '
                           '"spark_somas[tensorboard]"')

    if args.download:
        from spark_somas.fetch import DownloadError, fetch

        _writable_dir(run.data_dir, "--data-dir")
        try:
            fetch(run.task, run.data_dir, progress=args.progress)
        except DownloadError as err:
            raise CommandError(f"--download: {err}") from None
    try:
        data = datasets.load_task(run.task, **run.data_kwargs()).limit(run.limit)
    except EventDatasetMissing as err:
        raise CommandError(f"--data-dir {run.data_dir}: {err}") from None
    except (TypeError, ValueError) as err:  # an unknown --data-option key or a bad value
        raise CommandError(f"--data-option violates the rule: a keyword of the {run.task} "
                           f"loader with a valid value ({err})") from None
    if data.encoding == "spikes" and run.encoder not in (None, "spikes"):
        raise CommandError(f"--encoder {run.encoder} violates the rule: {run.task} is spike data")
    encoder = run.make_encoder(data)
    model = training.SpikingNetwork.from_config(run.network(data), nnx.Rngs(run.seed))
    batch = min(run.batch_size, len(data.x_train))
    optimizer = training.make_optimizer(model, run.lr,
                                        total_steps=run.epochs * (len(data.x_train) // batch))
    settings = run.to_dict() | {
        "steps": encoder.steps, "encoder": encoder.kind, "dt_ms": model.dt,
        "input_gain": run.recipe.input_gain, "synapse_tau_ms": run.recipe.synapse_tau,
        "current_scale_pA": [layer.scale for layer in model.layers],
        "readout_window": model.config.readout_window}
    print(f"spark-somas train: {data!r}\n  {settings}", flush=True)

    save = checkpointer = None
    start_epoch, history = 0, None
    if args.checkpoint_dir:
        checkpointer = Checkpointer(args.checkpoint_dir)
        if resumed is not None:
            start_epoch, history = checkpointer.restore(model, optimizer), resumed["history"]
            print(f"resumed {args.resume} after epoch {start_epoch}", flush=True)

        def save(epoch, model, optimizer, history):
            checkpointer.save(epoch + 1, model, optimizer,
                              metrics={k: history[k][-1] for k in ("test_accuracy", "test_loss")},
                              extra={"history": history, "run": run.to_dict()})
    tensorboard = None
    if args.tensorboard:  # a resumed run hides the events the old run wrote after its save
        tensorboard = loggers.TensorBoardLogger(args.tensorboard, histograms=True,
                                                purge_step=start_epoch + 1 if start_epoch else None)
    try:
        history = training.fit(model, optimizer, data, encoder=encoder, epochs=run.epochs,
                               batch_size=batch, seed=run.seed,
                               on_epoch_end=loggers.chain(save, tensorboard),
                               start_epoch=start_epoch, history=history, progress=args.progress,
                               epoch_on_device=args.epoch_on_device)
    finally:
        for closing in (checkpointer, tensorboard):
            if closing is not None:
                closing.close()
    wall = time.perf_counter() - t0
    losses = np.asarray(history["train_loss"] + history["test_loss"])
    sample = training.record(model, data.x_test[:1], jax.random.key(run.seed), encoder=encoder)
    raster = np.asarray(sample.hidden_spikes[:, 0])
    acc = history["test_accuracy"][-1]
    print(f"final test accuracy {_percent(acc)} ({round(acc * len(data.x_test))}/"
          f"{len(data.x_test)}), train accuracy {_percent(history['train_accuracy'][-1])}")
    print(f"hidden firing rate: train {history['train_rate_hz'][-1]:.1f} Hz, test "
          f"{history['test_rate_hz'][-1]:.1f} Hz; test sample shown: {int(raster.sum())} spikes "
          f"from {int((raster.sum(0) > 0).sum())}/{raster.shape[1]} neurons")
    print(f"wall time {wall:.1f} s (compilation included); NaN in losses: "
          f"{bool(np.isnan(losses).any())}")
    for index, soma in enumerate(model.somas()):
        for name in soma.trainable:
            v = np.asarray(soma.parameters()[name])
            print(f"  soma layer {index}, trained {name}: mean {v.mean():.4g}, "
                  f"range [{v.min():.4g}, {v.max():.4g}]")

    stem = os.path.join(args.out, f"train_{run.task}_{run.soma}")
    fig = training.plot_training(
        history, raster, dt=model.dt,
        title=f"{run.soma} on {run.task}: test accuracy {_percent(acc)}")
    fig.savefig(stem + ".png", dpi=120)
    with open(stem + ".json", "w") as f:
        json.dump({"settings": settings, "history": history, "wall_seconds": wall}, f, indent=1)
    print(f"wrote {stem}.png and {stem}.json"
          + (f"; TensorBoard: tensorboard --logdir {args.tensorboard}" if tensorboard else ""))
    return 0


def _resumable(directory: str) -> dict:
    """The ``extra`` of the newest step in ``directory`` when it is a run that
    ``train --checkpoint-dir`` wrote; else :class:`CommandError` naming ``--resume``."""
    from spark_somas.checkpointing import CheckpointError, Checkpointer

    try:
        with Checkpointer(directory, read_only=True) as ckpt:
            meta = ckpt.metadata()
    except CheckpointError as err:
        raise CommandError(f"--resume: {err}") from None
    extra = meta.get("extra")
    if (meta["model"].get("type") != "SpikingNetwork" or not isinstance(extra, dict)
            or not isinstance(extra.get("run"), dict)
            or not isinstance(extra.get("history"), dict)):
        raise CommandError(
            f"--resume {directory} violates the rule: a directory written by 'spark-somas train "
            f"--checkpoint-dir' (its step {meta['step']} holds a "
            f"{meta['model'].get('type') or meta['model'].get('class')} without the training "
            "settings and history)")
    return extra


def add_simulate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "simulate", help="the four default somas under a step current",
        description="Run each default soma (Brette & Gerstner 2005 cell) from rest under a "
                    "current step and report spike counts and firing rates.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--current", type=_finite, default=800.0, help="step amplitude (pA)")
    p.add_argument("--duration", type=_positive(float), default=300.0, help="run length (ms)")
    p.add_argument("--onset", type=_finite, default=20.0, help="step onset (ms)")
    p.add_argument("--dt", type=_positive(float), default=0.1, help="time step (ms)")
    p.add_argument("--out", default="out", help="directory for simulate.png")
    return p


def cmd_simulate(args: argparse.Namespace) -> int:
    import matplotlib.pyplot as plt
    import numpy as np

    import spark_somas as ss
    from spark_somas import plotting

    steps = int(round(args.duration / args.dt))
    if steps < 1:
        raise CommandError(f"--duration {args.duration:g} violates the rule: at least one step of "
                           f"--dt {args.dt:g} ms")
    _writable_dir(args.out, "--out")
    t = np.arange(steps) * args.dt
    current = np.where(t >= args.onset, args.current, 0.0).astype(np.float32)[:, None]
    on_ms = max(args.duration - max(args.onset, 0.0), 0.0)
    fig, axes = plt.subplots(len(ss.SOMAS), 1, figsize=(8, 1.9 * len(ss.SOMAS)), sharex=True,
                             layout="constrained")
    print(f"{args.current:g} pA step at {args.onset:g} ms, {args.duration:g} ms, dt = {args.dt:g} ms")
    for ax, (name, cls) in zip(axes, ss.SOMAS.items()):
        soma = cls(units=1, dt=args.dt)
        rec = ss.simulate(soma, current)
        spikes = np.asarray(rec.spikes[:, 0])
        count = int(spikes.sum())
        rate = 1000.0 * count / on_ms if on_ms else 0.0
        print(f"  {name:<11} {cls.__name__:<36} {count:4d} spikes  {rate:7.1f} Hz")
        plotting.voltage_trace(rec.potential[:, 0], spikes, dt=args.dt, ax=ax, label=name)
        ax.set_title(f"{cls.__name__}: {count} spikes, {rate:.1f} Hz", fontsize=9)
        ax.set_xlabel("")
    axes[-1].set_xlabel("time (ms)")
    path = os.path.join(args.out, "simulate.png")
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")
    return 0


def add_checkpoints_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "checkpoints", help="list the checkpoints in a directory",
        description="List the steps saved in DIR with their time, model and metrics.")
    p.add_argument("directory", metavar="DIR")
    return p


def cmd_checkpoints(args: argparse.Namespace) -> int:
    from spark_somas.checkpointing import describe, format_listing

    print(format_listing(describe(args.directory)))
    return 0


#: name -> (add its parser, run it). Add a subcommand by adding an entry.
SUBCOMMANDS: dict[str, tuple[Callable, Callable[[argparse.Namespace], int]]] = {
    "train": (add_train_parser, cmd_train),
    "simulate": (add_simulate_parser, cmd_simulate),
    "checkpoints": (add_checkpoints_parser, cmd_checkpoints),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="spark-somas",
        description="Exponential integrate-and-fire somas (Flax NNX): simulate and train.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add, run in SUBCOMMANDS.values():
        add(sub).set_defaults(func=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``spark-somas`` with ``argv`` (default: the process arguments)."""
    args = build_parser().parse_args(argv)
    from spark_somas.checkpointing import CheckpointError
    from spark_somas.configs import ConfigError
    from spark_somas.datasets import DataError
    from spark_somas.training import NonFiniteLossError

    try:
        return args.func(args)
    except (CommandError, CheckpointError, ConfigError, DataError, NonFiniteLossError) as err:
        print(f"spark-somas {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
