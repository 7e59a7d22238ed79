"""spark_somas: exponential integrate-and-fire somas as Flax NNX modules.

Units: potential mV, time ms, current pA, resistance GΩ, conductance nS.

``import spark_somas as ss`` loads the somas, their configs and
:func:`simulate`; the other modules (``ss.training``, ``ss.plotting``,
``ss.checkpointing``, ``ss.datasets``, …) load on first use, so that the
import stays light: no matplotlib, and Pallas and Triton only for a fused run.
"""

import importlib

from spark_somas import surrogates
from spark_somas.configs import (
    AdaptiveExponentialSomaConfig,
    ConfigError,
    ExponentialSomaConfig,
    RefractoryExponentialSomaConfig,
    SimplifiedAdaptiveExponentialSomaConfig,
)
from spark_somas.errors import SparkSomasError
from spark_somas.registry import SOMAS
from spark_somas.simulation import simulate
from spark_somas.somas import (
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
from spark_somas.surrogates import spike

__version__ = "0.1.0"

#: Modules reached as attributes of the package, imported when first used (PEP 562).
SUBMODULES = (
    "backends", "callbacks", "checkpointing", "configs", "constraints", "datasets", "encoders", "errors",
    "events", "fetch", "fitting", "integrators", "kernels", "layout", "loggers", "loop", "network",
    "numerics", "objectives", "plotting", "presets", "registry", "runs", "sharding", "simulation",
    "somas", "tasks", "training",
)


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
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
