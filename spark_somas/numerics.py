"""How the exponential is tamed: finite values and gradients in any float dtype.

Three deliberate pieces, none of which changes the dynamics of a neuron whose
potential stays at or below its cut-off V_th:

1. **Clamped exponent.** ``exp(min(u, u_max))`` with ``u = (V - V_T)/Δ_T``
   and ``u_max = (V_th - V_T)/Δ_T``. At the start of every step V ≤ V_th
   (a crossing is reset in the same step), so the clamp is never active on
   a trajectory the equations define; it only stops a hand-set or restored
   V far above V_th from overflowing. Its largest value, e^25 ≈ 7·10^10 for
   Naud et al.'s sets, is finite in float32.
2. **Wide arithmetic, saturated storage.** A step computes in at least
   float32 (``widen``), so e^{u_max} never overflows a float16 soma, and
   stores its state back with ``narrow``: clipped to ±``bound(dtype)``,
   min(largest finite value, 2^64) mV or pA, before casting. A current
   beyond any physical range (±1e6 pA and far more) therefore drives V to a
   finite, saturated value instead of ±inf.
3. **Saturated cotangents.** When the state dtype has a smaller range than
   the compute dtype (float16: 65504), the backward pass of ``widen`` clips
   the cotangent to ±``bound(dtype)`` before casting it down, so a gradient
   that grows through the steep exponential stays finite. bfloat16 and
   float32 share float32's range, so there ``widen`` is a plain cast and
   forward-mode differentiation (``jax.jvp``, ``jacfwd``) works too.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["bound", "widen", "narrow", "saturate", "tamed_exp", "compute_dtype"]

_MAX_MAGNITUDE = 2.0**64


def bound(dtype) -> float:
    """Largest magnitude a state or cotangent of ``dtype`` is allowed to hold."""
    return min(float(jnp.finfo(dtype).max), _MAX_MAGNITUDE)


def compute_dtype(dtype) -> np.dtype:
    """The dtype a step computes in: ``dtype`` widened to at least float32."""
    return jnp.promote_types(dtype, jnp.float32)


def saturate(x: jax.Array, dtype=None) -> jax.Array:
    """``clip(x, -bound, bound)`` with the bound of ``dtype`` (default x's)."""
    b = bound(x.dtype if dtype is None else dtype)
    return jnp.clip(x, -b, b)


def narrow(x: jax.Array, dtype) -> jax.Array:
    """Saturate ``x`` to ``dtype``'s bound, then cast: never ±inf."""
    return saturate(x, dtype).astype(dtype)


def widen(x: jax.Array, dtype) -> jax.Array:
    """Cast ``x`` up to ``dtype``; a cotangent coming back into a narrower
    range (float16) is saturated to x's bound instead of overflowing."""
    if jnp.finfo(x.dtype).max < jnp.finfo(dtype).max:
        return _saturating_widen(x, dtype)
    return x.astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _saturating_widen(x: jax.Array, dtype) -> jax.Array:
    return x.astype(dtype)


def _widen_fwd(x, dtype):
    return x.astype(dtype), jnp.zeros((), x.dtype)


def _widen_bwd(dtype, proto, ct):
    return (narrow(ct, proto.dtype),)


_saturating_widen.defvjp(_widen_fwd, _widen_bwd)


def tamed_exp(u: jax.Array, u_max: jax.Array) -> jax.Array:
    """``exp(min(u, u_max))``: exact for ``u ≤ u_max``, finite everywhere."""
    return jnp.exp(jnp.minimum(u, u_max))
