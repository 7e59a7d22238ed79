"""A fit as data: :class:`Stage` (which fields move, on which sweeps, by which
loss and optimizer), the usual recipes (:func:`recipe`, :func:`forced_recipe`,
:func:`spike_recipe`; :func:`default_recipe` chooses among them for a
recording) and the fields that act only at a spike (:func:`spike_triggered`)."""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spark_somas.dynamics import integrators
from spark_somas.models.configs import require
from spark_somas.models.somas import AdaptiveExponentialSoma, Soma, input_scale, mean_parameters
from spark_somas.fitting.losses import Loss
from spark_somas.fitting.recording import Recording, as_tuple, checked_number

__all__ = ["Stage", "recipe", "forced_recipe", "spike_recipe", "default_recipe", "cut_off",
           "free_run_settings", "spike_triggered", "OPTIMIZERS", "ONSET_FIELDS"]

#: The optimizers a stage may name.
OPTIMIZERS = ("lbfgs", "adam")


class _Reads:
    """Parameters ``p`` that note which fields a model's function reads."""

    def __init__(self, values: Mapping[str, jax.Array]) -> None:
        self._values, self._read = dict(values), set()

    def __getattr__(self, name: str) -> jax.Array:
        if name not in self._values:
            raise AttributeError(name)
        self._read.add(name)
        return self._values[name]


def spike_triggered(soma: Soma) -> tuple[str, ...]:
    """The fields of ``soma`` that act only when it spikes, in config order.

    A recording below threshold says nothing about them, so :func:`recipe`
    fits them in its second stage. They are read off the model's own
    declarations, not listed: the fields that what happens at a spike reads
    — its ``spike_threshold``, ``gate``, ``after_spike`` and
    ``update_counters`` at a spike (s = 1) — and that neither its
    ``time_constants`` nor its ``drives`` (the subthreshold dynamics
    τ_x·dx/dt = F_x) depend on. The latter are differentiated (forward
    mode) with respect to every field at four states around rest and two
    currents. A field that only sets a state's value at rest (a state
    variable's ``rest``) acts at no spike and is not among them. For the four
    somas: V_th, V_r, b, t_ref, δθ and τ_θ; for a model written outside the
    package, whatever its equations say.
    """
    require(isinstance(soma, Soma), "soma", soma, "a soma instance")
    model = type(soma)
    means = mean_parameters(soma)
    names = [f.name for f in soma.config_class.quantity_fields()]
    state = soma.neuron_state()
    kinds = model.state_variables
    rest = {k: jnp.asarray(v, jnp.float32).reshape(-1)[0] for k, v in state.items()
            if k in kinds and not kinds[k].integer}
    counters = {k: jnp.zeros((), jnp.int32) for k in kinds if kinds[k].integer}
    rng = np.random.default_rng(0)
    probes = [({k: v + float(rng.normal(0.0, 2.0)) for k, v in rest.items()}, current)
              for current in (0.0, float(input_scale(soma))) for _ in range(2)]

    def subthreshold(values: jax.Array, x: Mapping[str, jax.Array], current: float):
        p = types.SimpleNamespace(**dict(zip(names, values)))
        taus = model.time_constants(p)
        stage = integrators.Evaluation({n: soma.dt / tau for n, tau in taus.items()}, 1.0)
        drives = model.drives(p, x, jnp.float32(current), stage, soma.options)
        return jnp.stack([*taus.values(), *drives.values()])

    values = jnp.asarray([getattr(means, n) for n in names], jnp.float32)
    below = np.zeros(len(names), bool)
    for x, current in probes:
        below |= np.any(np.asarray(jax.jacfwd(subthreshold)(values, x, current)) != 0.0, axis=0)
    p = _Reads(dict(zip(names, values)))
    spike = jnp.float32(1.0)
    model.spike_threshold(p, rest)
    x_new, spike = model.gate(p, counters, rest, dict(rest), spike)
    model.after_spike(p, x_new, spike, soma.dt)
    model.update_counters(p, counters, spike, soma.dt)
    return tuple(n for n, b in zip(names, below) if n in p._read and not b)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a fit: which fields move, on which sweeps, by which loss
    and optimizer.

    Attributes:
      fields: the config fields this stage fits (a subset of those given to
        :func:`fit_soma`); the others keep their current values.
      loss: what to minimise.
      sweeps: ``"all"``, ``"subthreshold"`` (sweeps without a recorded
        spike), ``"spiking"`` (those with one), or sweep indices.
      optimizer: ``"lbfgs"`` (optax L-BFGS with a zoom line search: smooth
        losses) or ``"adam"`` (losses on spikes, piecewise constant in
        between the surrogate's reach).
      steps: iterations (L-BFGS) or updates (Adam).
      learning_rate: Adam's step in the unconstrained coordinates u
        (≈ relative change per step for fields on a log scale).
      spikes: what resets the model: ``"model"`` (its own threshold, as in
        a free run) or ``"recorded"`` (the recording's spike times: teacher
        forcing, V held at most at the threshold in between). Forced, the
        potential is a smooth function of every field between the cell's
        spikes, whatever the model's own spikes would have been.
      settings: the soma's settings to change for this stage, name ->
        value (e.g. ``{"exp_gradient": "bounded"}``: how the exponential
        term is differentiated); the others are the soma's own. Kept as
        sorted (name, value) pairs.
    """

    fields: tuple[str, ...]
    loss: Loss = Loss()
    sweeps: str | tuple[int, ...] = "all"
    optimizer: str = "lbfgs"
    steps: int = 30
    learning_rate: float = 0.02
    spikes: str = "model"
    settings: Mapping[str, Any] | tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        try:
            settings = dict(self.settings) if isinstance(self.settings, (Mapping, tuple)) else None
        except (TypeError, ValueError):  # a tuple that is not of (name, value) pairs
            settings = None
        require(settings is not None and all(isinstance(n, str) for n in settings),
                "Stage.settings", self.settings, "a mapping of setting names to values")
        object.__setattr__(self, "settings", tuple(sorted(settings.items())))
        fields = as_tuple(self.fields, "Stage.fields", "a field name or a sequence of them")
        require(len(fields) > 0 and all(isinstance(f, str) for f in fields), "Stage.fields",
                self.fields, "a field name or a non-empty sequence of them")
        object.__setattr__(self, "fields", fields)
        require(isinstance(self.loss, Loss), "Stage.loss", self.loss, "a spark_somas.fitting.Loss")
        require(self.optimizer in OPTIMIZERS, "Stage.optimizer", self.optimizer,
                f"one of {OPTIMIZERS}")
        object.__setattr__(self, "steps", checked_number(
            self.steps, "Stage.steps", lambda n: n >= 1, "an int ≥ 1", integer=True))
        object.__setattr__(self, "learning_rate", checked_number(
            self.learning_rate, "Stage.learning_rate", lambda r: math.isfinite(r) and r > 0,
            "finite, > 0"))
        require(self.spikes in ("model", "recorded"), "Stage.spikes", self.spikes,
                "'model' (its own threshold) or 'recorded' (the recording's spike times)")
        rule = "'all', 'subthreshold', 'spiking' or sweep indices (ints)"
        if isinstance(self.sweeps, str):
            require(self.sweeps in ("all", "subthreshold", "spiking"), "Stage.sweeps",
                    self.sweeps, rule)
        else:
            sweeps = as_tuple(self.sweeps, "Stage.sweeps", rule)
            object.__setattr__(self, "sweeps", tuple(
                checked_number(k, f"Stage.sweeps[{i}]", lambda _: True, "a sweep index, an int",
                               integer=True) for i, k in enumerate(sweeps)))
            require(len(self.sweeps) > 0, "Stage.sweeps", self.sweeps, "at least one sweep")

    def pick(self, recording: Recording) -> tuple[int, ...]:
        """The indices of the sweeps this stage fits."""
        if not isinstance(self.sweeps, str):
            return self.sweeps
        if self.sweeps == "all":
            return tuple(range(recording.n_sweeps))
        counts = recording.spike_counts()
        require(counts is not None, "Recording.spike_times", None,
                f"known spike times, to choose the {self.sweeps!r} sweeps of a stage")
        keep = (counts == 0) if self.sweeps == "subthreshold" else (counts > 0)
        return tuple(int(k) for k in np.nonzero(keep)[0])



def recipe(fields: Sequence[str], *, soma: Soma | type[Soma] = AdaptiveExponentialSoma,
           subthreshold_steps: int = 30, spike_steps: int = 100, polish_steps: int = 20,
           learning_rate: float = 0.05) -> tuple[Stage, ...]:
    """The usual staged fit (Brette & Gerstner 2005; Naud et al. 2008) of
    ``fields`` of ``soma`` (a class or an instance; default AdEx).

    1. The fields that shape the response below threshold (all but
       :func:`spike_triggered` ones), on the sweeps without spikes, by the
       potential MSE and L-BFGS: a smooth, well-posed problem.
    2. The spike-triggered fields (b, V_r, ...) on the sweeps with spikes,
       by Adam on the spike count and the van Rossum distance (τ = 10 ms):
       while the model's spikes fall elsewhere than the data's, the
       potential error points the wrong way, the spike losses do not.
    3. The same fields by L-BFGS on the potential MSE of the same sweeps,
       once the spikes are in place.

    A stage with no field is left out.
    """
    fields = tuple(fields)
    triggered = spike_triggered(soma(units=1) if isinstance(soma, type) else soma)
    sub = tuple(f for f in fields if f not in triggered)
    spk = tuple(f for f in fields if f in triggered)
    stages = []
    if sub:
        stages.append(Stage(sub, Loss(potential=1.0), "subthreshold", "lbfgs",
                            subthreshold_steps))
    if spk:
        stages.append(Stage(spk, Loss(potential=0.0, count=1.0, van_rossum=1.0), "spiking",
                            "adam", spike_steps, learning_rate))
        stages.append(Stage(spk, Loss(potential=1.0), "spiking", "lbfgs", polish_steps))
    return tuple(stages)


#: The fields that shape the spike's onset in the exponential somas (V_T,
#: Δ_T): a forced fit adds the escape error only where it fits them.
ONSET_FIELDS = ("rheobase_threshold", "spike_slope")


def forced_recipe(fields: Sequence[str], *, steps: int = 40, upswing: float = 2.0,
                  cutoff: float | None = None, escape: float = 0.01) -> tuple[Stage, ...]:
    """One stage: every field of ``fields`` by L-BFGS on the potential MSE
    of every sweep, the model reset at the recorded spike times (teacher
    forcing, ``spikes="recorded"``), leaving out the ``upswing`` ms before
    each spike; where ``fields`` include V_T or Δ_T (:data:`ONSET_FIELDS`)
    and ``cutoff`` (mV, the soma's V_th: :func:`cut_off`) is given, plus
    ``escape`` × the escape error (:class:`Loss`): the model must reach its
    cut-off by the step before each of the cell's spikes.

    Between two recorded spikes the forced model's potential is a smooth
    function of every field (b and V_r included: they act at the spikes'
    known times), so the fit is one smooth least-squares problem. It fits
    the potential *between* spikes; it does not by itself place the model's
    own spikes. Without the escape error a fit of V_T is biased towards
    late spikes: a model that escapes early sits at V_th against the
    recorded potential and pays for it, one that escapes late is reset by
    the recorded spike and pays nothing, so V_T settles too high and the
    model, running free, fires too late and too rarely (on a
    Hodgkin–Huxley cell, a third too few spikes and a held-out Γ near 0.1;
    the fitting guide has what the escape error gives). Always judge the
    fit free-running on sweeps it was neither fitted nor selected on
    (``fit_soma(test=...)``). A field that acts only through spike
    detection (the cut-off ``threshold``) moves nothing in a forced run:
    fit it with a free-running stage.

    The last ms before a spike are left out of the potential's error
    because there the escape is steep: a model whose V leaves V_T a step
    before or after the cell's costs tens of mV per sample, whatever its
    other fields. Where a cell lingers near V_T for long before it escapes
    (a < 0: Naud et al.'s delayed regular bursting and irregular spiking),
    that sensitivity reaches further back than any fixed window and the
    forced fit is ill-conditioned (see the fitting guide's recovery table).
    """
    fields = tuple(fields)
    onset = cutoff is not None and escape > 0 and any(f in ONSET_FIELDS for f in fields)
    loss = (Loss(potential=1.0, upswing=upswing, escape=escape, cutoff=cutoff) if onset
            else Loss(potential=1.0, upswing=upswing))
    return (Stage(fields, loss, "all", "lbfgs", steps, spikes="recorded"),)


def cut_off(soma: Soma) -> float:
    """The potential (mV) at which ``soma`` spikes, at rest: its model's
    ``spike_threshold`` with its (mean) parameters (V_th for AdEx), to
    float32 precision."""
    require(isinstance(soma, Soma), "soma", soma, "a soma instance")
    state = {k: jnp.asarray(v, jnp.float32).reshape(-1)[0]
             for k, v in soma.neuron_state().items()}
    return float(np.float32(type(soma).spike_threshold(mean_parameters(soma), state)))


def spike_recipe(fields: Sequence[str], *, steps: int = 150, learning_rate: float = 0.02,
                 settings: Mapping[str, Any] | None = None) -> tuple[Stage, ...]:
    """For spike times without a potential: one stage, every field of
    ``fields`` by Adam on the spike count and the van Rossum distance
    (τ = 10 ms) of every sweep, the model running free, with the soma's
    ``settings`` changed for it (see :func:`free_run_settings`)."""
    return (Stage(tuple(fields), Loss(potential=0.0, count=1.0, van_rossum=1.0), "all", "adam",
                  steps, learning_rate, settings=settings or {}),)


def free_run_settings(soma: Soma) -> dict[str, Any]:
    """The settings a stage running free changes on ``soma``: an
    exponential soma differentiated ``"exact"`` is differentiated
    ``"bounded"`` (e^min(u, 0)) instead. The exact derivative of
    Δ_T·e^((V−V_T)/Δ_T) reaches e^25 at the cut-off of each of the model's
    spikes; over a free run of thousands of steps the gradient overflows
    and no update is made. The value of the term, hence the run, is the
    same."""
    own = dict(soma.config.settings())
    return {"exp_gradient": "bounded"} if own.get("exp_gradient") == "exact" else {}


def default_recipe(fields: Sequence[str], soma: Soma,
                   recordings: Recording | Sequence[Recording]) -> tuple[Stage, ...]:
    """What :func:`~spark_somas.fitting.fit_soma` (one recording) and
    :func:`~spark_somas.fitting.fit_cells` (several, one recipe for all)
    run when given no stages:

    * potential and spike times (in every recording): :func:`forced_recipe`
      on every sweep (no sweep without spikes is needed), with the escape
      error at ``soma``'s cut-off (:func:`cut_off`) where V_T or Δ_T are
      fitted;
    * spike times (in every recording), a potential not in all:
      :func:`spike_recipe`, free-running, every sweep, with
      :func:`free_run_settings`;
    * otherwise: the potential's MSE on every sweep by L-BFGS, the model
      running free (without spike times the sweeps cannot be told apart).
    """
    fields = tuple(fields)
    if isinstance(recordings, Recording):
        recordings = (recordings,)
    spikes = all(r.spike_times is not None for r in recordings)
    if spikes and all(r.potential is not None for r in recordings):
        return forced_recipe(fields, cutoff=cut_off(soma))
    if spikes:
        return spike_recipe(fields, settings=free_run_settings(soma))
    return (Stage(fields, Loss(potential=1.0), "all", "lbfgs", 30),)
