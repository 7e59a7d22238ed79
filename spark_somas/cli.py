"""The ``spark-somas`` command line.

Subcommands (one ``add_<name>_parser`` / ``cmd_<name>`` pair each; register a
new one in :data:`SUBCOMMANDS`):

* ``spark-somas train`` — trains :class:`~spark_somas.training.SpikingNetwork`
  on a task of :data:`spark_somas.data.datasets.TASKS` (digits, Randman, the cue
  task, or SHD/SSC read from ``--data-dir``, or first downloaded there by
  ``--download``: :mod:`spark_somas.data.fetch`), prints progress, the final
  accuracies, each with the split it was measured on (SHD/SSC: per epoch on
  a validation split, the test file once after training; ``--no-validation``
  per epoch on the test file), and the firing rates, and writes
  ``<out>/train_<task>_<soma>.png`` (loss and accuracy curves, spike raster
  of one test sample) and ``.json`` (history and settings); with
  ``--tensorboard DIR`` also TensorBoard event files, one scalar per history
  key per epoch. ``make demo`` runs it with its defaults: AdEx on digits.
  The command parses its options into a :class:`~spark_somas.training.runs.RunConfig`
  and calls :func:`spark_somas.training.runs.train`, which does the run; then it
  prints the result.
* ``spark-somas simulate`` — each of the four default somas under a step
  current: spike counts, firing rates and ``<out>/simulate.png`` (voltage traces).

``train --checkpoint-dir D`` (a new or empty D) saves after every epoch e
(0-based) the step e + 1 of a :class:`spark_somas.persistence.checkpointing.Checkpointer`,
keeping the newest ``--keep-last`` and the ``--keep-best`` by the accuracy
evaluated after each epoch (validation or test): model (weights, neuron
parameters and state), optimizer (Adam moments, step count, hence the
learning-rate schedule), that epoch's metrics, and ``extra =
{"history", "run"}``, the run's :class:`~spark_somas.training.runs.RunConfig` as a
dict. ``train --resume D`` restores the newest step into a network built from
the saved run and runs ``fit(..., start_epoch=e + 1,
history=extra["history"])`` (``runs.train(..., resume=True)``): data order and noise are pure functions of
(seed, epoch), so the resumed run is the run that never stopped. A run
option given on resume must keep its saved value, except ``--epochs``, which
extends the run (the cosine schedule is then the longer run's). SIGINT and
SIGTERM stop training at its next safe point (after a batch, or after an
epoch's save is handed to the writer), commit the save in progress, and end
with one line naming the epochs saved and the ``--resume`` command, exit
status 130 and 143; a second signal ends the process at once.

* ``spark-somas checkpoints D`` — the steps saved in D with their metrics
  (a step left incomplete is skipped, with a warning line naming it).

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
import contextlib
import difflib
import importlib.metadata
import math
import os
import shlex
import signal
import sys
import threading
import warnings
from typing import Any, Callable, Iterator, Sequence

from spark_somas.errors import OutOfMemoryError, SparkSomasError, violation

__all__ = ["main", "build_parser", "SUBCOMMANDS", "SUMMARIES", "CommandError"]


class CommandError(SparkSomasError):
    """A user error found while a command runs: reported as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line: the option and the rule."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}{self._suggestion(message)} "
                     f"(see {self.prog} --help)\n")

    def _parsers(self) -> list[argparse.ArgumentParser]:
        """This parser and its subcommands' parsers, whose options a typo may mean."""
        subs = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
        return [self, *(p for a in subs for p in a.choices.values())]

    def _suggestion(self, message: str) -> str:
        """"; did you mean --epochs?" for a mistyped option, else ""."""
        if not message.startswith("unrecognized arguments:"):
            return ""
        known = [o for parser in self._parsers() for action in parser._actions
                 for o in action.option_strings]
        words = [w.split("=")[0] for w in message.split(":", 1)[1].split() if w.startswith("--")]
        close = [difflib.get_close_matches(w, known, n=1) for w in words]
        return "".join(f"; did you mean {c[0]}?" for c in close if c)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(violation(repr(text), "finite"))
    return value


def _positive(kind: type) -> Callable[[str], float | int]:
    def parse(text: str):
        value = kind(text)
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(violation(repr(text), "> 0 and finite"))
        return value

    parse.__name__ = kind.__name__
    return parse


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(violation(repr(text), "an int >= 0"))
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it is None or empty, or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, [], ()) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def _writable_dir(path: str, option: str) -> None:
    """Creates ``path`` and a file in it (removed at once), or raises
    :class:`CommandError` naming ``option``: before any work depends on it."""
    from spark_somas.persistence.checkpointing import check_writable

    check_writable(path, option, error=CommandError)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """One option per :class:`~spark_somas.training.runs.RunConfig` field, its type,
    choices, help and metavar from the field's metadata."""
    import dataclasses
    import typing

    from spark_somas.training.runs import RunConfig

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


def add_train_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``train`` options: one per :class:`~spark_somas.training.runs.RunConfig`
    field (``--batch-size`` for ``batch_size``), then where the run goes."""
    from spark_somas.training.runs import RECIPES

    recipes = "; ".join(
        f"{task}: {r.encoder} input, "
        + (f"{r.steps} steps" if r.steps else "steps set by the trial")
        + f", input gain {r.input_gain:g}, "
        + (f"synapse tau {r.synapse_tau:g} ms" if r.synapse_tau else "no synapse")
        for task, r in RECIPES.items())
    p = sub.add_parser(
        "train", help=SUMMARIES["train"],
        description="Train input Linear -> soma layers -> Linear -> leaky readout with BPTT "
                    "through surrogate spikes (Adam, cosine-decayed learning rate). "
                    f"Each task's recipe: {recipes}.",
        formatter_class=_HelpFormatter,
    )
    _add_run_options(p)
    p.add_argument("--download", action="store_true",
                   help="shd/ssc: first download the official files (checksummed, resumable) "
                        "into --data-dir, default the cache directory of spark_somas.data.fetch")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="save model, optimizer and history after every epoch (Orbax) in DIR, "
                        "a new or empty directory")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the run checkpointed in DIR from its newest epoch, with the "
                        "settings saved there; --epochs N extends it to N epochs, any other "
                        "run option must agree with the saved one; keeps saving to DIR")
    p.add_argument("--keep-last", type=_count, default=3, metavar="N",
                   help="keep the checkpoints of the newest N epochs (0: every epoch)")
    p.add_argument("--keep-best", type=_count, default=1, metavar="N",
                   help="also keep the N epochs of best accuracy on the split evaluated after "
                        "each epoch (the validation split with --validation, else the test "
                        "split)")
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
        raise argparse.ArgumentTypeError(violation(repr(text), "KEY=VALUE"))
    try:
        return key, int(value)
    except ValueError:
        try:
            return key, float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(violation(repr(text), "a numeric VALUE")) from None


def _percent(x: float) -> str:
    return f"{100.0 * x:.2f}%"


#: How the run function's messages name its settings: as the options that set them.
_OPTION_NAMES = {"out_dir": "--out", "checkpoint_dir": "--checkpoint-dir",
                 "tensorboard": "--tensorboard", "download": "--download",
                 "data_dir": "--data-dir", "data_option": "--data-option",
                 "encoder": "--encoder", "resume": "--resume"}


def cmd_train(args: argparse.Namespace) -> int:
    """Parses the options into a run and calls :func:`spark_somas.training.runs.train`;
    SIGINT and SIGTERM stop it at a safe point (:func:`_stop_on_signals`)."""
    from spark_somas.persistence.checkpointing import CheckpointNotWritableError
    from spark_somas.training import runs
    from spark_somas.training.callbacks import StopOnRequest

    with _stop_on_signals() as signals:
        try:
            run = _train_run(args)
            signals.check()
            result = runs.train(
                run, args.out, checkpoint_dir=args.checkpoint_dir, resume=bool(args.resume),
                keep_last=args.keep_last, keep_best=args.keep_best, tensorboard=args.tensorboard,
                download=args.download, epoch_on_device=args.epoch_on_device,
                progress=args.progress, names=_OPTION_NAMES,
                callbacks=[StopOnRequest(signals.requested, signals.stopped)],
                echo=lambda line: print(f"spark-somas train: {line}", flush=True))
        except Stopped as stop:
            print(f"spark-somas train: stopped by {stop.name}; {_saved(args.checkpoint_dir)}",
                  file=sys.stderr)
            return 128 + stop.signum
        except CheckpointNotWritableError as err:  # a full disk: what is kept, and how to go on
            raise CommandError(f"{err}; {_saved(args.checkpoint_dir)}") from None
    _report(result, args.tensorboard)
    return 0


def _train_run(args: argparse.Namespace) -> "RunConfig":
    """The run the options ask for: a new one, or the one saved in
    ``--resume``'s directory (then also ``args.checkpoint_dir``)."""
    import dataclasses

    from spark_somas.persistence.checkpointing import check_directory
    from spark_somas.training.runs import FILE_TASKS, RunConfig, saved_run

    if args.download:
        from spark_somas.data.fetch import default_cache_dir

        if args.task not in FILE_TASKS or args.resume:
            raise CommandError(violation("--download", f"only for --task "
                                         f"{' or '.join(sorted(FILE_TASKS))}, without --resume"))
        args.data_dir = args.data_dir or str(default_cache_dir(args.task))
    if not args.resume:
        try:
            return RunConfig(**{f.name: getattr(args, f.name)
                                for f in dataclasses.fields(RunConfig)})
        except ValueError as err:  # a rule of one option, or between options
            raise CommandError(f"{err} (--{str(err).split()[0].replace('_', '-')})") from None
    args.resume = check_directory(args.resume, "--resume")
    run = _resumed_run(args, saved_run(args.resume, "--resume"))
    if args.checkpoint_dir and check_directory(args.checkpoint_dir) != args.resume:
        raise CommandError(violation(f"--checkpoint-dir {args.checkpoint_dir}",
                                     f"a resumed run keeps saving to its --resume directory "
                                     f"{args.resume}"))
    args.checkpoint_dir = args.resume
    return run


def _saved(checkpoint_dir: str | None) -> str:
    """Which epochs a stopped run left in ``checkpoint_dir`` — those whose
    step reads back complete —, and how to continue."""
    from spark_somas.persistence.checkpointing import CheckpointError, Checkpointer

    steps: list[int] = []
    if checkpoint_dir and os.path.isdir(checkpoint_dir):
        try:
            with warnings.catch_warnings():  # a step left incomplete is not named as saved
                warnings.simplefilter("ignore")
                with Checkpointer(checkpoint_dir, read_only=True) as ckpt:
                    steps = [info.step for info in ckpt.list()]
        except CheckpointError:
            pass
    if steps:
        kept = (f"epoch {steps[0]} is" if len(steps) == 1 else
                f"epochs {', '.join(map(str, steps[:-1]))} and {steps[-1]} are")
        return (f"{kept} saved in {checkpoint_dir}; continue with: "
                f"spark-somas train --resume {shlex.quote(checkpoint_dir)}")
    return "no epoch was saved" + ("" if checkpoint_dir else " (no --checkpoint-dir)")


def _report(result, tensorboard: str | None) -> None:
    """Prints what a finished run did: accuracy, rates, trained neuron
    parameters and the files written."""
    import numpy as np

    from spark_somas.training.runs import describe_splits

    history, raster, n_held = result.history, result.raster, len(result.data.x_test)
    held, splits = result.run.eval_split, describe_splits(result.run)
    losses = np.asarray(history["train_loss"] + history[f"{held}_loss"])
    acc = history[f"{held}_accuracy"][-1]
    if result.test is not None:
        print(f"final test accuracy {_percent(result.test['accuracy'])} on {splits['test']}")
    print(f"final {held} accuracy {_percent(acc)} ({round(acc * n_held)}/{n_held}, "
          f"{splits['epochs']}), train accuracy {_percent(history['train_accuracy'][-1])}")
    print(f"hidden firing rate: train {history['train_rate_hz'][-1]:.1f} Hz, {held} "
          f"{history[f'{held}_rate_hz'][-1]:.1f} Hz; {held} sample shown: {int(raster.sum())} "
          f"spikes from {int((raster.sum(0) > 0).sum())}/{raster.shape[1]} neurons")
    print(f"wall time {result.wall_seconds:.1f} s (compilation included); NaN in losses: "
          f"{bool(np.isnan(losses).any())}")
    for index, soma in enumerate(result.model.somas()):
        for name in soma.trainable:
            v = np.asarray(soma.parameters()[name])
            print(f"  soma layer {index}, trained {name}: mean {v.mean():.4g}, "
                  f"range [{v.min():.4g}, {v.max():.4g}]")
    png, json_path = result.files
    print(f"wrote {png} and {json_path}"
          + (f"; TensorBoard: tensorboard --logdir {tensorboard}" if tensorboard else ""))


def _resumed_run(args: argparse.Namespace, resumed: "SavedRun") -> "RunConfig":
    """The run saved in ``--resume``'s directory, extended to ``--epochs`` when
    given; every other run option given must agree with the saved value."""
    import dataclasses

    from spark_somas.training.runs import RunConfig

    try:
        saved = RunConfig.from_dict(resumed.run)
    except ValueError as err:
        raise CommandError(f"--resume {args.resume}: the run saved there cannot be rebuilt by "
                           f"this version ({err})") from None
    done = resumed.epochs_done
    for field in dataclasses.fields(RunConfig):
        if field.name == "epochs" or field.name not in args.given:
            continue
        mine = getattr(args, field.name)
        if field.name in ("data_option", "soma_option"):  # with the recipe's, as a new run has
            mine = getattr(RunConfig(task=saved.task, soma=saved.soma, data_dir=saved.data_dir,
                                     **{field.name: tuple(tuple(kv) for kv in mine)}), field.name)
        if mine != getattr(saved, field.name):
            flag = "--" + field.name.replace("_", "-")
            raise CommandError(violation(
                f"{flag} {getattr(args, field.name)}",
                f"a resumed run keeps the settings saved in {args.resume} ({field.name} = "
                f"{getattr(saved, field.name)!r}); only --epochs may change, to extend it"))
    epochs = args.epochs if "epochs" in args.given else saved.epochs
    if "epochs" not in args.given and done >= epochs:
        raise CommandError(f"--resume {args.resume}: the run there has done all its {done} "
                           f"epochs; pass --epochs N with N > {done} to extend it")
    if epochs < done:
        raise CommandError(violation(f"--epochs {epochs}",
                                     f"at least the {done} epochs the run has done"))
    return dataclasses.replace(saved, epochs=epochs, recipe_options=False)


class Stopped(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM arrived while training, and training
    stopped at a safe point. A BaseException, as KeyboardInterrupt: no
    handler of ordinary errors on the way up (a save's, say) may take it
    for one."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.name = signum, signal.Signals(signum).name


class _Signals:
    """SIGINT and SIGTERM as a request to stop: the handler only records
    the first signal and sets :attr:`requested`, which training reads at its
    safe points (:class:`~spark_somas.training.callbacks.StopOnRequest`) —
    it never raises inside whatever code runs when the signal lands (a
    save, the deletion of an old step, a garbage-collection callback of
    JAX, where an exception is printed and lost). A second signal ends the
    process at once by the signal's default action, for when waiting is
    not wanted (as ``kill -9`` would: committed epochs stay intact)."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.signum: int | None = None

    def handle(self, signum: int, frame: Any) -> None:
        if self.requested.is_set():
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        self.requested.set()

    def stopped(self) -> Stopped:
        """The exception a safe point raises for the signal received."""
        return Stopped(self.signum)

    def check(self) -> None:
        """Raises :class:`Stopped` at a safe point outside training, when a signal came."""
        if self.requested.is_set():
            raise self.stopped()


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_Signals]:
    """Handles SIGINT and SIGTERM by :class:`_Signals` in the block (the
    epoch under way is abandoned at its next safe point; saves in progress
    are committed) and restores the previous handlers afterwards."""
    signals = _Signals()
    previous = {sig: signal.signal(sig, signals.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield signals
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


#: The longest ``simulate`` run, in steps (100 s at dt = 0.1 ms): its arrays
#: (the drive, the time axis, each soma's V and spikes) and their plots take
#: about 50 bytes a step, tens of MB at this length.
MAX_SIMULATE_STEPS = 10**6


def add_simulate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "simulate", help=SUMMARIES["simulate"],
        description="Run each default soma (Brette & Gerstner 2005 cell) from rest under a "
                    "current step and report spike counts and firing rates.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--current", type=_finite, default=800.0, help="step amplitude (pA)")
    p.add_argument("--duration", type=_positive(float), default=300.0, help="run length (ms)")
    p.add_argument("--onset", type=_finite, default=20.0, help="step onset (ms)")
    p.add_argument("--dt", type=_positive(float), default=0.1, help="time step (ms)")
    p.add_argument("--out", default="out", help="directory for simulate.png")
    return p


def cmd_simulate(args: argparse.Namespace) -> int:
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no display, no backend to choose

    import spark_somas as ss
    from spark_somas import plotting

    from spark_somas.models.configs import LARGEST, SMALLEST

    if not SMALLEST <= args.dt <= LARGEST:
        raise CommandError(violation(f"--dt {args.dt:g}",
                                     f"{SMALLEST:g} ≤ dt ≤ {LARGEST:g} ms, the somas' time step"))
    steps = round(args.duration / args.dt)
    if not 1 <= steps <= MAX_SIMULATE_STEPS:
        raise CommandError(violation(f"--duration {args.duration:g}",
                                     f"from one step of --dt {args.dt:g} ms to "
                                     f"{MAX_SIMULATE_STEPS:.0e} steps (asked: {steps:.3g})"))
    _writable_dir(args.out, "--out")
    t = np.arange(steps) * args.dt
    current = np.where(t >= args.onset, args.current, 0.0).astype(np.float32)[:, None]
    on_ms = max(args.duration - max(args.onset, 0.0), 0.0)
    fig = Figure(figsize=(8, 1.9 * len(ss.SOMAS)), layout="constrained")
    axes = fig.subplots(len(ss.SOMAS), 1, sharex=True)
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
        "checkpoints", help=SUMMARIES["checkpoints"],
        description="List the steps saved in DIR with their time, model and metrics.")
    p.add_argument("directory", metavar="DIR")
    return p


def cmd_checkpoints(args: argparse.Namespace) -> int:
    from spark_somas.persistence.checkpointing import describe, format_listing

    print(format_listing(describe(args.directory)))
    return 0


#: name -> its line in ``spark-somas --help``, shown without building its parser.
SUMMARIES = {
    "train": "train a spiking network on digits, Randman, the cue task, SHD or SSC",
    "simulate": "the four default somas under a step current",
    "checkpoints": "list the checkpoints in a directory",
}

#: name -> (add its parser, run it). Add a subcommand by adding an entry here
#: and in :data:`SUMMARIES`.
SUBCOMMANDS: dict[str, tuple[Callable, Callable[[argparse.Namespace], int]]] = {
    "train": (add_train_parser, cmd_train),
    "simulate": (add_simulate_parser, cmd_simulate),
    "checkpoints": (add_checkpoints_parser, cmd_checkpoints),
}


def _version() -> str:
    try:
        return importlib.metadata.version("spark_somas")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        from spark_somas import __version__
        return __version__


def build_parser(*, options: bool = True) -> argparse.ArgumentParser:
    """The ``spark-somas`` parser; with ``options=False`` its subcommands
    are named without their options, which is all ``--help`` and
    ``--version`` need, and nothing of the training code (JAX) is imported."""
    parser = _Parser(
        prog="spark-somas",
        description="Exponential integrate-and-fire somas (Flax NNX): simulate and train.")
    parser.add_argument("--version", action="version", version=f"spark-somas {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add, run) in SUBCOMMANDS.items():
        if options:
            add(sub).set_defaults(func=run)
        else:
            sub.add_parser(name, help=SUMMARIES[name])
    return parser


def _given(argv: Sequence[str] | None) -> set[str]:
    """The options given on the command line (their ``dest``), told apart
    from defaults by parsing again with every default suppressed."""
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                for option in sub._actions:
                    option.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command", "func"}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``spark-somas`` with ``argv`` (default: the process arguments)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not set(argv) & set(SUBCOMMANDS):  # --help, --version or a usage error: exits here
        build_parser(options=False).parse_args(argv)
    args = build_parser().parse_args(argv)
    args.given = _given(argv)
    from spark_somas.persistence.checkpointing import CheckpointError
    from spark_somas.models.configs import ConfigError
    from spark_somas.data.datasets import DataError
    from spark_somas.training.runs import RunError
    from spark_somas.training import NonFiniteLossError

    def warn(message, category, filename, lineno, file=None, line=None):
        print(f"spark-somas {args.command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():  # a warning is one line too, as errors are
            warnings.showwarning = warn
            return args.func(args)
    except (CommandError, RunError, CheckpointError, ConfigError, DataError,
            NonFiniteLossError, OutOfMemoryError) as err:
        print(f"spark-somas {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
