"""spark_somas: exponential integrate-and-fire somas as Flax NNX modules.

Units: potential mV, time ms, current pA, resistance GΩ, conductance nS.
"""

from spark_somas import fitting, surrogates
from spark_somas.configs import (
    AdaptiveExponentialSomaConfig,
    ConfigError,
    ExponentialSomaConfig,
    RefractoryExponentialSomaConfig,
    SimplifiedAdaptiveExponentialSomaConfig,
)
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
