"""A training run as a typed value: :class:`RunConfig` and the per-task :data:`RECIPES`.

A run is everything that decides its result — task, data, network, optimizer,
epochs, seeds — and nothing about where it runs (output directory, progress
bar, checkpoint directory). ``spark-somas train`` builds its options from
:class:`RunConfig`'s fields (each field's metadata holds its help text and
rule), saves ``run.to_dict()`` with every checkpoint, and ``--resume``
rebuilds the run with :meth:`RunConfig.from_dict`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from spark_somas import registry
from spark_somas.configs import require
from spark_somas.datasets import TASKS, Dataset
from spark_somas.encoders import Encoder
from spark_somas.network import NetworkConfig

__all__ = ["Recipe", "RECIPES", "RunConfig"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A task's benchmarked settings: encoder kind, time steps T (dt = 1 ms),
    and the network's input gain and synapse τ_s (ms, None: no synapse)."""

    encoder: str
    steps: int
    input_gain: float
    synapse_tau: float | None


#: Per-task recipe (benchmarks/TRAINING.md). Digits: constant input
#: currents, no synapse. Randman: one-step input spikes, which need the
#: charge of a 5 ms synapse and gain 3.
RECIPES: dict[str, Recipe] = {
    "digits": Recipe("current", 25, 1.0, None),
    "randman": Recipe("spikes", 50, 3.0, 5.0),
}


def option(default: Any, help: str, *, positive: bool = False, choices: Any = None,
           metavar: str | None = None) -> Any:
    """A :class:`RunConfig` field with what its command-line option needs:
    help text, whether it must be > 0 (and finite), its choices (a callable
    is called when the parser is built) and metavar."""
    return dataclasses.field(default=default, metadata={
        "help": help, "positive": positive, "choices": choices, "metavar": metavar})


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run of :class:`~spark_somas.network.SpikingNetwork`."""

    soma: str = option("adex", "hidden soma model", choices=lambda: sorted(registry.SOMAS))
    task: str = option("digits", "the task", choices=lambda: sorted(TASKS))
    epochs: int = option(30, "epochs", positive=True)
    batch_size: int = option(64, "batch size", positive=True)
    lr: float = option(5e-3, "peak Adam learning rate (cosine decay to 0)", positive=True)
    hidden: int = option(256, "hidden somas", positive=True)
    steps: int | None = option(None, "time steps of dt = 1 ms (default: the task's recipe)",
                               positive=True)
    seed: int = option(0, "initialisation, data order, noise")
    data_seed: int = option(0, "train/test split, Randman manifolds")
    data_option: tuple[tuple[str, float], ...] = option(
        (), "extra keyword of the task's loader, repeatable, e.g. manifold_dim=2 "
        "(see spark_somas.datasets.load_randman)", metavar="KEY=VALUE")
    encoder: str | None = option(None, "input code for digits (default: the recipe's)",
                                 choices=("current", "poisson", "latency"))
    recurrent: bool = option(False, "recurrent hidden layer")
    trainable_neurons: bool = option(
        False, "train per-neuron tau_m, threshold (and a, b, tau_w / theta tau, delta), "
        "projected into their config rules after each step")
    limit: int | None = option(None, "use only the first N train and N test samples",
                               positive=True)

    def __post_init__(self) -> None:
        require(self.task in TASKS, "task", self.task, f"one of {sorted(TASKS)}", error=ValueError)
        registry.soma_class(self.soma)
        object.__setattr__(self, "data_option", tuple(tuple(kv) for kv in self.data_option))

    @property
    def recipe(self) -> Recipe:
        return RECIPES[self.task]

    @property
    def time_steps(self) -> int:
        """T: ``steps``, or the recipe's."""
        return self.steps or self.recipe.steps

    def data_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the task's loader."""
        steps = {"n_steps": self.time_steps} if self.task == "randman" else {}
        return {"seed": self.data_seed} | steps | dict(self.data_option)

    def make_encoder(self, data: Dataset) -> Encoder:
        """Spike data pass through; static data take ``encoder`` or the recipe's."""
        kind = "spikes" if data.encoding == "spikes" else (self.encoder or self.recipe.encoder)
        return Encoder(kind, self.time_steps)

    def network(self, data: Dataset) -> NetworkConfig:
        """The architecture for ``data``'s features and classes."""
        return NetworkConfig(data.n_features, self.hidden, data.n_classes, soma=self.soma,
                             recurrent=self.recurrent, trainable_neurons=self.trainable_neurons,
                             input_gain=self.recipe.input_gain,
                             synapse_tau=self.recipe.synapse_tau)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON)."""
        return dataclasses.asdict(self) | {"data_option": [list(kv) for kv in self.data_option]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        return cls(**d)
