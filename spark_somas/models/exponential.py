"""The four exponential integrate-and-fire somas and their exponential term.

Each class states its own equations (``time_constants`` and ``drives`` in
relaxation form τ_x·dx/dt = F_x, its threshold, its reset) and
:func:`spark_somas.models.protocol.step` applies them. With input current I
(pA) held over the step, units mV, ms, pA, GΩ, nS::

    ExpIF:   τ_m dV/dt = −(V − E_L) + Δ_T·exp((V − V_T)/Δ_T) + R·I
    AdEx:    τ_m dV/dt = −(V − E_L) + Δ_T·exp((V − V_T)/Δ_T) − R·w + R·I
             τ_w dw/dt = a·(V − E_L) − w
    spike = V > V_th   →   V ← V_r ;  AdEx: w ← w + b
    simplified AdEx: V_T and V_th shifted by θ, then θ ← θ·exp(−dt/τ_θ) + Δθ·spike

On a refractory step (Brian2's convention, n = floor(t_ref/dt + 1e-3):
after a spike at step k, steps k+1 … k+n−1) the refractory somas' ``gate``
holds V, ignores the input and emits no spike; θ still decays. The
exponential is capped from the integrator's evaluation and its backward
pass is the config's ``exp_gradient`` (:func:`exponential_term`,
:mod:`spark_somas.dynamics.numerics`).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from spark_somas.models import configs
from spark_somas.dynamics import integrators
from spark_somas.dynamics import numerics
from spark_somas.models.protocol import Soma, StateVariable, StepOptions

__all__ = [
    "exponential_term",
    "refractory_steps",
    "ExponentialSoma",
    "RefractoryExponentialSoma",
    "AdaptiveExponentialSoma",
    "SimplifiedAdaptiveExponentialSoma",
]

Array = jax.Array


def exponential_term(p: Any, v: Array, v_t: Array, stage: integrators.Evaluation,
                     options: StepOptions) -> Array:
    """Δ_T·exp((V − V_T)/Δ_T) (mV), the exponential models' guard applied:
    e^u capped where c_V · w_min · Δ_T · e^u would pass ``numerics.EXP_CAP``
    (c_V, w_min from the integrator's evaluation ``stage``), its backward
    pass the config's ``exp_gradient`` (``options.settings``; "exact" when
    not set); see :func:`spark_somas.dynamics.numerics.capped_exp`."""
    scale = stage.coefficients["potential"] * stage.smallest_weight * p.spike_slope
    mode = options.setting("exp_gradient", configs.ExponentialSomaConfig.exp_gradient)
    return p.spike_slope * numerics.capped_exp((v - v_t) / p.spike_slope, scale, mode)


def _membrane(p: Any, v: Array, v_t: Array, drive: Array, stage: integrators.Evaluation,
              options: StepOptions) -> Array:
    """−(V − E_L) + Δ_T·exp((V − V_T)/Δ_T) + drive."""
    return -(v - p.potential_rest) + exponential_term(p, v, v_t, stage, options) + drive


def _input(p: Any, current: Array) -> Array:
    """R·I (mV): at most 10^6 GΩ · 2^40 pA ≈ 10^18 mV for a saturated current."""
    return p.resistance * current


def refractory_steps(cooldown: Array, dt: float) -> Array:
    """n = floor(t_ref/dt + 1e-3), Brian2's count of refractory steps (int32,
    saturated at 2^30 so that it never wraps)."""
    return jnp.minimum(jnp.floor(cooldown / dt + 1e-3), 2.0**30).astype(jnp.int32)


class ExponentialSoma(Soma):
    """Exponential integrate-and-fire soma (Fourcaud-Trocmé et al. 2003).

    .. math:: τ_m \\dot V = -(V - E_L) + Δ_T e^{(V - V_T)/Δ_T} + R I,
       \\quad V > V_{th} ⇒ V ← V_r

    Constructor arguments: see :class:`Soma`.
    """

    config_class = configs.ExponentialSomaConfig
    state_variables = {
        "potential": StateVariable("mV", rest="potential_rest", takes=("potential_reset",)),
    }
    default_trainable = ("potential_tau", "threshold")

    @staticmethod
    def time_constants(p: Any) -> dict[str, Array]:
        """τ_m (ms) of the one integrated variable, V."""
        return {"potential": p.potential_tau}

    @staticmethod
    def drives(p: Any, x: Mapping[str, Array], current: Array,
               stage: integrators.Evaluation, options: StepOptions) -> dict[str, Array]:
        """τ_m dV/dt = −(V − E_L) + Δ_T·exp((V − V_T)/Δ_T) + R·I"""
        return {"potential": _membrane(p, x["potential"], p.rheobase_threshold,
                                       _input(p, current), stage, options)}

    @staticmethod
    def spike_threshold(p: Any, x: Mapping[str, Array]) -> Array:
        """A spike when V > V_th."""
        return p.threshold

    @staticmethod
    def cell_scale(p: Any) -> Array:
        """d = V_th − E_L (mV), the unit of a ``relative`` surrogate's width;
        Δ_T where a legal but unusual cell rests within Δ_T of its threshold
        (or above it)."""
        return jnp.maximum(p.threshold - p.potential_rest, p.spike_slope)

    @staticmethod
    def input_scale(p: Any) -> Any:
        """I_rh = (V_T − E_L − Δ_T)/R (pA), the smallest constant current
        that makes an ExpIF neuron fire (Fourcaud-Trocmé et al. 2003)."""
        return (p.rheobase_threshold - p.potential_rest - p.spike_slope) / p.resistance

    @staticmethod
    def after_spike(p: Any, x: Mapping[str, Array], spike: Array, dt: float) -> dict[str, Array]:
        """V ← V_r where spiking (a blend, so that an undetached reset carries
        the spike's gradient)."""
        return {**x, "potential": x["potential"] * (1.0 - spike) + p.potential_reset * spike}

class RefractoryExponentialSoma(ExponentialSoma):
    """ExpIF with an absolute refractory period ``cooldown`` (ms), Brian2's
    convention: after a spike at step k, steps k+1 … k+n-1 hold V at V_r,
    ignore the input and cannot spike (n = floor(t_ref/dt + 1e-3)); the
    shortest interspike interval is max(n, 1) steps. The counter counts
    down and saturates at 0, so it never wraps."""

    config_class = configs.RefractoryExponentialSomaConfig
    state_variables = {**ExponentialSoma.state_variables,
                       "refractory": StateVariable("steps", integrated=False, integer=True)}

    @staticmethod
    def gate(p: Any, counters: Mapping[str, Array], x: Mapping[str, Array],
             x_new: dict[str, Array], spike: Array) -> tuple[dict[str, Array], Array]:
        """While the counter runs (> 0), V keeps its start value and no spike."""
        held = counters["refractory"] > 0
        return ({**x_new, "potential": jnp.where(held, x["potential"], x_new["potential"])},
                jnp.where(held, 0.0, spike))

    @staticmethod
    def update_counters(p: Any, counters: Mapping[str, Array], spike: Array,
                        dt: float) -> dict[str, Array]:
        """A spike sets the counter to n − 1 (the spike's own step is the
        first of n); otherwise it counts down to 0."""
        counter = counters["refractory"]
        return {"refractory": jnp.where(spike > 0,
                                        jnp.maximum(refractory_steps(p.cooldown, dt) - 1, 0),
                                        jnp.maximum(counter - 1, 0))}


class AdaptiveExponentialSoma(ExponentialSoma):
    """Adaptive exponential integrate-and-fire (Brette & Gerstner 2005).

    .. math::

       τ_m \\dot V &= -(V - E_L) + Δ_T e^{(V - V_T)/Δ_T} - R w + R I, \\\\
       τ_w \\dot w &= a (V - E_L) - w, \\\\
       V > V_{th} &⇒ V ← V_r,\\ w ← w + b
    """

    config_class = configs.AdaptiveExponentialSomaConfig
    state_variables = {**ExponentialSoma.state_variables, "adaptation": StateVariable("pA")}
    default_trainable = ExponentialSoma.default_trainable + (
        "adaptation_tau", "adaptation_delta", "adaptation_subthreshold")
    adaptation_fields = ("adaptation_delta", "adaptation_subthreshold")

    @staticmethod
    def time_constants(p: Any) -> dict[str, Array]:
        """τ_m and τ_w (ms) of the integrated variables V and w."""
        return {"potential": p.potential_tau, "adaptation": p.adaptation_tau}

    @staticmethod
    def drives(p: Any, x: Mapping[str, Array], current: Array,
               stage: integrators.Evaluation, options: StepOptions) -> dict[str, Array]:
        """τ_m dV/dt = −(V − E_L) + Δ_T·exp((V − V_T)/Δ_T) − R·w + R·I,
        τ_w dw/dt = a·(V − E_L) − w"""
        v, w = x["potential"], x["adaptation"]
        return {
            "potential": _membrane(p, v, p.rheobase_threshold,
                                   _input(p, current) - p.resistance * w, stage, options),
            "adaptation": p.adaptation_subthreshold * (v - p.potential_rest) - w,
        }

    @staticmethod
    def after_spike(p: Any, x: Mapping[str, Array], spike: Array, dt: float) -> dict[str, Array]:
        """V ← V_r, w ← w + b."""
        return {**ExponentialSoma.after_spike(p, x, spike, dt),
                "adaptation": x["adaptation"] + p.adaptation_delta * spike}


class SimplifiedAdaptiveExponentialSoma(RefractoryExponentialSoma):
    """Refractory ExpIF with an adaptive threshold offset θ (mV) in place of w.

    A step integrates with V_T + θ, detects against V_th + θ, resets, then
    θ ← θ·exp(-dt/τ_θ) + Δθ·spike; θ decays on refractory steps too.
    """

    config_class = configs.SimplifiedAdaptiveExponentialSomaConfig
    state_variables = {**RefractoryExponentialSoma.state_variables,
                       "threshold_offset": StateVariable("mV", integrated=False)}
    default_trainable = ExponentialSoma.default_trainable + ("threshold_tau", "threshold_delta")
    adaptation_fields = ("threshold_delta",)

    @staticmethod
    def drives(p: Any, x: Mapping[str, Array], current: Array,
               stage: integrators.Evaluation, options: StepOptions) -> dict[str, Array]:
        """τ_m dV/dt = −(V − E_L) + Δ_T·exp((V − V_T − θ)/Δ_T) + R·I"""
        return {"potential": _membrane(p, x["potential"], p.rheobase_threshold
                                       + x["threshold_offset"], _input(p, current), stage,
                                       options)}

    @staticmethod
    def spike_threshold(p: Any, x: Mapping[str, Array]) -> Array:
        """A spike when V > V_th + θ."""
        return p.threshold + x["threshold_offset"]

    @staticmethod
    def after_spike(p: Any, x: Mapping[str, Array], spike: Array, dt: float) -> dict[str, Array]:
        """V ← V_r; θ ← θ·exp(−dt/τ_θ) + Δθ·spike, every step."""
        return {**ExponentialSoma.after_spike(p, x, spike, dt),
                "threshold_offset": x["threshold_offset"] * jnp.exp(-dt / p.threshold_tau)
                + p.threshold_delta * spike}
