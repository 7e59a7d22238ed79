"""Running somas through time.

* :mod:`~spark_somas.simulation.driver` — the one time loop
  (:func:`~spark_somas.simulation.driver.drive`) and
  :func:`~spark_somas.simulation.driver.simulate` for a lone soma;
* :mod:`~spark_somas.simulation.layout` — the time axis: time-major or batch-major arrays;
* :mod:`~spark_somas.simulation.backends` — choosing the scan or the fused kernels;
* :mod:`~spark_somas.simulation.kernels` — the fused Pallas kernels (loaded
  only for a fused run);
* :mod:`~spark_somas.simulation.sharding` — one simulation over several devices.

The driver's names are re-exported here (``from spark_somas.simulation import
simulate``). Imports :mod:`spark_somas.errors`, :mod:`spark_somas.dynamics`
and :mod:`spark_somas.models` only.
"""

from spark_somas.simulation.driver import (
    FusedBackendError,
    drive,
    output,
    recordable,
    recorded_fields,
    simulate,
)

__all__ = ["drive", "simulate", "recordable", "recorded_fields", "output",
           "FusedBackendError"]
