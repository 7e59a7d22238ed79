"""Which time loop runs: the names of the backends and the one place ``"auto"`` is resolved.

Apart from :mod:`spark_somas.simulation.kernels` so that choosing (or refusing) a
backend does not import Pallas and Triton: only a fused run does.

Every caller goes through :func:`check_backend` (a name is one of
:data:`BACKENDS`, checked where it is given: a network's config, a run's)
and :func:`resolve_backend` (the loop that runs now, where the run
starts: :class:`~spark_somas.training.network.SpikingNetwork`'s forward pass, the
simulation functions, the command line's report of a run's settings).
"""

from __future__ import annotations

import jax

from spark_somas.errors import RuleError, require

__all__ = ["BACKENDS", "FUSED_BY_DEFAULT", "FusedBackendError", "check_backend",
           "resolve_backend"]

BACKENDS = ("auto", "scan", "fused")

# Platforms where the fused kernels have been run, checked and timed faster
# than the scan: none yet, not even a GPU.
FUSED_BY_DEFAULT: tuple[str, ...] = ()


class FusedBackendError(RuleError):
    """``backend="fused"`` asked of a run the kernels cannot partition: a
    module step whose state, inputs or outputs lack the shared batch axis."""


def check_backend(backend: str) -> str:
    """``backend`` itself when it is one of :data:`BACKENDS`; else
    ``ValueError`` naming it and the choices. Touches no device."""
    require(isinstance(backend, str) and backend in BACKENDS, "backend", backend,
            f"one of {BACKENDS}", error=RuleError)
    return backend


def resolve_backend(backend: str) -> str:
    """``"scan"`` or ``"fused"``: ``"auto"`` is fused only on a platform in
    ``FUSED_BY_DEFAULT`` (none yet), the scan elsewhere; a resolved name is
    returned as it is."""
    if check_backend(backend) == "auto":
        return "fused" if jax.default_backend() in FUSED_BY_DEFAULT else "scan"
    return backend
