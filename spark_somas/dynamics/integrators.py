"""Explicit integrators for the somas' equations, separate from the equations.

A soma states its continuous dynamics in relaxation form, one equation per
integrated state variable x (V, w):

    τ_x · dx/dt = F_x(state, I)

with its time constant τ_x and its drive F_x (see ``drives`` and
``time_constants`` on each soma class). The input current I is held constant
over the step [t, t + dt) for every stage. An integrator advances all of
them by one step dt (ms); the threshold, the model's gating and the reset
are applied afterwards by :func:`spark_somas.models.protocol.step`, the same
for every method.

``"euler"`` (the default and the reference; Brian2's ``method='euler'``)
    x ← x + (dt/τ_x)·F_x(state)
``"rk2"`` (the midpoint method; Brian2's ``'rk2'``)
    x ← x + (dt/τ_x)·F_x(state + ½·(dt/τ)·F(state))
``"rk4"`` (the classical Runge–Kutta method; Brian2's ``'rk4'``)
    x ← x + (dt/τ_x)·(F₁ + 2F₂ + 2F₃ + F₄)/6, stages at 0, ½, ½, 1
``"exponential_euler"`` (Brian2's exponential Euler in linearised form)
    x ← x∞ + (x − x∞)·e^(−dt/τ_x),  x∞ = x + F_x(state),
    i.e. x ← x + (1 − e^(−dt/τ_x))·F_x(state): the part of each equation
    linear in its own variable (−x/τ_x) is integrated exactly over the
    step, every other term is frozen at its value at the start of the step.
    For ExpIF: V ← V∞ + (V − V∞)·e^(−dt/τ_m), V∞ = E_L + Δ_T·e^((V−V_T)/Δ_T) + R·I.

Every method is a :class:`Method`: one explicit Runge–Kutta tableau and
the rule that turns a time constant into its step coefficient c_x (dt/τ_x,
or 1 − e^(−dt/τ_x) for the exponential Euler, whose exact linear part is
that rule and nothing else). A method is looked up by name once
(:func:`method`, when a soma's options are built); :func:`advance` runs the
object it is given and never asks its name. An integrator knows no variable
names: it hands each evaluation of the drives an :class:`Evaluation` — the
coefficients c_x by the model's own names and the tableau's smallest
weight — from which a model bounds its own stiff terms
(the exponential models cap e^u there, :mod:`spark_somas.dynamics.numerics`); the
point each later stage starts from is clipped to the state range
(±``numerics.STATE_LIMIT``), so that a stiff step (dt ≫ τ) cannot compound
through the stages of rk2 and rk4. With both, every stage stays finite for
every legal parameter set; forward Euler has no intermediate stage, and
below the state range the clip changes nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from spark_somas.dynamics import numerics
from spark_somas.errors import RuleError, require

__all__ = ["METHODS", "INTEGRATORS", "Method", "method", "Tableau", "TABLEAUS", "Evaluation",
           "Drives", "advance", "euler_coefficient", "exponential_coefficient"]

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What an integrator tells the drives about the step being taken.

    ``coefficients[x]`` is c_x, the factor that turns variable x's drive
    F_x into its change in one Euler substep (dt/τ_x, or 1 − e^(−dt/τ_x));
    ``smallest_weight`` is the tableau's smallest nonzero coefficient, so
    a drive bounded by B/(c_x · smallest_weight) moves x by at most B in
    any stage. A model's guard reads them; the integrator does not."""

    coefficients: Mapping[str, Array]
    smallest_weight: float


#: The name models' ``drives`` and earlier code know :class:`Evaluation` by.
Stage = Evaluation

# drives(state, evaluation) -> {x: F_x} for every integrated variable x.
Drives = Callable[[dict[str, Array], Evaluation], dict[str, Array]]


@dataclasses.dataclass(frozen=True)
class Tableau:
    """An explicit Runge–Kutta tableau: stage i starts from
    x + c·Σ_j a[i][j]·F_j and the step is x + c·Σ_i b[i]·F_i."""

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]

    @property
    def smallest_weight(self) -> float:
        """The smallest nonzero coefficient: a capped stage contributes at least
        this share of the cap."""
        return min(w for row in self.a + (self.b,) for w in row if w)


def euler_coefficient(dt: float, tau: Array) -> Array:
    """c = dt/τ: the Runge–Kutta methods' step coefficient."""
    return dt / tau


def exponential_coefficient(dt: float, tau: Array) -> Array:
    """c = 1 − e^(−dt/τ): x ← x + c·F integrates the −x/τ part of
    τ·dx/dt = F exactly over the step (``expm1``, exact for dt ≪ τ too)."""
    return -jnp.expm1(-dt / tau)


@dataclasses.dataclass(frozen=True)
class Method:
    """An integration method: its ``tableau`` and its ``coefficient`` rule
    c_x = coefficient(dt, τ_x) (ms, ms -> 1). Frozen and hashable: a
    soma's step options, a static argument of the compiled loops, hold it."""

    name: str
    tableau: Tableau
    coefficient: Callable[[float, Array], Array] = euler_coefficient

    def coefficients(self, time_constants: Mapping[str, Array], dt: float) -> dict[str, Array]:
        """c_x for each variable x of ``time_constants`` (τ_x, ms) at step ``dt`` (ms)."""
        return {x: self.coefficient(dt, tau) for x, tau in time_constants.items()}

    def __str__(self) -> str:
        return self.name


_EULER = Tableau(a=((),), b=(1.0,))

#: Every method by name, in the order the docs list them.
INTEGRATORS: Mapping[str, Method] = {m.name: m for m in (
    Method("euler", _EULER),
    Method("rk2", Tableau(a=((), (0.5,)), b=(0.0, 1.0))),
    Method("rk4", Tableau(a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
                          b=(1 / 6, 1 / 3, 1 / 3, 1 / 6))),
    Method("exponential_euler", _EULER, exponential_coefficient),
)}
METHODS = tuple(INTEGRATORS)
TABLEAUS: Mapping[str, Tableau] = {name: m.tableau for name, m in INTEGRATORS.items()}


def method(name: str | Method) -> Method:
    """The :class:`Method` called ``name`` (one of :data:`METHODS`); a
    Method is returned as it is. Raises ValueError naming the value and the
    choices otherwise."""
    if isinstance(name, Method):
        return name
    require(isinstance(name, str) and name in INTEGRATORS, "method", name,
            f"one of {METHODS}", error=RuleError)
    return INTEGRATORS[name]


def _combine(weights: tuple[float, ...], stages: list[Array]) -> Array:
    terms = [w * f if w != 1.0 else f for w, f in zip(weights, stages) if w]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def advance(
    method: Method,
    drives: Drives,
    time_constants: Mapping[str, Array],
    state: Mapping[str, Array],
    dt: float,
) -> dict[str, Array]:
    """One step of ``method`` for the variables in ``time_constants``.

    ``drives(state, evaluation)`` returns F_x for each of them
    (``evaluation``: an :class:`Evaluation`); the other entries of
    ``state`` (e.g. a threshold offset) are held over the step. Returns the
    advanced variables.
    """
    tableau = method.tableau
    coeff = method.coefficients(time_constants, dt)
    evaluation = Evaluation(coeff, tableau.smallest_weight)
    stages: list[dict[str, Array]] = []
    for row in tableau.a:
        point = dict(state)
        if any(row):
            for x in coeff:
                # A stage point beyond the state range is not a state the
                # step could store; clipped to it, a stiff stage (dt ≫ τ)
                # cannot compound through the next stages to inf.
                point[x] = numerics.saturate(
                    state[x] + coeff[x] * _combine(row, [f[x] for f in stages]))
        stages.append(drives(point, evaluation))
    return {x: state[x] + coeff[x] * _combine(tableau.b, [f[x] for f in stages]) for x in coeff}
