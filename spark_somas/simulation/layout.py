"""Where the time axis is: one switch, ``time_major``, for every sequence.

Every function or module that takes a sequence (``simulate``, a
:class:`~spark_somas.training.network.SpikingNetwork` call, the encoders) takes
``time_major: bool = True``:

* ``time_major=True``: time first, ``(T, *batch, *features)``. This is what
  the time loop scans over (``jax.lax.scan`` runs along axis 0), so no
  transposition is made.
* ``time_major=False``: batch first, ``(*batch, T, *features)``: time is the
  axis just before the feature axes (a soma's ``units``, a network's
  ``in_features``), as in ``flax.nnx.RNN``. Inputs are moved to time-major
  before the loop and the outputs moved back after it; the numbers are the
  same, bit for bit.

Outputs follow the layout of the inputs. Flax's ``nnx.RNN`` has the same
switch with the opposite default (``time_major=False``); here the default is
time-major because the time loop and every trace and readout of this package
(``(T, B, N)`` spikes, ``(T, B, C)`` potentials) are time-major, and so is
all code written against it so far.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from spark_somas.errors import RuleError, require_shape

__all__ = ["LayoutWarning", "layout_name", "resolve_time_major", "time_axis", "to_time_major",
           "from_time_major"]


class LayoutWarning(UserWarning):
    """A sequence whose layout was not given looks batch-first: read time-major,
    its T would be smaller than its batch (``(4, 500, 100)`` as T = 4 steps
    of 500 samples, too short to spike)."""


def layout_name(features: str, time_major: bool) -> str:
    """``"(T, *batch, <features>)"`` or ``"(*batch, T, <features>)"``."""
    return f"(T, *batch, {features})" if time_major else f"(*batch, T, {features})"


def resolve_time_major(name: str, shape: Sequence[int], feature_shape: Sequence[int],
                       time_major: bool | None, *, features: str = "*units") -> bool:
    """``time_major`` as given; None (not given) reads time first, and warns
    (:class:`LayoutWarning`, naming ``time_major=False``) when the array then
    has fewer steps than its first batch axis: the mark of a batch-first
    array, which would run silently as a few steps of a large batch."""
    if time_major is not None:
        return time_major
    shape = tuple(shape)
    steps, batch = (shape + (None, None))[:2]
    if (len(shape) >= len(tuple(feature_shape)) + 2 and isinstance(steps, int)
            and isinstance(batch, int) and steps < batch):
        warnings.warn(LayoutWarning(
            f"{name} of shape {shape} read time-major, {layout_name(features, True)}: T = "
            f"{steps} steps of a batch of {batch}, fewer steps than samples; for a batch-first "
            f"array {layout_name(features, False)} pass time_major=False (time_major=True "
            f"keeps this reading without this warning)"), stacklevel=3)
    return True


def time_axis(name: str, shape: Sequence[int], feature_shape: Sequence[int], time_major: bool,
              *, features: str = "*units") -> int:
    """The index of the time axis of an array ``name`` of ``shape`` whose last
    axes are ``feature_shape``.

    Raises ValueError naming the array, its shape, the layout expected, where
    the time axis is and the other layout, when the array has no axis left for
    time or its last axes are not ``feature_shape`` (in either layout the
    features come last).
    """
    shape, feature_shape = tuple(shape), tuple(feature_shape)
    n = len(feature_shape)
    bare = features.lstrip("*")
    where = "first" if time_major else f"just before the {bare} axes"
    require_shape(
        len(shape) >= n + 1 and shape[len(shape) - n:] == feature_shape, name, shape,
        f"{layout_name(features, time_major)} with {bare} = {feature_shape}, the time axis "
        f"{where} (time_major={time_major}; time_major={not time_major} reads "
        f"{layout_name(features, not time_major)})", plural=True, error=RuleError)
    return 0 if time_major else len(shape) - n - 1


def to_time_major(tree: Any, axis: int) -> Any:
    """Every array of ``tree`` with its axis ``axis`` (the time axis) moved first."""
    return tree if axis == 0 else jax.tree.map(lambda x: jnp.moveaxis(x, axis, 0), tree)


def from_time_major(tree: Any, feature_ndims: int, time_major: bool) -> Any:
    """Time-major outputs back to the caller's layout: with ``time_major`` False,
    each array's leading time axis moves just before its last ``feature_ndims``
    axes (``(T, B, N)`` → ``(B, T, N)``)."""
    if time_major:
        return tree
    return jax.tree.map(lambda x: jnp.moveaxis(x, 0, x.ndim - feature_ndims - 1), tree)
