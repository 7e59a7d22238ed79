"""The somas in one place: the model protocol, the four exponential somas
and the tree-path helpers, re-exported from the modules that hold them.

* :mod:`spark_somas.models.protocol` — :class:`Soma`, :class:`StateVariable`,
  :class:`SomaOutput`, :class:`StepOptions`, the one pure :func:`step`;
* :mod:`spark_somas.models.exponential` — :class:`ExponentialSoma`,
  :class:`RefractoryExponentialSoma`, :class:`AdaptiveExponentialSoma`,
  :class:`SimplifiedAdaptiveExponentialSoma` and :func:`exponential_term`;
* :mod:`spark_somas.models.paths` — :func:`iter_somas`, :func:`path_name`,
  :func:`named_leaves`.

``from spark_somas.models.somas import X`` keeps working for each of them.
"""

from spark_somas.models.exponential import (
    AdaptiveExponentialSoma,
    ExponentialSoma,
    RefractoryExponentialSoma,
    SimplifiedAdaptiveExponentialSoma,
    exponential_term,
    refractory_steps,
)
from spark_somas.models.paths import iter_somas, named_leaves, path_name
from spark_somas.models.protocol import (
    SPIKE_PARTS,
    Soma,
    SomaConstant,
    SomaOutput,
    SomaState,
    StateVariable,
    StepOptions,
    after_spike,
    input_scale,
    mean_parameters,
    step,
)

__all__ = [
    "SomaState",
    "SomaConstant",
    "SomaOutput",
    "StepOptions",
    "SPIKE_PARTS",
    "after_spike",
    "step",
    "iter_somas",
    "path_name",
    "named_leaves",
    "StateVariable",
    "Soma",
    "input_scale",
    "mean_parameters",
    "exponential_term",
    "refractory_steps",
    "ExponentialSoma",
    "RefractoryExponentialSoma",
    "AdaptiveExponentialSoma",
    "SimplifiedAdaptiveExponentialSoma",
]
