"""Fitting a soma's parameters to recordings: voltage traces and spike times.

A :class:`Recording` holds sweeps — a step or any current (pA) sampled every
``dt`` ms, and what the cell did: its membrane potential (mV, NaN where not
recorded) and/or its spike times (ms). :func:`fit_soma` adjusts the chosen
config fields of a soma so that the soma, driven by the same currents, does
the same, by gradient descent through :func:`~spark_somas.simulate`
(backpropagation through time, spikes through the soma's surrogate).

**The losses** (:class:`Loss`, a weighted sum; T: samples, S: sweeps):

* potential: L_V = Σ m_ts (V_ts − V*_ts)² / Σ m_ts, in mV², m = 1 where
  the potential was recorded (not NaN) and not within ``upswing`` ms
  before a recorded spike (a spike's onset, where an escape a step early or
  late costs tens of mV: left out of a forced fit, see below);
* spike count: L_n = (1/S) Σ_s (n_s − n*_s)², in spikes²;
* van Rossum (2001) distance: each train is filtered by e^{−t/τ}, and
  L_R = (1/S) Σ_s (1/τ) ∫ (f_s(t) − f*_s(t))² dt, dimensionless (a lone
  extra spike costs ½); τ (ms) sets how far apart two spikes still count
  as close.
* escape error (forced runs): L_E = mean over the recorded spikes of
  (V_cut − V)², in mV², V the model's potential at the step before each
  spike and V_cut its cut-off: a forced model that lags the cell pays for
  it (see :class:`Loss`).

The spike count and the van Rossum distance are sums of Heaviside steps in
the forward pass; their gradients reach the parameters through the
surrogate derivative of each spike. The fitting soma keeps the given soma's
surrogate and gradient switches (by default the reset is detached, so the
potential's gradient follows V ← V_r at the spikes where they fell, and
the adaptation jump w ← w + b·s is kept; a differentiated reset multiplies
the gradient by V − V_r at the crossing, which past a high cut-off such as
Naud et al.'s 0 mV overflows float32).
The exponential term keeps its exact gradient.

**Parameters stay inside their rules.** Each fitted field x lives in a box
[lo, hi]: the bounds given, else the interval its config rule allows
against the fixed fields (:func:`~spark_somas.models.configs.feasible_interval`;
time constants also ≥ dt). The optimizer moves an unconstrained u:

* both ends finite: x = lo + (hi − lo)·σ(u), on a log scale
  (log x = log lo + (log hi − log lo)·σ(u)) when lo > 0;
* only lo finite: x = lo + e^u; only hi: x = hi − e^u;
* neither: x = s·u, s = max(abs(x₀), 1) in the field's unit,

and x is clipped to the box (the strict rules, V_r < V_th, by the next
representable value), u to where the map is finite; a non-finite step keeps
the previous u. No learning rate can leave the box.

**Teacher forcing.** A stage with ``spikes="recorded"`` resets the model at
the recording's spike times instead of its own (V ← V_r, w ← w + b at each
recorded spike; V held at most at the cut-off in between), so that between
two spikes of the cell the model's potential is a smooth function of every
field, the spike-triggered ones included: the potential's error is then
one least-squares problem, as in the fits of integrate-and-fire models to
recordings with known spike times (Jolivet et al. 2006; Mensi et al. 2012;
Pozzorini et al. 2015), with no spike of the model's own to move through a
surrogate.

**Stages, many starts.** A fit is a sequence of :class:`Stage`\\ s — which
fields, which sweeps, which loss, L-BFGS (``optax.lbfgs``, for smooth
problems: the potential below threshold, or forced) or Adam (for losses on
the model's own spikes) — data, not code. :func:`forced_recipe` (the
default when the recording has both potential and spike times) is one
forced L-BFGS stage on every field; :func:`recipe` gives the staged fit
through the model's own spikes: the subthreshold response first, then the
spike-triggered fields. ``starts=K`` runs K
starting points as K neurons (``jax.vmap`` of one neuron's fit, so each
start follows exactly the steps it would alone) in one compiled program,
and keeps the start whose loss on held-out sweeps is least.

**Quality, as the field measures it.** :func:`coincidence_factor` (Γ of
Jolivet et al. 2008, Δ = 4 ms), :func:`explained_variance` of the
subthreshold potential, :func:`relative_errors` against known parameters;
:meth:`FitResult.evaluate` applies the first two to a recording.

Units: potential mV, time ms, current pA, resistance GΩ, conductance nS.

The subpackage holds one idea per module:

* :mod:`spark_somas.fitting.recording` — :class:`Recording` and the checks of the input;
* :mod:`spark_somas.fitting.losses` — :class:`Loss`;
* :mod:`spark_somas.fitting.stages` — :class:`Stage`, :func:`recipe`,
  :func:`forced_recipe`, :func:`spike_recipe`, :func:`default_recipe`,
  :func:`free_run_settings`,
  :func:`cut_off`, :func:`spike_triggered`;
* :mod:`spark_somas.fitting.boxes` — the fitted fields' boxes, bounds and starts;
* :mod:`spark_somas.fitting.engine` — :func:`fit_soma` and :func:`fit_cells` (many
  cells at once), running the stages and choosing the start;
* :mod:`spark_somas.fitting.result` — :class:`FitResult`;
* :mod:`spark_somas.fitting.metrics` — :func:`coincidence_factor`,
  :func:`predicted_fraction`, :func:`explained_variance`, :func:`relative_errors`.
* :mod:`spark_somas.fitting.examples` — a recording shipped with the
  package: Pospischil et al.'s (2008) Hodgkin–Huxley regular-spiking cell
  in Brian2, in sweeps to fit, to choose a start and to judge.

Their public names are re-exported here (``from spark_somas.fitting import
fit_soma``).
"""

from spark_somas.fitting.engine import fit_cells, fit_soma
from spark_somas.fitting.losses import Loss
from spark_somas.fitting.metrics import (coincidence_factor, explained_variance, predicted_fraction,
                                          relative_errors)
from spark_somas.fitting.recording import Recording
from spark_somas.fitting.result import POOR_GAMMA, FitResult, PoorPredictionWarning
from spark_somas.fitting.stages import (OPTIMIZERS, Stage, cut_off, default_recipe, forced_recipe,
                                         free_run_settings, recipe, spike_recipe,
                                         spike_triggered)

__all__ = [
    "Recording",
    "Loss",
    "Stage",
    "recipe",
    "forced_recipe",
    "spike_recipe",
    "free_run_settings",
    "default_recipe",
    "cut_off",
    "spike_triggered",
    "fit_soma",
    "fit_cells",
    "FitResult",
    "PoorPredictionWarning",
    "POOR_GAMMA",
    "predicted_fraction",
    "coincidence_factor",
    "explained_variance",
    "relative_errors",
]
