"""Training spiking networks end to end with Optax: one import for the pieces.

The pieces live in modules by concept; this module re-exports them:

* :mod:`spark_somas.encoders` — samples to time-major input (:class:`Encoder`);
* :mod:`spark_somas.network` — :class:`SpikingNetwork`, its readouts;
* :mod:`spark_somas.objectives` — cross-entropy and the rate regularizer;
* :mod:`spark_somas.constraints` — trained neuron parameters kept legal;
* :mod:`spark_somas.loop` — compiled steps, ``evaluate`` and ``fit``;
* :mod:`spark_somas.runs` — a whole run as a typed value (the CLI's).
"""

from spark_somas.constraints import *  # noqa: F401,F403
from spark_somas.constraints import __all__ as _constraints
from spark_somas.encoders import *  # noqa: F401,F403
from spark_somas.encoders import __all__ as _encoders
from spark_somas.loop import *  # noqa: F401,F403
from spark_somas.loop import __all__ as _loop
from spark_somas.network import *  # noqa: F401,F403
from spark_somas.network import __all__ as _network
from spark_somas.objectives import *  # noqa: F401,F403
from spark_somas.objectives import __all__ as _objectives
from spark_somas.runs import *  # noqa: F401,F403
from spark_somas.runs import __all__ as _runs

__all__ = [*_encoders, *_network, *_objectives, *_constraints, *_loop, *_runs]
