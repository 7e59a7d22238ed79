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
import math
import typing
from typing import Any, Mapping, NamedTuple

import numpy as np

from spark_somas import backends, numerics, registry
from spark_somas import surrogates as surrogates_lib
from spark_somas.configs import require
from spark_somas.datasets import TASKS, Dataset
from spark_somas.encoders import Encoder
from spark_somas.events import EVENT_DATASETS
from spark_somas.network import TRAINING_EXP_GRADIENT, TRAINING_SURROGATE, NetworkConfig
from spark_somas.tasks import EvidenceAccumulation

__all__ = ["Recipe", "RECIPES", "FILE_TASKS", "RunConfig", "Built"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A task's settings: encoder kind, time steps T (dt = 1 ms; None: set
    by the task's data), and the network's input gain and synapse τ_s (ms,
    None: no synapse)."""

    encoder: str
    steps: int | None
    input_gain: float
    synapse_tau: float | None


#: Per-task recipe (benchmarks/TRAINING.md). Digits: constant input
#: currents, no synapse. Spike data (Randman, SHD/SSC bins, the cue task's
#: Bernoulli spikes): one-step inputs, which need the charge of a 5 ms
#: synapse and gain 3. SHD/SSC: 100 bins (14 ms for SHD, 10 ms for SSC),
#: one network step of dt = 1 ms each. Cues: the trial's own length.
RECIPES: dict[str, Recipe] = {
    "digits": Recipe("current", 25, 1.0, None),
    "randman": Recipe("spikes", 50, 3.0, 5.0),
    "shd": Recipe("spikes", 100, 3.0, 5.0),
    "ssc": Recipe("spikes", 100, 3.0, 5.0),
    "cues": Recipe("spikes", None, 3.0, 5.0),
}

#: Tasks read from files in ``RunConfig.data_dir``.
FILE_TASKS = ("shd", "ssc")


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
        require(type(None) in kinds, field.name, value, "not None", error=ValueError)
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
    require(ok, field.name, value, rule, error=ValueError)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run of :class:`~spark_somas.network.SpikingNetwork`."""

    soma: str = option("adex", "hidden soma model", choices=lambda: sorted(registry.SOMAS))
    task: str = option("digits", "the task", choices=lambda: sorted(TASKS))
    epochs: int = option(30, "epochs", positive=True)
    batch_size: int = option(64, "batch size", positive=True)
    lr: float = option(5e-3, "peak Adam learning rate (cosine decay to 0)", positive=True)
    hidden: int = option(256, "hidden somas per layer", positive=True)
    depth: int = option(1, "hidden layers, each of --hidden somas", positive=True)
    steps: int | None = option(None, "time steps of dt = 1 ms (default: the task's recipe; "
                               "shd/ssc: bins; cues: set by the trial's timing)", positive=True)
    seed: int = option(0, "initialisation, data order, noise")
    data_seed: int = option(0, "train/test split, Randman manifolds, cue trials")
    data_dir: str | None = option(None, "directory holding the SHD/SSC HDF5 files "
                                  "(shd_train.h5, shd_test.h5; ssc_*.h5)", metavar="DIR")
    data_option: tuple[tuple[str, float], ...] = option(
        (), "extra keyword of the task's loader, repeatable, e.g. manifold_dim=2 (randman), "
        "bin_ms=10 or pool=2 (shd/ssc), delay_ms=500 or n_samples=400 (cues); see "
        "spark_somas.datasets, .events, .tasks", metavar="KEY=VALUE")
    soma_option: tuple[tuple[str, float], ...] = option(
        (), "a soma config field for every layer, repeatable, e.g. adaptation_tau=1000 (ms) or "
        "threshold_tau=1000; see the soma configs", metavar="KEY=VALUE")
    encoder: str | None = option(None, "input code for digits (default: the recipe's)",
                                 choices=("current", "poisson", "latency"))
    recurrent: bool = option(False, "recurrent hidden layer")
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

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(RunConfig)
        for field in dataclasses.fields(self):
            _check_field(field, hints[field.name], getattr(self, field.name))
        for name in ("seed", "data_seed"):
            value = getattr(self, name)
            require(0 <= value < 2**32, name, value, "an int in 0 … 2^32 − 1", error=ValueError)
        require(self.task in TASKS, "task", self.task, f"one of {sorted(TASKS)}", error=ValueError)
        registry.soma_class(self.soma)
        if self.task in FILE_TASKS:
            files = [f for k, f in EVENT_DATASETS[self.task].items() if k != "classes" and f]
            require(self.data_dir is not None, "data_dir", self.data_dir,
                    f"the directory holding {', '.join(files[:-1])} and {files[-1]} for task "
                    f"{self.task!r}", error=ValueError)
        object.__setattr__(self, "data_option", tuple(tuple(kv) for kv in self.data_option))
        object.__setattr__(self, "soma_option", tuple(tuple(kv) for kv in self.soma_option))
        fields = {f.name for f in registry.soma_class(self.soma).config_class.quantity_fields()}
        for key, _ in self.soma_option:
            require(key in fields, "soma_option", key, f"a numeric field of the {self.soma} "
                    f"config, one of {sorted(fields)}", error=ValueError)
        if self.surrogate is not None:
            surrogates_lib.from_spec(self.surrogate)  # a bad spec is named here, before any work
        require(self.exp_gradient is None or self.exp_gradient in numerics.EXP_GRADIENTS,
                "exp_gradient", self.exp_gradient, f"one of {numerics.EXP_GRADIENTS}",
                error=ValueError)

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
            extra = {"data_dir": self.data_dir, "steps": self.time_steps, "limit": self.limit}
        return {"seed": self.data_seed} | extra | dict(self.data_option)

    def cue_task(self) -> EvidenceAccumulation:
        """The cue task's timing (``data_option`` entries that are its fields)."""
        names = {f.name for f in dataclasses.fields(EvidenceAccumulation)}
        return EvidenceAccumulation(**{k: v for k, v in self.data_option if k in names})

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
                             input_gain=self.recipe.input_gain,
                             synapse_tau=self.recipe.synapse_tau, readout_window=window,
                             remat=self.remat or False, backend=self.backend,
                             soma_kwargs=dict(self.soma_option),
                             surrogate=(None if self.surrogate is None
                                        else surrogates_lib.from_spec(self.surrogate)),
                             exp_gradient=self.exp_gradient)

    def build(self, data: Dataset | None = None) -> Built:
        """The run's data (loaded by its task's loader unless given), encoder,
        network (seeded by ``seed``) and optimizer (:func:`~spark_somas.loop.make_optimizer`,
        cosine decay over the run's updates): what ``spark-somas train`` trains."""
        from flax import nnx

        from spark_somas import datasets
        from spark_somas.loop import make_optimizer
        from spark_somas.network import SpikingNetwork

        if data is None:
            data = datasets.load_task(self.task, **self.data_kwargs()).limit(self.limit)
        model = SpikingNetwork.from_config(self.network(data), nnx.Rngs(self.seed))
        batch = min(self.batch_size, len(data.x_train))
        optimizer = make_optimizer(model, self.lr,
                                   total_steps=self.epochs * (len(data.x_train) // batch))
        return Built(data, self.make_encoder(data), model, optimizer)

    def command(self) -> str:
        """The ``spark-somas train`` command line of this run (options that
        differ from their defaults)."""
        words = ["spark-somas", "train"]
        for f in dataclasses.fields(self):
            value, flag = getattr(self, f.name), "--" + f.name.replace("_", "-")
            if value == f.default:
                continue
            if f.name in ("data_option", "soma_option"):
                words += [w for k, v in value for w in (flag, f"{k}={v:g}")]
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
        run's dict, take their defaults, except ``surrogate`` and
        ``exp_gradient``: an older run trained with the soma config's own, None). Unknown keys (a run saved by a
        newer version) and values that break a field's rule raise
        ``ValueError`` naming them."""
        require(isinstance(d, Mapping), "run", d, "a dict of RunConfig fields", error=ValueError)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        require(not unknown, "run", unknown, f"only RunConfig fields, {sorted(names)} "
                "(the run was saved by another version?)", error=ValueError)
        return cls(**{"surrogate": None, "exp_gradient": None, **d})
