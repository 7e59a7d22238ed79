"""spark_somas: exponential integrate-and-fire somas as Flax NNX modules.

Units: potential mV, time ms, current pA, resistance GΩ, conductance nS.

``import spark_somas as ss`` imports nothing but this file: the somas, their
configs and :func:`simulate` (``ss.AdaptiveExponentialSoma``, …) and the
modules (``ss.training``, ``ss.plotting``, ``ss.checkpointing``, …) load on
first use (PEP 562), so that the command line's ``--version`` and ``--help``
start without JAX, and matplotlib, Pallas and Triton load only when used.

The package is layered; a module imports only from the layers before it:
:mod:`~spark_somas.errors` → :mod:`~spark_somas.dynamics` →
:mod:`~spark_somas.models` → :mod:`~spark_somas.simulation` →
:mod:`~spark_somas.data`, :mod:`~spark_somas.persistence`,
:mod:`~spark_somas.plotting` → :mod:`~spark_somas.training` →
:mod:`~spark_somas.fitting`, :mod:`~spark_somas.testing` (the checks a
model of one's own runs) → :mod:`~spark_somas.cli`. Each module is also an
attribute of the package by its short name, for the modules of release
0.1.0 the name of its flat layout (:data:`MODULES`): ``ss.network`` is
:mod:`spark_somas.training.network`. Five of those names are also modules
that re-export their home's public names (:data:`REEXPORTS`), so that
``from spark_somas.checkpointing import load`` keeps working.
"""

import importlib

__version__ = "0.1.0"

#: Each module's short name -> where it lives (relative to this package).
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
    "surrogates": "models.surrogates", "tasks": "data.tasks", "testing": "testing",
    "training": "training",
}
#: The names reached as attributes of the package (the keys of :data:`MODULES`).
SUBMODULES = tuple(sorted(MODULES))
#: Short names that are also modules of their own (``spark_somas/<name>.py``),
#: re-exporting their home's public names: ``ss.<name>`` is that module.
REEXPORTS = ("callbacks", "checkpointing", "configs", "datasets", "somas")

#: Each name of ``__all__`` that is not a module -> the module that defines it.
_HOMES = {
    **dict.fromkeys(("AdaptiveExponentialSoma", "ExponentialSoma", "RefractoryExponentialSoma",
                     "SimplifiedAdaptiveExponentialSoma", "SomaConstant", "SomaOutput",
                     "SomaState", "StepOptions", "step"), "models.somas"),
    **dict.fromkeys(("AdaptiveExponentialSomaConfig", "ExponentialSomaConfig",
                     "RefractoryExponentialSomaConfig",
                     "SimplifiedAdaptiveExponentialSomaConfig"), "models.configs"),
    "ConfigError": "errors",
    "SparkSomasError": "errors",
    "SOMAS": "models.registry",
    "simulate": "simulation.driver",
    "spike": "models.surrogates",
}


def __getattr__(name: str):
    if name in _HOMES:
        value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    elif name in MODULES:
        value = importlib.import_module(
            f"{__name__}.{name if name in REEXPORTS else MODULES[name]}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(SUBMODULES))


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
