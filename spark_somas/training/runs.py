"""A training run as a typed value: :class:`RunConfig` and the per-task :data:`RECIPES`.

A run is everything that decides its result — task, data, network, optimizer,
epochs, seeds — and how its time loop runs (``remat``, ``backend``: the same
result to float32 rounding), but nothing about where it runs (output
directory, progress bar, checkpoint directory). ``spark-somas train`` builds its options from
:class:`RunConfig`'s fields (each field's metadata holds its help text and
rule), saves ``run.to_dict()`` with every checkpoint, and ``--resume``
rebuilds the run with :meth:`RunConfig.from_dict`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
import time
import typing
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import numpy as np

from spark_somas.simulation import backends
from spark_somas.dynamics import numerics
from spark_somas.models import registry
from spark_somas.models import surrogates as surrogates_lib
from spark_somas.models.configs import require
from spark_somas.errors import RuleError, SparkSomasError, violation
from spark_somas.data.datasets import TASKS, Dataset
from spark_somas.training.encoders import Encoder
from spark_somas.training.objectives import Objective
from spark_somas.data.events import EVENT_DATASETS
from spark_somas.training.network import (HIDDEN, TRAINING_DETACH_ADAPTATION,
                                          TRAINING_DETACH_RESET, TRAINING_EXP_GRADIENT,
                                          TRAINING_SURROGATE, NetworkConfig)
from spark_somas.data.tasks import EvidenceAccumulation

__all__ = ["Recipe", "RECIPES", "recipe_values", "FILE_TASKS", "RunConfig", "Built", "train", "TrainResult",
           "RunError", "SavedRun", "saved_run", "SETTING_NAMES", "describe_splits"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A task's settings: encoder kind, time steps T (dt = 1 ms; None: set
    by the task's data), and the network's input gain and synapse τ_s (ms,
    None: no synapse); ``run`` the :class:`RunConfig` fields it sets where
    the run leaves them None (the others: :data:`RUN_DEFAULTS`), and
    ``soma_option`` / ``data_option`` the entries it adds where the run
    does not give the same key (a soma field only for a soma that has it)."""

    encoder: str
    steps: int | None
    input_gain: float
    synapse_tau: float | None
    run: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    soma_option: tuple[tuple[str, float], ...] = ()
    data_option: tuple[tuple[str, float], ...] = ()


#: What a run that leaves these fields None gets, unless its task's recipe says otherwise.
RUN_DEFAULTS: Mapping[str, Any] = {"epochs": 30, "lr": 5e-3, "hidden": 256, "recurrent": False,
                                   "fresh_data": False, "rate_strength": 0.0,
                                   "validation": False}


#: Per-task recipe (the measured results are on the docs page "Training
#: benchmarks"). Digits: constant input
#: currents, no synapse. Spike data (Randman, SHD/SSC bins, the cue task's
#: Bernoulli spikes): one-step inputs, which need the charge of a 5 ms
#: synapse and gain 3. SHD/SSC: 100 bins (14 ms for SHD, 10 ms for SSC),
#: one network step of dt = 1 ms each, the model selected on a validation
#: split (the test file evaluated once, after training). Cues: the trial's own length; a
#: recurrent layer of 64 somas trained end to end on new trials every epoch
#: (12 epochs of 12 updates, Adam 10⁻²), adaptation as slow as the task
#: (τ_w = τ_θ = 2 s, Bellec et al.'s 2018 τ_a), cues of 50 ms 25 ms apart,
#: and a rate regulariser (strength 0.1, 10 Hz) that keeps every soma kind
#: firing: without it the plain ExpIF layer falls silent (0.3 Hz); at 0.5 it
#: pinned every soma to 10 Hz and AdEx failed one seed of three (58.5 %).
RECIPES: dict[str, Recipe] = {
    "digits": Recipe("current", 25, 1.0, None),
    "randman": Recipe("spikes", 50, 3.0, 5.0),
    "shd": Recipe("spikes", 100, 3.0, 5.0, run={"validation": True}),
    "ssc": Recipe("spikes", 100, 3.0, 5.0, run={"validation": True}),
    "cues": Recipe("spikes", None, 3.0, 5.0,
                   run={"epochs": 12, "lr": 1e-2, "hidden": 64, "recurrent": True,
                        "fresh_data": True, "rate_strength": 0.1},
                   soma_option=(("adaptation_tau", 2000.0), ("threshold_tau", 2000.0)),
                   data_option=(("cue_ms", 50.0), ("gap_ms", 25.0))),
}

def recipe_values(task: str, soma: str) -> dict[str, Any]:
    """What the recipe of ``task`` gives a run of ``soma``: the value of
    every field a run may leave None (:data:`RUN_DEFAULTS`, then the
    recipe's ``run``), and ``soma_option`` / ``data_option``, the entries
    the recipe adds (a soma field only for a soma whose config has it). The
    one place a recipe is resolved: :class:`RunConfig` fills its None fields
    from it, and :meth:`RunConfig.command` leaves out what it gives."""
    recipe = RECIPES[task]
    cls = registry.SOMAS.get(soma)
    fields = {f.name for f in cls.config_class.quantity_fields()} if cls else set()
    return {**RUN_DEFAULTS, **recipe.run,
            "soma_option": tuple(kv for kv in recipe.soma_option if kv[0] in fields),
            "data_option": tuple(recipe.data_option)}


#: What ``RunConfig.frozen`` may name: the NNX filter of the parameters that do not learn.
FROZEN = {"none": None, "hidden": HIDDEN}

#: Tasks read from files in ``RunConfig.data_dir``.
FILE_TASKS = ("shd", "ssc")
#: Generated tasks that can draw new training samples every epoch (``fresh_data``).
FRESH_TASKS = ("cues", "randman")


def option(default: Any, help: str, *, positive: bool = False, choices: Any = None,
           metavar: str | None = None) -> Any:
    """A :class:`RunConfig` field with what its command-line option needs:
    help text, whether it must be > 0 (and finite), its choices (a callable
    is called when the parser is built) and metavar."""
    return dataclasses.field(default=default, metadata={
        "help": help, "positive": positive, "choices": choices, "metavar": metavar})


class Built(NamedTuple):
    """What a :class:`RunConfig` builds: the data, its encoder, the network and its optimizer."""

    data: Dataset
    encoder: Encoder
    model: Any
    optimizer: Any


def _check_field(field: dataclasses.Field, hint: Any, value: Any) -> None:
    """``value`` is of the field's type (None only where the type allows it),
    > 0 where the field's metadata asks, one of its choices if it has them:
    what the command-line parser checks, checked again for a run read from
    a checkpoint."""
    kinds = (hint, *typing.get_args(hint))
    if value is None:
        require(type(None) in kinds, field.name, value, "not None", error=RuleError)
        return
    choices = field.metadata["choices"]
    choices = choices() if callable(choices) else choices
    if bool in kinds:
        ok, rule = isinstance(value, bool), "a bool"
    elif int in kinds:
        ok, rule = isinstance(value, (int, np.integer)) and not isinstance(value, bool), "an int"
    elif float in kinds:
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
            value, bool) and math.isfinite(value)
        rule = "a finite number"
    elif str in kinds:
        ok, rule = isinstance(value, str), "a str"
    else:  # data_option: (key, number) pairs
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(kv, (list, tuple)) and len(kv) == 2 and isinstance(kv[0], str)
            and isinstance(kv[1], (int, float)) and not isinstance(kv[1], bool) for kv in value)
        rule = "a sequence of (KEY, number) pairs"
    if ok and field.metadata["positive"]:
        ok, rule = value > 0, rule + " > 0"
    if ok and choices is not None:
        ok, rule = value in choices, f"one of {sorted(choices)}"
        same = [c for c in choices if isinstance(value, str) and str(c).lower() == value.lower()]
        rule += f" (did you mean {same[0]!r}?)" if same and not ok else ""
    require(ok, field.name, value, rule, error=RuleError)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run of :class:`~spark_somas.training.network.SpikingNetwork`."""

    soma: str = option("adex", "hidden soma model", choices=lambda: sorted(registry.SOMAS))
    task: str = option("digits", "the task", choices=lambda: sorted(TASKS))
    epochs: int | None = option(None, "epochs (default: the task's recipe, 30 for most)",
                                positive=True)
    batch_size: int = option(64, "batch size", positive=True)
    lr: float | None = option(None, "peak Adam learning rate, cosine decay to 0 (default: the "
                              "task's recipe, 5e-3 for most)", positive=True)
    hidden: int | None = option(None, "hidden somas per layer (default: the task's recipe, 256 "
                                "for most)", positive=True)
    depth: int = option(1, "hidden layers, each of --hidden somas", positive=True)
    steps: int | None = option(None, "time steps of dt = 1 ms (default: the task's recipe; "
                               "shd/ssc: bins; cues: set by the trial's timing)", positive=True)
    seed: int = option(0, "initialisation, data order, noise")
    data_seed: int = option(0, "train/test split, Randman manifolds, cue trials")
    data_dir: str | None = option(None, "directory holding the SHD/SSC HDF5 files "
                                  "(shd_train.h5, shd_test.h5; ssc_*.h5)", metavar="DIR")
    validation: bool | None = option(
        None, "shd/ssc: evaluate each epoch, and keep the best checkpoints, on a validation "
        "split — a class-stratified tenth of shd_train.h5 (--data-option "
        "validation_fraction=F), ssc_valid.h5 —, and the test file once, after training; "
        "--no-validation evaluates each epoch on the test file (default: the task's recipe; "
        "shd/ssc: validation)")
    data_option: tuple[tuple[str, float], ...] = option(
        (), "extra keyword of the task's loader, repeatable, e.g. manifold_dim=2 (randman), "
        "bin_ms=10 or pool=2 (shd/ssc), delay_ms=500 or n_samples=400 (cues); see "
        "spark_somas.data.datasets, .events, .tasks", metavar="KEY=VALUE")
    soma_option: tuple[tuple[str, float], ...] = option(
        (), "a soma config field for every layer, repeatable, e.g. adaptation_tau=1000 (ms) or "
        "threshold_tau=1000; see the soma configs", metavar="KEY=VALUE")
    encoder: str | None = option(None, "input code for digits (default: the recipe's)",
                                 choices=("current", "poisson", "latency"))
    recurrent: bool | None = option(None, "recurrent hidden layer (default: the task's recipe; "
                                    "cues: recurrent)")
    input_gain: float | None = option(
        None, "input weights' scale, in units of the somas' rheobase current (default: the "
        "task's recipe)", positive=True)
    frozen: str = option("none", "parameters that stay as drawn: none, or hidden (every hidden "
                         "layer; only the readout learns, a liquid-state machine)",
                         choices=tuple(FROZEN))
    trainable_neurons: bool = option(
        False, "train per-neuron tau_m, threshold (and a, b, tau_w / theta tau, delta), "
        "projected into their config rules after each step")
    limit: int | None = option(None, "use only the first N train and N test samples",
                               positive=True)
    remat: int | None = option(None, "BPTT memory: keep one state per K steps and recompute "
                               "the others on the backward pass (default: keep every step)",
                               positive=True, metavar="K")
    backend: str = option("auto", "time loop: 'scan', 'fused' (the network step in one Pallas "
                          "kernel; interpreted off a GPU) or 'auto' (the scan until the kernels "
                          "are measured faster)", choices=backends.BACKENDS)
    surrogate: str | None = option(
        surrogates_lib.to_spec(TRAINING_SURROGATE), "the somas' surrogate gradient, "
        "NAME[:KEY=VALUE,...]; relative=true measures widths in units of each cell's "
        "V_th - E_L, damping scales it", metavar="SPEC")
    exp_gradient: str | None = option(
        TRAINING_EXP_GRADIENT, "backward pass of the exponential term: exact, bounded (its "
        "slope held at its value at V_T beyond V_T) or detached",
        choices=numerics.EXP_GRADIENTS)
    detach_reset: bool = option(
        TRAINING_DETACH_RESET, "cut the gradient through the reset V <- V_r at each spike")
    detach_adaptation: bool = option(
        TRAINING_DETACH_ADAPTATION, "cut the gradient through the adaptation jumps w <- w + b, "
        "theta <- theta + delta at each spike (then no gradient crosses a delay of seconds)")
    adaptive_fraction: float = option(
        1.0, "share of each hidden layer's somas that adapt (the others have a = b = 0 or "
        "theta delta = 0), 0 ... 1")
    fresh_data: bool | None = option(
        None, "draw new training trials every epoch (cues, randman), seeded by --data-seed and "
        "the epoch, so a resumed run draws what the unbroken one would (default: the task's "
        "recipe; cues: new trials)")
    rate_hz: float = option(10.0, "target firing rate (Hz) of the rate regulariser",
                            positive=True)
    rate_strength: float | None = option(
        None, "weight of the rate regulariser, the mean over neurons of ((r_n − r*)/r*)², on "
        "every hidden soma, which keeps each soma kind firing (default: the task's recipe; 0 "
        "for most)")
    recipe_options: dataclasses.InitVar[bool] = True

    def __post_init__(self, recipe_options: bool) -> None:
        self._apply_recipe(recipe_options)
        hints = typing.get_type_hints(RunConfig)
        for field in dataclasses.fields(self):
            _check_field(field, hints[field.name], getattr(self, field.name))
        for name in ("seed", "data_seed"):
            value = getattr(self, name)
            require(0 <= value < 2**32, name, value, "an int in 0 … 2^32 − 1", error=RuleError)
        require(self.task in TASKS, "task", self.task, f"one of {sorted(TASKS)}", error=RuleError)
        registry.soma_class(self.soma)
        if self.task in FILE_TASKS:
            files = [f for k, f in EVENT_DATASETS[self.task].items() if k != "classes" and f]
            require(self.data_dir is not None, "data_dir", self.data_dir,
                    f"the directory holding {', '.join(files[:-1])} and {files[-1]} for task "
                    f"{self.task!r}, or download them once: --download on the command line, "
                    f"spark_somas.data.fetch.fetch({self.task!r}) in Python", error=RuleError)
        object.__setattr__(self, "data_option", tuple(tuple(kv) for kv in self.data_option))
        object.__setattr__(self, "soma_option", tuple(tuple(kv) for kv in self.soma_option))
        fields = {f.name for f in registry.soma_class(self.soma).config_class.quantity_fields()}
        for key, _ in self.soma_option:
            require(key in fields, "soma_option", key, f"a numeric field of the {self.soma} "
                    f"config, one of {sorted(fields)}", error=RuleError)
        if self.surrogate is not None:
            surrogates_lib.from_spec(self.surrogate)  # a bad spec is named here, before any work
        require(self.exp_gradient is None or self.exp_gradient in numerics.EXP_GRADIENTS,
                "exp_gradient", self.exp_gradient, f"one of {numerics.EXP_GRADIENTS}",
                error=RuleError)
        require(0.0 <= self.adaptive_fraction <= 1.0, "adaptive_fraction",
                self.adaptive_fraction, "0 ≤ adaptive_fraction ≤ 1", error=RuleError)
        require(not self.fresh_data or self.task in FRESH_TASKS, "fresh_data", self.fresh_data,
                f"only for a generated task, one of {FRESH_TASKS}", error=RuleError)
        require(not self.validation or self.task in FILE_TASKS, "validation", self.validation,
                f"only for a task read from files, one of {FILE_TASKS} (a generated task's "
                "test split is drawn apart from its training split)", error=RuleError)

    def _apply_recipe(self, options: bool) -> None:
        """Fields left None take :func:`recipe_values`; with ``options``, the
        recipe's soma and data options are added under the run's own."""
        if self.task not in RECIPES:
            return  # an unknown task: refused by name below
        values = recipe_values(self.task, self.soma)
        for name, value in values.items():
            if name not in ("soma_option", "data_option") and getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if not options:
            return
        for name in ("soma_option", "data_option"):
            given = tuple(tuple(kv) for kv in getattr(self, name))
            keys = {kv[0] for kv in given if isinstance(kv, (list, tuple)) and kv}
            object.__setattr__(self, name, tuple(kv for kv in values[name]
                                                 if kv[0] not in keys) + given)

    @property
    def recipe(self) -> Recipe:
        return RECIPES[self.task]

    @property
    def time_steps(self) -> int | None:
        """T: ``steps``, or the recipe's (None: set by the task's data)."""
        return self.steps or self.recipe.steps

    def data_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the task's loader."""
        extra: dict[str, Any] = {}
        if self.task == "randman":
            extra = {"n_steps": self.time_steps}
        elif self.task in FILE_TASKS:
            extra = {"data_dir": self.data_dir, "steps": self.time_steps, "limit": self.limit,
                     "holdout": "validation" if self.validation else "test"}
        return {"seed": self.data_seed} | extra | dict(self.data_option)

    @property
    def eval_split(self) -> str:
        """What each epoch is evaluated on: "validation" or "test" (``fit``'s ``eval_split``)."""
        return "validation" if self.validation else "test"

    def cue_task(self) -> EvidenceAccumulation:
        """The cue task's timing (``data_option`` entries that are its fields)."""
        names = {f.name for f in dataclasses.fields(EvidenceAccumulation)}
        return EvidenceAccumulation(**{k: v for k, v in self.data_option if k in names})

    def objective(self) -> Objective:
        """The loss: cross-entropy plus ``rate_strength`` × the rate
        regulariser towards ``rate_hz`` on every hidden layer."""
        return Objective(rate_target_hz=self.rate_hz, rate_strength=self.rate_strength)

    def make_encoder(self, data: Dataset) -> Encoder:
        """Spike data pass through (T: the data's); static data take
        ``encoder`` or the recipe's."""
        if data.encoding == "spikes":
            return Encoder("spikes", int(data.x_train.shape[1]))
        return Encoder(self.encoder or self.recipe.encoder, self.time_steps)

    def network(self, data: Dataset) -> NetworkConfig:
        """The architecture for ``data``'s features and classes: ``depth``
        layers of ``hidden`` somas; for the cue task, a readout over the
        recall period only."""
        window = (-self.cue_task().recall_steps, None) if self.task == "cues" else None
        return NetworkConfig(data.n_features, self.hidden if self.depth == 1
                             else (self.hidden,) * self.depth, data.n_classes, soma=self.soma,
                             recurrent=self.recurrent, trainable_neurons=self.trainable_neurons,
                             input_gain=self.input_gain or self.recipe.input_gain,
                             synapse_tau=self.recipe.synapse_tau, readout_window=window,
                             remat=self.remat or False, backend=self.backend,
                             soma_kwargs=dict(self.soma_option),
                             surrogate=(None if self.surrogate is None
                                        else surrogates_lib.from_spec(self.surrogate)),
                             exp_gradient=self.exp_gradient, detach_reset=self.detach_reset,
                             detach_adaptation=self.detach_adaptation,
                             adaptive_fraction=self.adaptive_fraction)

    def build(self, data: Dataset | None = None) -> Built:
        """The run's data (loaded by its task's loader unless given), encoder,
        network (seeded by ``seed``) and optimizer (:func:`~spark_somas.training.loop.make_optimizer`,
        cosine decay over the run's updates; ``frozen`` parameters left out): what
        ``spark-somas train`` trains."""
        from flax import nnx

        from spark_somas.data import datasets
        from spark_somas.training.loop import make_optimizer
        from spark_somas.training.network import SpikingNetwork

        if data is None:
            data = datasets.load_task(self.task, **self.data_kwargs()).limit(self.limit)
        model = SpikingNetwork.from_config(self.network(data), nnx.Rngs(self.seed))
        batch = min(self.batch_size, len(data.x_train))
        optimizer = make_optimizer(model, self.lr,
                                   total_steps=self.epochs * (len(data.x_train) // batch),
                                   frozen=FROZEN[self.frozen])
        return Built(data, self.make_encoder(data), model, optimizer)

    def command(self) -> str:
        """The ``spark-somas train`` command line of this run (options that
        differ from what the task's recipe gives by default)."""
        words = ["spark-somas", "train"]
        recipe = recipe_values(self.task, self.soma)
        for f in dataclasses.fields(self):
            value, flag = getattr(self, f.name), "--" + f.name.replace("_", "-")
            if value == recipe.get(f.name, f.default):
                continue
            if f.name in ("data_option", "soma_option"):
                words += [w for k, v in value if (k, v) not in recipe[f.name]
                          for w in (flag, f"{k}={v:g}")]
            elif isinstance(value, bool):
                words.append(flag if value else "--no-" + flag[2:])
            else:
                words += [flag, str(value)]
        return " ".join(words)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON)."""
        return dataclasses.asdict(self) | {"data_option": [list(kv) for kv in self.data_option],
                                           "soma_option": [list(kv) for kv in self.soma_option]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        """Inverse of :meth:`to_dict` (keys added since, missing from an older
        run's dict, take their defaults, except what an older run meant by
        their absence: ``surrogate`` and ``exp_gradient`` None, the soma
        config's own; ``detach_reset`` and ``detach_adaptation`` True, both
        cut, as one switch did then; no fresh data; no validation split, each
        epoch evaluated on the test file). The saved soma and
        data options are the whole of them: a recipe's are not added again.
        Unknown keys (a run saved by a
        newer version) and values that break a field's rule raise
        ``ValueError`` naming them."""
        require(isinstance(d, Mapping), "run", d, "a dict of RunConfig fields", error=RuleError)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        require(not unknown, "run", unknown, f"only RunConfig fields, {sorted(names)} "
                "(the run was saved by another version?)", error=RuleError)
        d = {"validation": False, **d}
        if "fresh_data" in d:
            return cls(**d, recipe_options=False)
        # Written before the recipes set options: the run as it was then.
        return cls(**{"surrogate": None, "exp_gradient": None, "detach_reset": True,
                      "detach_adaptation": True, "fresh_data": False, "rate_strength": 0.0,
                      **d}, recipe_options=False)


# --- Running one: what ``spark-somas train`` does, as a function -----------------------------

#: How :func:`train`'s messages name its settings; the command line passes
#: its options instead (``{"out_dir": "--out", ...}``).
SETTING_NAMES: dict[str, str] = {
    "out_dir": "out_dir", "checkpoint_dir": "checkpoint_dir", "tensorboard": "tensorboard",
    "download": "download", "data_dir": "data_dir", "data_option": "data_option",
    "encoder": "encoder", "resume": "resume=True and checkpoint_dir"}


class RunError(SparkSomasError):
    """A run that cannot go on — a directory, its data, the run to resume:
    one line naming the setting at fault (as ``train``'s ``names`` spell it)."""


class SavedRun(NamedTuple):
    """What ``train`` saved with its newest checkpoint in a directory."""

    run: dict[str, Any]  # the RunConfig's to_dict()
    history: dict[str, list]
    epochs_done: int


class TrainResult(NamedTuple):
    """What :func:`train` did: the run, the settings it reported, the
    history (a resumed run's earlier epochs included; its ``test_*`` or,
    with ``run.validation``, ``validation_*`` keys per epoch), the trained
    network, the data (with ``run.validation`` its held-out split is the
    validation split), the hidden spikes of the first held-out sample (T,
    N), the first epoch of this call, the wall seconds (compilation
    included), the files written (the PNG and the JSON) and ``test``: with
    ``run.validation``, the final network's loss, accuracy and rate_hz on
    the test file, evaluated once after training (else None: the history's
    last ``test_*`` entries are those)."""

    run: RunConfig
    settings: dict[str, Any]
    history: dict[str, list]
    model: Any
    data: Dataset
    raster: np.ndarray
    start_epoch: int
    wall_seconds: float
    files: tuple[str, ...]
    test: dict[str, float] | None = None


def saved_run(directory: str, name: str = "checkpoint_dir") -> SavedRun:
    """The run, history and epochs of the newest step in ``directory`` when
    :func:`train` wrote it; else :class:`RunError` naming ``name``."""
    from spark_somas.persistence.checkpointing import CheckpointError, Checkpointer

    try:
        with Checkpointer(directory, read_only=True) as ckpt:
            meta = ckpt.metadata()
    except CheckpointError as err:
        raise RunError(f"{name}: {err}") from None
    extra = meta.get("extra")
    if (meta["model"].get("type") != "SpikingNetwork" or not isinstance(extra, dict)
            or not isinstance(extra.get("run"), dict)
            or not isinstance(extra.get("history"), dict)):
        raise RunError(violation(
            f"{name} {directory}", f"a directory written by 'spark-somas train "
            f"--checkpoint-dir' (its step {meta['step']} holds a "
            f"{meta['model'].get('type') or meta['model'].get('class')} without the training "
            "settings and history)"))
    return SavedRun(extra["run"], extra["history"], meta["step"])


def _check_resumed(run: RunConfig, directory: str, names: Mapping[str, str]) -> SavedRun:
    """The run saved in ``directory``, which ``run`` continues: the same run
    but for more epochs."""
    saved = saved_run(directory, names["checkpoint_dir"])
    try:
        before = RunConfig.from_dict(saved.run)
    except ValueError as err:
        raise RunError(f"{names['checkpoint_dir']} {directory}: the run saved there cannot be "
                       f"rebuilt by this version ({err})") from None
    differ = [f.name for f in dataclasses.fields(RunConfig)
              if f.name != "epochs" and getattr(run, f.name) != getattr(before, f.name)]
    require(not differ, "run fields", differ, f"those of the run saved in {directory} (only "
            "epochs may change, to extend it)", error=RunError)
    require(run.epochs > saved.epochs_done, "epochs", run.epochs, f"more than the "
            f"{saved.epochs_done} epochs the run saved in {directory} has done", error=RunError)
    return saved


def _new_checkpoint_dir(directory: str, names: Mapping[str, str]) -> None:
    """Refuses a checkpoint directory that already holds checkpoints, before
    any work: a new run would fail at its first save (steps are never overwritten)."""
    import shlex

    from spark_somas.persistence.checkpointing import Checkpointer

    if not os.path.isdir(directory):
        return
    with Checkpointer(directory, read_only=True) as ckpt:
        steps = ckpt.all_steps()
    if steps:
        raise RunError(violation(
            f"{names['checkpoint_dir']} {directory}", f"a new or empty directory "
            f"(it holds the checkpoints of epochs {steps}); continue that run with "
            f"{names['resume']} {shlex.quote(directory)}, or choose another directory"))


def _check_places(run: RunConfig, out_dir: str, checkpoint_dir: str | None, resume: bool,
                  tensorboard: str | None, download: bool,
                  names: Mapping[str, str]) -> SavedRun | None:
    """Everything about where the run goes, checked before any work: the
    directories writable, a new run's checkpoint directory empty, a resumed
    one holding this run, TensorBoard installed when asked for."""
    from spark_somas.persistence.checkpointing import check_writable, check_directory

    require(not download or run.task in FILE_TASKS and not resume, names["download"], download,
            f"only for task {' or '.join(sorted(FILE_TASKS))}, without {names['resume']}",
            error=RunError)
    require(not resume or checkpoint_dir is not None, "resume", resume,
            f"with the {names['checkpoint_dir']} to resume", error=RunError)
    saved = None
    if checkpoint_dir is not None:
        checkpoint_dir = check_directory(checkpoint_dir, names["checkpoint_dir"])
        if resume:
            saved = _check_resumed(run, checkpoint_dir, names)
        else:
            _new_checkpoint_dir(checkpoint_dir, names)
    for key, directory in (("out_dir", out_dir), ("checkpoint_dir", checkpoint_dir),
                           ("tensorboard", tensorboard)):
        if directory:
            check_writable(directory, names[key], error=RunError)
    if tensorboard and importlib.util.find_spec("tensorboardX") is None:
        raise RunError(f'{names["tensorboard"]} needs tensorboardX: pip install '
                       '"spark_somas[tensorboard]"')
    return saved


def _load_data(run: RunConfig, download: bool, progress: bool,
               names: Mapping[str, str]) -> Dataset:
    """The run's data (first downloaded when asked), errors as one :class:`RunError` line."""
    from spark_somas.data import datasets
    from spark_somas.data.events import EventDatasetMissing

    if download:
        from spark_somas.persistence.checkpointing import check_writable
        from spark_somas.data.fetch import DownloadError, fetch

        check_writable(run.data_dir, names["data_dir"], error=RunError)
        try:
            fetch(run.task, run.data_dir, progress=progress)
        except DownloadError as err:
            raise RunError(f"{names['download']}: {err}") from None
    try:
        data = datasets.load_task(run.task, **run.data_kwargs()).limit(run.limit)
    except EventDatasetMissing as err:
        raise RunError(f"{names['data_dir']} {run.data_dir}: {err}") from None
    except datasets.DataError as err:  # a damaged file, or data breaking a rule
        where = f"{names['data_dir']} {run.data_dir}: " if run.data_dir else f"{run.task} data: "
        raise RunError(where + str(err)) from None
    except (TypeError, ValueError) as err:  # an unknown data_option key or a bad value
        if not run.data_option:
            raise RunError(f"{run.task} data: {err}") from None
        raise RunError(violation(names["data_option"], f"a keyword of the {run.task} loader "
                                 f"with a valid value ({err})")) from None
    if data.encoding == "spikes" and run.encoder not in (None, "spikes"):
        raise RunError(violation(f"{names['encoder']} {run.encoder}",
                                 f"{run.task} is spike data"))
    if run.validation and len(data.x_test) == 0:
        raise RunError(violation(
            f"{names['data_option']} validation_fraction="
            f"{dict(run.data_option).get('validation_fraction', 0.1):g}",
            f"a validation split of at least one sample ({len(data.x_train)} training samples "
            f"of {data.n_classes} classes leave none; a larger fraction, or no validation)"))
    return data


def _load_test_file(run: RunConfig, names: Mapping[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """The test file of a run that selects on a validation split, binned as
    its training file; read before training, so that a missing or damaged
    file stops the run before any work, and evaluated once, after it."""
    from spark_somas.data import datasets
    from spark_somas.data.events import EventDatasetMissing, load_test_file

    kwargs = {k: v for k, v in run.data_kwargs().items()
              if k not in ("data_dir", "seed", "holdout", "validation_fraction")}
    try:
        x, y = load_test_file(run.task, run.data_dir, **kwargs)
    except (EventDatasetMissing, datasets.DataError) as err:
        raise RunError(f"{names['data_dir']} {run.data_dir}: {err}") from None
    return x[:run.limit], y[:run.limit]


def _settings(run: RunConfig, built: Built) -> dict[str, Any]:
    """What the run reports and writes next to its history: its fields and
    what they resolved to (steps, encoder, dt, currents, the time loop)."""
    model = built.model
    return run.to_dict() | {
        "steps": built.encoder.steps, "encoder": built.encoder.kind, "dt_ms": model.dt,
        "input_gain": run.recipe.input_gain, "synapse_tau_ms": run.recipe.synapse_tau,
        "current_scale_pA": [layer.scale for layer in model.layers],
        "readout_window": model.config.readout_window,
        "time_loop": backends.resolve_backend(run.backend)}


def _write_report(run: RunConfig, out_dir: str, history: Mapping[str, list],
                  raster: np.ndarray, settings: Mapping[str, Any], dt: float,
                  wall: float, test: Mapping[str, float] | None) -> tuple[str, str]:
    """``<out_dir>/train_<task>_<soma>.png`` (curves and the raster, drawn
    without pyplot: no display, no backend to choose) and ``.json``
    (``splits`` says what each number was measured on)."""
    from matplotlib.figure import Figure

    from spark_somas.training.loop import plot_training

    stem = os.path.join(out_dir, f"train_{run.task}_{run.soma}")
    held = run.eval_split
    accuracy = history[f"{held}_accuracy"][-1]
    title = f"{run.soma} on {run.task}: {held} accuracy {100.0 * accuracy:.2f}%"
    if test is not None:
        title += f", test accuracy {100.0 * test['accuracy']:.2f}% (once, after training)"
    figure = plot_training(history, raster, dt=dt, figure=Figure(), title=title)
    figure.savefig(stem + ".png", dpi=120)
    splits = {"train_*": "the training batches of each epoch, as trained",
              f"{held}_*": _held_out_name(run) + ", after each epoch"}
    if test is not None:
        splits["test"] = _test_name(run) + ", the final network, once after training"
    with open(stem + ".json", "w") as f:
        json.dump({"settings": settings, "splits": splits, "history": history,
                   "test": test, "wall_seconds": wall}, f, indent=1)
    return stem + ".png", stem + ".json"


def _test_name(run: RunConfig) -> str:
    if run.task in FILE_TASKS:
        return f"the test file {EVENT_DATASETS[run.task]['test']}"
    return f"the {run.task} test split"


def _held_out_name(run: RunConfig) -> str:
    """What a run evaluates after each epoch, in words (the report's ``splits``)."""
    if not run.validation:
        return _test_name(run)
    spec = EVENT_DATASETS[run.task]
    if spec["validation"]:
        return f"the validation file {spec['validation']}"
    fraction = dict(run.data_option).get("validation_fraction", 0.1)
    return f"a class-stratified {fraction:g} of {spec['train']} held out of training"


def describe_splits(run: RunConfig) -> dict[str, str]:
    """What each number of a run is measured on: ``{"epochs": ..., "test": ...}``
    in words, as the report and the command line say it."""
    return {"epochs": _held_out_name(run),
            "test": _test_name(run) + (" (once, after training)" if run.validation else "")}


def train(run: RunConfig, out_dir: str = "out", *, checkpoint_dir: str | None = None,
          resume: bool = False, keep_last: int = 3, keep_best: int = 1,
          tensorboard: str | None = None, download: bool = False,
          epoch_on_device: bool | None = None, progress: bool = True,
          callbacks: Sequence[Any] = (), echo: Callable[[str], None] | None = None,
          names: Mapping[str, str] | None = None) -> TrainResult:
    """Runs ``run`` as ``spark-somas train`` does (the command line parses
    its options into a :class:`RunConfig` and calls this).

    Checks first, before any data are loaded, where the run goes
    (``out_dir``, ``checkpoint_dir``, ``tensorboard``: writable; a new run's
    checkpoint directory empty; with ``resume``, the directory holds this
    run, which ``run`` may only extend by ``epochs``). Then downloads the
    data when ``download`` (SHD/SSC into ``run.data_dir``), loads them,
    builds the network and optimizer (:meth:`RunConfig.build`), restores
    the newest checkpoint when resuming, and trains with
    :func:`~spark_somas.training.loop.fit`: a progress bar when ``progress``, a
    :class:`~spark_somas.training.callbacks.Checkpoint` after every epoch into
    ``checkpoint_dir`` (keeping the newest ``keep_last``, 0: all, and the
    ``keep_best`` by the accuracy evaluated after each epoch: on the
    validation split with ``run.validation``, else on the test split;
    ``extra`` holds the history and
    ``run.to_dict()``), TensorBoard scalars and histograms, then
    ``callbacks`` of your own. With ``run.validation`` (SHD/SSC by
    default) each epoch is evaluated on the validation split and the test
    file, read before training, is evaluated once, after it
    (``TrainResult.test``). Last it writes ``<out_dir>/train_<task>_<soma>.png``
    and ``.json`` (settings, ``splits``: what each number was measured on,
    history, the test metrics, wall seconds).

    ``echo`` receives a line about the data and settings before training
    and one when a run is resumed (the command line prints them). A problem
    of the run's places or data raises :class:`RunError`, its message
    naming the setting as ``names`` spell them (:data:`SETTING_NAMES` by
    default). An interrupt (KeyboardInterrupt, or the command line's
    signals) stops training with the saved epochs committed.
    """
    from spark_somas.training.loop import evaluate, evaluation_key, fit, record

    t0 = time.perf_counter()
    say = echo or (lambda line: None)
    names = {**SETTING_NAMES, **(names or {})}
    saved = _check_places(run, out_dir, checkpoint_dir, resume, tensorboard, download, names)
    data = _load_data(run, download, progress, names)
    built = run.build(data)
    test = _load_test_file(run, names) if run.validation else None
    settings = _settings(run, built)
    say(f"{data!r}" + (f" (held out: the validation split; the test file, {len(test[1])} "
                       "samples, is evaluated once after training)" if test else "")
        + f"\n  {settings}")
    history, start_epoch, hooks, closers = _train_hooks(
        run, built, checkpoint_dir, saved, keep_last, keep_best, tensorboard, progress, say)
    try:
        history = fit(built.model, built.optimizer, data, encoder=built.encoder,
                      epochs=run.epochs, batch_size=min(run.batch_size, len(data.x_train)),
                      seed=run.seed, start_epoch=start_epoch, history=history,
                      epoch_on_device=epoch_on_device, callbacks=[*hooks, *callbacks],
                      fresh_data=run.fresh_data, objective=run.objective(),
                      eval_split=run.eval_split)
    finally:
        for close in closers:  # the pending save committed: the last epoch is complete
            close()
    final = None
    if test is not None:
        final = evaluate(built.model, *test, encoder=built.encoder, objective=run.objective(),
                         key=evaluation_key(run.seed))
    wall = time.perf_counter() - t0
    sample = record(built.model, data.x_test[:1], jax.random.key(run.seed), encoder=built.encoder)
    raster = np.asarray(sample.hidden_spikes[:, 0])
    files = _write_report(run, out_dir, history, raster, settings, built.model.dt, wall, final)
    return TrainResult(run, settings, history, built.model, data, raster, start_epoch, wall,
                       files, final)


def _train_hooks(run: RunConfig, built: Built, checkpoint_dir: str | None,
                 saved: SavedRun | None, keep_last: int, keep_best: int,
                 tensorboard: str | None, progress: bool, say: Callable[[str], None]):
    """Where the run starts and the callbacks ``train`` runs: (history,
    start epoch, callbacks — bar, checkpoint, TensorBoard —, what closes
    their files); a resumed run's newest checkpoint restored into the model
    and optimizer."""
    from spark_somas.training.callbacks import Checkpoint, EpochEnd, ProgressBar

    hooks: list[Any] = [ProgressBar()] if progress else []
    closers: list[Callable[[], None]] = []
    history, start_epoch = None, 0
    if checkpoint_dir is not None:
        # Orbax logs a failed background write with its tracebacks; the
        # failure itself reaches the user as one CheckpointNotWritableError line.
        logging.getLogger("absl").setLevel(logging.CRITICAL)
        held = run.eval_split
        checkpoint = Checkpoint(checkpoint_dir, keep_last=keep_last, keep_best=keep_best,
                                best_metric=f"{held}_accuracy",
                                metrics=(f"{held}_accuracy", f"{held}_loss"),
                                extra={"run": run.to_dict()})
        hooks.append(checkpoint)
        closers.append(checkpoint.close)
        if saved is not None:
            try:
                start_epoch = checkpoint.open().restore(built.model, built.optimizer)
            except BaseException:
                checkpoint.close()
                raise
            history = saved.history
            say(f"resumed {checkpoint.checkpointer.directory} after epoch {start_epoch}")
    if tensorboard:  # a resumed run hides the events the old run wrote after its save
        from spark_somas.persistence.loggers import TensorBoardLogger

        board = TensorBoardLogger(tensorboard, histograms=True,
                                  purge_step=start_epoch + 1 if start_epoch else None)
        hooks.append(EpochEnd(board))
        closers.append(board.close)
    return history, start_epoch, hooks, closers
