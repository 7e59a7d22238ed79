"""How a step stays finite, exact and cheap in any float dtype.

What is guaranteed, for every parameter set the config rules accept (every
field within ±10^6 in its unit, positive fields at least 10^-6), any dt in
[10^-6, 10^6] ms and any input current representable in the dtype, ±inf
included, in float32, bfloat16 and float16 (float64 too):

* forward values are finite and spikes are exactly 0 or 1, by every
  integration method; gradients with respect to the input are finite
  wherever the step is stable (dt ≤ τ for every time constant, and always
  with the exponential Euler) — beyond, the explicit map is itself
  unstable and its true gradient grows as abs(1 − dt/τ)^T;
* wherever the true forward-Euler update is representable (its linear part
  within the state range ±``STATE_LIMIT``), the trajectory is the Euler
  trajectory, the same arithmetic operation for operation; where the
  exponential itself is not representable, the equations have crossed
  V_th, so the neuron spikes and resets.

The pieces, each small:

1. **The capped exponential.** The Euler increment of the spike
   term is (dt/τ_m)·Δ_T·e^u with u = (V − V_T)/Δ_T, and u reaches 10^4
   and beyond for legal steep neurons (Δ_T = 0.005 mV), where e^u
   overflows any float. The step computes e^u as ``exp(min(u, u_cap))``
   (:func:`capped_exp`) with u_cap = log(``EXP_CAP``/k), k = dt·Δ_T/τ_m,
   a parameter-only constant. Below the cap it is the plain expression,
   rounding for rounding. At the cap the
   increment is ``EXP_CAP`` = 4·``STATE_LIMIT``: the true increment is
   larger still, and either one added to a linear part within ±
   ``STATE_LIMIT`` crosses any V_th the rules allow (\\|V_th + θ\\| ≤ 2·10^6 +
   ``STATE_LIMIT``), so the spike, and with it the reset, are exactly
   Euler's. There is no other clamp, so V above V_th (set by hand or
   restored) is integrated as written, and the cost is the same as the
   plain ``Δ_T·exp(min(u, u_max))`` of a hand-written loop. The other
   methods (:mod:`spark_somas.dynamics.integrators`) cap every stage the same way,
   with k scaled by the tableau's smallest weight, so they are finite for
   every legal set too.
2. **Saturated input and state.** The input current is clipped to
   ±``STATE_LIMIT`` before it is multiplied (so R·I is finite for I = ±inf
   and no 0·inf reaches a gradient), and each stored state to ±``bound``:
   ``STATE_LIMIT`` = 2^40 (≈ 1.1·10^12 mV or pA) or the dtype's largest
   finite value if smaller (float16: 65504). The config's magnitude rules
   are what make every intermediate finite in float32 arithmetic: the
   largest, (dt/τ_m)·R·w, is at most 10^12·10^6·2^40 ≈ 10^30.
3. **Wide arithmetic.** A step computes in at least float32
   (:func:`compute_dtype`) and stores in the state dtype. For float16, whose
   range is narrower than float32's, :func:`widen` also saturates the
   cotangent on its way back, so a gradient grown through the steep
   exponential stays finite; for float32 and bfloat16 it is a plain cast
   (forward-mode autodiff works there).
4. **Compensated half precision.** In bfloat16 (8 significant bits) the
   Euler increment of V at dt = 0.1 ms, ≈ 0.01–0.1 mV, is below half a unit
   in the last place of V ≈ −60 mV (0.25 mV): rounding to nearest would
   stall V and silently lose spikes. A half-precision soma therefore keeps
   each float state as an unevaluated sum hi + lo of two numbers of its
   dtype (a double-word, Dekker 1971): hi is the state rounded to the dtype
   (what users read), lo = round(x − hi) the rounding error, a
   ``SomaState`` of its own (``potential_residual`` …). The step integrates
   hi + lo in float32 and splits the result again (:func:`split`). This
   doubles the significand (bfloat16: 16 bits, float16: 22) at the memory
   cost of float32 storage, is deterministic (unlike stochastic rounding)
   and needs no float32 copy: state and outputs stay in the dtype. Where
   even that cannot resolve a step (dt/τ too small for the double-word),
   the soma's constructor refuses the combination and says what to do
   (:func:`resolution_problem`).
5. **A selectable backward pass of the exponential.** Through BPTT each
   step multiplies the adjoint of V by its Jacobian, which for Euler is
   1 + (dt/τ_m)(e^u − 1): above 1 wherever V > V_T, so a few dozen steps
   above rheobase multiply a gradient by 10^5 and more. :func:`capped_exp`
   takes ``gradient``, one of :data:`EXP_GRADIENTS`: ``"exact"`` (d e^u/du
   = e^u, what fitting a single neuron needs), ``"bounded"`` (the slope
   e^min(u, 0): exact below V_T, held at its value at V_T beyond, so the
   Jacobian stays ≤ 1) or ``"detached"`` (no gradient through e^u, the
   Jacobian is 1 − dt/τ_m). The forward value is the same expression, bit
   for bit, in all three.
6. **Cheap backward.** BPTT keeps, per step and neuron, what the backward
   pass reads. :func:`saturate` has a one-mask derivative rule
   (``jnp.clip``'s own, through ``maximum``/``minimum`` with their tie
   handling, tripled the backward pass); the step recomputes the input's
   mask from the input itself, which the scan holds anyway, and stores its
   state variables through :func:`narrow_all`, whose masks travel as one
   array of bits; the exact exponential keeps one product, e^min(u, cap)
   times ``jnp.minimum``'s weight, where autodiff of the plain expression
   keeps both factors. A float32 AdEx step thus keeps three float32 values
   and one byte of masks (13 bytes), a hand-written loop four float32
   values (16 bytes); the repository's guards benchmark measures forward,
   BPTT and a training step against that loop.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from spark_somas.errors import RuleError, rule_message

__all__ = [
    "STATE_LIMIT", "EXP_CAP", "bound", "compute_dtype", "saturate", "widen", "narrow", "narrow_all",
    "EXP_GRADIENTS", "capped_exp", "is_compensated", "split", "join", "resolution_problem",
]

STATE_LIMIT = 2.0**40
EXP_CAP = 4.0 * STATE_LIMIT
_LOG_EXP_CAP = math.log(EXP_CAP)


def bound(dtype) -> float:
    """Largest magnitude a state, input or cotangent of ``dtype`` may hold."""
    return min(float(jnp.finfo(dtype).max), STATE_LIMIT)


def compute_dtype(dtype) -> np.dtype:
    """The dtype a step computes in: ``dtype`` widened to at least float32."""
    return jnp.promote_types(dtype, jnp.float32)


def saturate(x: jax.Array, dtype=None) -> jax.Array:
    """``clip(x, -bound, bound)`` with the bound of ``dtype`` (default x's); ±inf
    become ±bound. Its derivative is 1 inside the bound and 0 outside, one
    mask: ``jnp.clip``'s own rule, built from ``maximum``/``minimum`` with
    their tie handling, costs several times more on the backward pass."""
    return _clip(x, bound(x.dtype if dtype is None else dtype))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _clip(x: jax.Array, b: float) -> jax.Array:
    return jnp.clip(x, -b, b)


@_clip.defjvp
def _clip_jvp(b, primals, tangents):
    (x,), (t,) = primals, tangents
    return _clip(x, b), jnp.where(jnp.abs(x) <= b, t, jnp.zeros_like(t))


def narrow(x: jax.Array, dtype) -> jax.Array:
    """Saturate ``x`` to ``dtype``'s bound, then cast: never ±inf."""
    return saturate(x, dtype).astype(dtype)


def narrow_all(xs: Sequence[jax.Array], dtypes: Sequence[Any]) -> list[jax.Array]:
    """:func:`narrow` of each ``xs[i]`` to ``dtypes[i]``, the same values and
    derivatives, for arrays of one shape (at most 32): their masks travel
    to the backward pass as one array, bit i for ``xs[i]``, so BPTT keeps
    one mask per step instead of one per state variable."""
    if len(xs) != len(dtypes):
        raise RuleError(rule_message("narrow_all(xs, dtypes): len(dtypes)", len(dtypes),
                                     f"one dtype per array, len(xs) = {len(xs)}"))
    shapes = {jnp.shape(x) for x in xs}
    if len(xs) < 2 or len(xs) > 32 or len(shapes) > 1:
        return [narrow(x, d) for x, d in zip(xs, dtypes)]
    clipped = _clip_all(tuple(xs), tuple(bound(d) for d in dtypes))
    return [y.astype(d) for y, d in zip(clipped, dtypes)]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _clip_all(xs: tuple[jax.Array, ...], bounds: tuple[float, ...]) -> tuple[jax.Array, ...]:
    return tuple(jnp.clip(x, -b, b) for x, b in zip(xs, bounds))


@_clip_all.defjvp
def _clip_all_jvp(bounds, primals, tangents):
    (xs,), (ts,) = primals, tangents
    code_dtype = jnp.uint8 if len(xs) <= 8 else jnp.uint32
    code = functools.reduce(jnp.bitwise_or, [
        (jnp.abs(x) <= b).astype(code_dtype) << i for i, (x, b) in enumerate(zip(xs, bounds))])
    return _clip_all(xs, bounds), _unpack_masks(code, ts)


@jax.checkpoint
def _unpack_masks(code: jax.Array, ts: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    # Rematerialized, so that the packed code is what the backward pass keeps.
    return tuple(jnp.where(((code >> i) & 1) == 1, t, jnp.zeros_like(t)) for i, t in enumerate(ts))


def widen(x: jax.Array, dtype) -> jax.Array:
    """Cast ``x`` up to ``dtype``; a cotangent coming back into a narrower
    exponent range (float16's) is saturated to x's bound instead of
    overflowing. bfloat16 has float32's exponent range: a plain cast, so
    forward-mode differentiation works through it; float16's saturating cast
    is a ``jax.custom_vjp``, reverse mode only."""
    if jnp.finfo(x.dtype).maxexp < jnp.finfo(dtype).maxexp:
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


#: The backward passes of the exponential term (item 5 of the module docstring).
EXP_GRADIENTS = ("exact", "bounded", "detached")


def capped_exp(u: jax.Array, scale: jax.Array, gradient: str = "exact") -> jax.Array:
    """``exp(min(u, log(EXP_CAP/scale)))``: ``exp(u)`` wherever
    ``scale·exp(u)`` ≤ ``EXP_CAP``, and ``EXP_CAP/scale`` beyond (item 1 of
    the module docstring). Within the config rules ``scale`` ≥ 10^-18/6
    (rk4's smallest stage weight included), so the result stays below 10^32.

    ``gradient`` picks the derivative with respect to ``u`` (item 5):
    ``"exact"`` e^u, ``"bounded"`` e^min(u, 0), ``"detached"`` 0; the value
    is the same in all three. At and beyond the cap the derivative is 0 in
    every mode.
    """
    cap = _LOG_EXP_CAP - jnp.log(scale)
    if gradient == "exact":
        return _exact_exp(u, cap)
    if gradient == "bounded":
        return _bounded_exp(u, cap)
    if gradient == "detached":
        return jax.lax.stop_gradient(jnp.exp(jnp.minimum(u, cap)))
    raise RuleError(rule_message("gradient", gradient, f"one of {EXP_GRADIENTS}"))


@jax.custom_jvp
def _exact_exp(u: jax.Array, cap: jax.Array) -> jax.Array:
    return jnp.exp(jnp.minimum(u, cap))


def _exact_exp_jvp(primals, tangents):
    (u, cap), (du, dcap) = primals, tangents
    y = _exact_exp(u, cap)
    # exp(min(u, cap))'s derivative with jnp.minimum's tie rule (each side
    # half the slope at u = cap), as one product per side: autodiff of the
    # plain expression keeps e^min(u, cap) and min's weight, two residuals
    # per step, where this keeps one. A side with no tangent (the cap when
    # only the input is differentiated) costs nothing.
    below = jnp.where(u < cap, 1.0, jnp.where(u == cap, 0.5, 0.0))
    dy = jnp.zeros_like(y)
    if not isinstance(du, SymbolicZero):
        dy = (y * below) * du
    if not isinstance(dcap, SymbolicZero):
        dy = dy + (y * (1.0 - below)) * dcap
    return y, dy


_exact_exp.defjvp(_exact_exp_jvp, symbolic_zeros=True)


@jax.custom_jvp
def _bounded_exp(u: jax.Array, cap: jax.Array) -> jax.Array:
    return jnp.exp(jnp.minimum(u, cap))


@_bounded_exp.defjvp
def _bounded_exp_jvp(primals, tangents):
    (u, cap), (du, _) = primals, tangents
    y = _bounded_exp(u, cap)
    # The cap is a guard on the representable range, not part of the
    # dynamics: no gradient flows into it (nor beyond it).
    slope = jnp.where(u < cap, jnp.minimum(y, 1.0), 0.0)
    return y, slope * du


def is_compensated(dtype) -> bool:
    """Whether a state of ``dtype`` is kept as a double-word hi + lo: the half
    precisions (fewer than float32's 24 significant bits)."""
    return jnp.finfo(dtype).nmant < jnp.finfo(jnp.float32).nmant


def split(x: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """(hi, lo) in ``dtype`` with hi = round(x) saturated, lo = round(x − hi)."""
    x = saturate(x, dtype)
    hi = x.astype(dtype)
    return hi, (x - hi.astype(x.dtype)).astype(dtype)


def join(hi: jax.Array, lo: jax.Array, dtype) -> jax.Array:
    """hi + lo evaluated in the wide ``dtype``."""
    return widen(hi, dtype) + widen(lo, dtype)


# A double-word of a p-significant-bit format resolves about 2p bits
# (relative unit 2^-2p). Measured (f–I curves against float32, bfloat16,
# dt = 0.1 ms): spike counts are identical down to dt/τ = 0.65 units and
# within 4 % at 0.07; below a quarter unit the constructor refuses.
RESOLUTION_MARGIN = 0.25


def resolution_problem(dtype, dt: float, time_constants: dict[str, float]) -> str | None:
    """Why a ``dtype`` soma with step ``dt`` (ms) cannot follow float32, or None.

    ``time_constants`` maps field names to their largest values (ms): each
    sets a relative change per step, dt/τ, which must stay
    ``RESOLUTION_MARGIN`` double-word units above rounding.
    """
    if not is_compensated(dtype):
        return None
    unit = 2.0 ** (-2 * (jnp.finfo(dtype).nmant + 1))
    for name, tau in time_constants.items():
        if dt / tau < RESOLUTION_MARGIN * unit:
            smallest_dt = RESOLUTION_MARGIN * unit * tau
            return (f"dtype = {jnp.dtype(dtype).name} with dt = {dt} ms cannot resolve the "
                    f"relative change dt/{name} = {dt / tau:.3g} per step ({name} = {tau} ms; "
                    f"the double-word state resolves about {unit:.1e}): spike counts would "
                    f"drift from float32's. Use dt ≥ {smallest_dt:.3g} ms, or dtype=float32")
    return None
