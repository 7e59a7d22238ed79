"""Training spiking networks end to end with Optax: one import for the pieces.

The pieces live in modules by concept; this package re-exports them:

* :mod:`spark_somas.training.encoders` — samples to time-major input (:class:`Encoder`);
* :mod:`spark_somas.training.network` — :class:`SpikingNetwork`, its readouts;
* :mod:`spark_somas.training.objectives` — cross-entropy and the rate regularizer;
* :mod:`spark_somas.training.constraints` — trained neuron parameters kept legal;
* :mod:`spark_somas.training.loop` — compiled steps, ``evaluate`` and ``fit``;
* :mod:`spark_somas.training.diagnostics` — where the gradient reaches (BPTT paths);
* :mod:`spark_somas.training.runs` — a whole run as a typed value (the CLI's);
* :mod:`spark_somas.training.callbacks` — the hooks of ``fit``: progress bar,
  checkpoints, logging, early stop.

Imports every layer below it (errors, dynamics, models, simulation, data,
persistence, plotting) and nothing above it.
"""

from spark_somas.training.constraints import *  # noqa: F401,F403
from spark_somas.training.constraints import __all__ as _constraints
from spark_somas.training.diagnostics import *  # noqa: F401,F403
from spark_somas.training.diagnostics import __all__ as _diagnostics
from spark_somas.training.encoders import *  # noqa: F401,F403
from spark_somas.training.encoders import __all__ as _encoders
from spark_somas.training.loop import *  # noqa: F401,F403
from spark_somas.training.loop import __all__ as _loop
from spark_somas.training.network import *  # noqa: F401,F403
from spark_somas.training.network import __all__ as _network
from spark_somas.training.objectives import *  # noqa: F401,F403
from spark_somas.training.objectives import __all__ as _objectives
from spark_somas.training.runs import *  # noqa: F401,F403
from spark_somas.training.runs import __all__ as _runs

__all__ = [*_encoders, *_network, *_objectives, *_constraints, *_loop, *_runs, *_diagnostics]
