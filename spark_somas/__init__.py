"""spark_somas: exponential integrate-and-fire somas as Flax NNX modules.

Units: potential mV, time ms, current pA, resistance GΩ, conductance nS.

``import spark_somas as ss`` loads the somas, their configs and
:func:`simulate`; the other modules (``ss.training``, ``ss.plotting``,
``ss.checkpointing``, ``ss.datasets``, …) load on first use, so that the
import stays light: no matplotlib, and Pallas and Triton only for a fused run.

The package is layered; a module imports only from the layers before it:
:mod:`~spark_somas.errors` → :mod:`~spark_somas.dynamics` →
:mod:`~spark_somas.models` → :mod:`~spark_somas.simulation` →
:mod:`~spark_somas.data`, :mod:`~spark_somas.persistence`,
:mod:`~spark_somas.plotting` → :mod:`~spark_somas.training` →
:mod:`~spark_somas.fitting` → :mod:`~spark_somas.cli`. Each module is also
reached by its short name: ``ss.checkpointing`` and ``import
spark_somas.checkpointing`` are :mod:`spark_somas.persistence.checkpointing`
(:data:`MODULES`).
"""

import importlib
import importlib.abc
import importlib.machinery
import sys

from spark_somas.models import surrogates
from spark_somas.models.configs import (
    AdaptiveExponentialSomaConfig,
    ConfigError,
    ExponentialSomaConfig,
    RefractoryExponentialSomaConfig,
    SimplifiedAdaptiveExponentialSomaConfig,
)
from spark_somas.errors import SparkSomasError
from spark_somas.models.registry import SOMAS, register_deferred
from spark_somas.simulation.driver import simulate
from spark_somas.models.somas import (
    AdaptiveExponentialSoma,
    ExponentialSoma,
    RefractoryExponentialSoma,
    SimplifiedAdaptiveExponentialSoma,
    SomaConstant,
    SomaOutput,
    SomaState,
    StepOptions,
    step,
)
from spark_somas.models.surrogates import spike

__version__ = "0.1.0"

#: Each module's short name -> where it lives (relative to this package).
#: ``ss.<short name>`` and ``import spark_somas.<short name>`` both give that
#: module itself, imported on first use (PEP 562 and an import finder), so the
#: names of the flat layout of release 0.1.0 keep working.
MODULES = {
    "backends": "simulation.backends", "callbacks": "training.callbacks",
    "checkpointing": "persistence.checkpointing", "configs": "models.configs",
    "constraints": "training.constraints", "data": "data", "datasets": "data.datasets",
    "dynamics": "dynamics", "encoders": "training.encoders", "errors": "errors",
    "events": "data.events", "fetch": "data.fetch", "fitting": "fitting",
    "integrators": "dynamics.integrators", "kernels": "simulation.kernels",
    "layout": "simulation.layout", "loggers": "persistence.loggers", "loop": "training.loop",
    "models": "models", "network": "training.network", "numerics": "dynamics.numerics",
    "objectives": "training.objectives", "persistence": "persistence", "plotting": "plotting",
    "presets": "models.presets", "registry": "models.registry", "runs": "training.runs",
    "sharding": "simulation.sharding", "simulation": "simulation", "somas": "models.somas",
    "surrogates": "models.surrogates", "tasks": "data.tasks", "training": "training",
}
#: The names reached as attributes of the package (the keys of :data:`MODULES`).
SUBMODULES = tuple(sorted(MODULES))

register_deferred("SpikingNetwork", f"{__name__}.training.network")


class _ShortNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import spark_somas.<short name>`` gives the module where it lives."""

    def __init__(self) -> None:
        self.homes: dict[str, importlib.machinery.ModuleSpec] = {}

    def find_spec(self, fullname, path=None, target=None):
        head, _, name = fullname.rpartition(".")
        home = MODULES.get(name) if head == __name__ else None
        if home is None or home == name:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        module = importlib.import_module(f"{__name__}.{MODULES[spec.name.rpartition('.')[2]]}")
        self.homes[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        # The import system stamped the short name's spec on the module; it keeps its own.
        module.__spec__ = self.homes[module.__spec__.name]


sys.meta_path.append(_ShortNames())


def __getattr__(name: str):
    if name in MODULES:
        return importlib.import_module(f"{__name__}.{MODULES[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(SUBMODULES))


__all__ = [
    "AdaptiveExponentialSoma",
    "AdaptiveExponentialSomaConfig",
    "ConfigError",
    "ExponentialSoma",
    "ExponentialSomaConfig",
    "RefractoryExponentialSoma",
    "RefractoryExponentialSomaConfig",
    "SOMAS",
    "SimplifiedAdaptiveExponentialSoma",
    "SimplifiedAdaptiveExponentialSomaConfig",
    "SparkSomasError",
    "SomaConstant",
    "SomaOutput",
    "SomaState",
    "StepOptions",
    "simulate",
    "spike",
    "step",
    "fitting",
    "surrogates",
]
