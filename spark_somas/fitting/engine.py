"""Running a fit: :func:`fit_soma` checks its input, runs the stages for
every start at once (one compiled program per stage: ``jax.vmap`` of one
neuron's optimisation) and keeps the start that does best on held-out
sweeps."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from spark_somas.errors import allocating
from spark_somas.models.configs import require
from spark_somas.models.somas import Soma, SomaConstant, SomaState, step
from spark_somas.simulation.driver import simulate
from spark_somas.fitting.boxes import check_bounds, field_boxes, initial_u, start_count
from spark_somas.fitting.losses import Loss
from spark_somas.fitting.recording import Recording, same_dt
from spark_somas.fitting.result import FitResult
from spark_somas.fitting.stages import Stage, forced_recipe, recipe

__all__ = ["fit_soma"]

Array = jax.Array


def _template(soma: Soma,
              fields: tuple[str, ...]) -> tuple[Any, tuple[dict[str, Array], nnx.State]]:
    """One fitting neuron of ``soma``'s class: its graph (shared by every fit
    of the same class, fields, dt, method, dtype and surrogate, so that they
    share one compilation), the fixed fields' values and its state."""
    config = soma.config_class(surrogate=soma.config.surrogate,
                               detach_reset=soma.config.detach_reset,
                               detach_adaptation=soma.config.detach_adaptation)
    neuron = type(soma)(config, units=1, dt=soma.dt, method=soma.method, trainable=fields,
                        dtype=soma.dtype, param_dtype=soma.param_dtype)
    graph, _, _, state = nnx.split(neuron, nnx.Param, SomaConstant, SomaState)
    fixed = {n: jnp.asarray(np.asarray(v).ravel()[0], soma.param_dtype)
             for n, v in soma.parameters().items() if n not in fields}
    return graph, (fixed, state)


def _run(graph: Any, x: Mapping[str, Array], fixed: tuple[Mapping[str, Array], nnx.State],
         currents: Array, forced: Array | None = None) -> tuple[Array, Array]:
    """One neuron with fields ``x`` (scalars), the other fields and the
    state template ``fixed``, over currents (T, S): its potential and
    spikes, (T, S); with ``forced`` (T, S), the spikes imposed instead of
    detected (:func:`~spark_somas.models.somas.step`)."""
    values, state = fixed
    params = nnx.State({k: nnx.Param(jnp.reshape(v, (1,))) for k, v in x.items()})
    consts = nnx.State({k: SomaConstant(v) for k, v in values.items()})
    soma = nnx.merge(graph, params, consts, state, copy=True)
    soma.reset()
    if forced is None:
        rec = simulate(soma, currents[..., None])
        return rec.potential[..., 0], rec.spikes[..., 0]
    soma.broadcast_state(currents.shape[1:] + (1,))
    model, p, options = type(soma), soma.parameters(), soma.options

    def one(state, inputs):
        current, imposed = inputs
        new, spikes = step(model, p, state, current, options, forced=imposed)
        return new, (new[model.membrane], spikes)

    _, (potential, spikes) = jax.lax.scan(one, soma.neuron_state(),
                                          (currents[..., None], forced[..., None]))
    return potential[..., 0], spikes[..., 0]


def _lane_loss(u_fit, u_rest, graph, boxes, fixed, data, loss, dt, forced):
    x = {n: boxes[n].to_x(u) for n, u in {**u_rest, **u_fit}.items()}
    potential, spikes = _run(graph, x, fixed, data["currents"],
                             data["spikes"] if forced else None)
    # In the optimizer's dtype (u's, at least float32), whatever the soma's.
    return loss(potential, spikes, data, dt).astype(jax.tree.leaves(u_fit)[0].dtype)


def _optimizer(stage: Stage) -> optax.GradientTransformation:
    if stage.optimizer == "adam":
        return optax.adam(stage.learning_rate)
    return optax.lbfgs(linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=15))


@functools.partial(jax.jit, static_argnames=("graph", "stage", "boxes", "dt"))
def _fit_stage(u_fit, u_rest, fixed, data, *, graph, stage, boxes, dt):
    """``stage.steps`` iterations for every start at once (vmapped over the
    leading axis of ``u_fit`` / ``u_rest``); returns the final u, the loss
    before each iteration (steps, K) and the loss evaluations per start."""
    boxes = dict(boxes)
    opt = _optimizer(stage)
    low = {n: boxes[n].u_range()[0] for n in u_fit}
    high = {n: boxes[n].u_range()[1] for n in u_fit}

    def one(u_fit, u_rest):
        value_fn = functools.partial(_lane_loss, u_rest=u_rest, graph=graph, boxes=boxes,
                                     fixed=fixed, data=data, loss=stage.loss, dt=dt,
                                     forced=stage.spikes == "recorded")
        grad_fn = (optax.value_and_grad_from_state(value_fn) if stage.optimizer == "lbfgs"
                   else lambda u, state: jax.value_and_grad(value_fn)(u))

        def iteration(carry, _):
            u, state = carry
            value, grad = grad_fn(u, state=state)
            grad = jax.tree.map(lambda g: jnp.where(jnp.isfinite(g), g, 0.0), grad)
            step, state = opt.update(grad, state, u, value=value, grad=grad, value_fn=value_fn)
            new = optax.apply_updates(u, step)
            new = {n: jnp.clip(jnp.where(jnp.isfinite(v), v, u[n]), low[n], high[n])
                   for n, v in new.items()}
            extra = optax.tree_utils.tree_get(state, "num_linesearch_steps", 0)
            return (new, state), (value, 1 + jnp.asarray(extra))

        (u, _), (history, evals) = jax.lax.scan(iteration, (u_fit, opt.init(u_fit)), None,
                                                length=stage.steps)
        return u, history, jnp.sum(evals)

    return jax.vmap(one)(u_fit, u_rest)


@functools.partial(jax.jit, static_argnames=("graph", "loss", "boxes", "dt"))
def _losses(u, fixed, data, *, graph, loss, boxes, dt):
    """The loss of every start (vmapped over u's leading axis)."""
    boxes = dict(boxes)
    return jax.vmap(lambda u: _lane_loss(u, {}, graph, boxes, fixed, data, loss, dt, False))(u)



def fit_soma(
    soma: Soma | type[Soma],
    recording: Recording,
    fields: Sequence[str],
    *,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    stages: Sequence[Stage] | None = None,
    starts: int | Mapping[str, Any] = 1,
    held_out: Recording | None = None,
    selection: Loss | None = None,
    seed: int = 0,
) -> FitResult:
    """Fits ``fields`` of ``soma`` to ``recording``.

    Args:
      soma: a soma (its fields not fitted are held at its values, which
        must be one per neuron or shared) or a soma class (its defaults).
        Its dt must be the recording's; its method, dtype and surrogate
        are kept.
      recording: the training sweeps.
      fields: config fields to fit.
      bounds: field -> (low, high) in the field's unit; by default the
        interval the config rules allow (see the module docstring). Bounds
        beyond the rules are refused.
      stages: the recipe; default :func:`forced_recipe` (``fields``) when
        the recording has both the potential and the spike times, else
        :func:`recipe` (``fields``).
      starts: K, the number of starting points (the first is ``soma``'s
        values, the others drawn in the boxes: uniformly in u where both
        bounds are finite, else at ×e^{±0.5} / ±0.5 scale around it), or
        field -> K initial values.
      held_out: sweeps on which to choose the best start; default the
        training sweeps.
      selection: the loss that chooses, the model running free; default
        every stage's loss on the held-out sweeps of its kind
        (subthreshold, spiking; a forced stage's plus the spike count and
        the van Rossum distance), each relative to the best start's,
        summed: a start must do well on all of them.
      seed: seed of the drawn starts.

    Returns:
      A :class:`FitResult`.

    Raises:
      ConfigError: before any simulation, for unknown fields, bounds outside
        the rules or starts outside the bounds, a stage fitting a field not
        in ``fields``, a stage with no sweeps, a potential loss on sweeps
        without any recorded potential, a spike loss without spike times,
        or a dt that differs from the recording's.
      OutOfMemoryError: when the starts, or the run of all of them at once,
        need more memory than the device could allocate; it names the
        starts, the sweeps and about how many bytes.
    """
    t0 = time.perf_counter()
    if isinstance(soma, type):
        require(issubclass(soma, Soma), "soma", soma, "a soma class or instance")
        soma = soma(units=1, dt=recording.dt)
    require(isinstance(soma, Soma), "soma", soma, "a soma class or instance")
    require(isinstance(recording, Recording), "recording", type(recording).__name__,
            "a spark_somas.fitting.Recording")
    require(same_dt(soma.dt, recording.dt), "dt", soma.dt,
            f"the soma's step equals the recording's sampling interval ({recording.dt} ms)")
    fields = (fields,) if isinstance(fields, str) else tuple(fields)
    known = [f.name for f in soma.config_class.quantity_fields()]
    require(len(fields) > 0, "fields", fields, "at least one field to fit")
    for name in fields:
        require(name in known, "fields", name,
                f"a numeric config field of {soma.config_class.__name__}: one of {known}")
    require(len(set(fields)) == len(fields), "fields", fields, "each field once")
    params = soma.parameters()
    for name, value in params.items():
        require(np.size(value) == 1 or np.ptp(np.asarray(value)) == 0, name,
                f"an array of shape {np.shape(value)}",
                "one value (a fit is of one cell; use starts for several starting points)")
    bounds = check_bounds(bounds, fields)
    if stages is None:
        forced = recording.potential is not None and recording.spike_times is not None
        stages = forced_recipe(fields) if forced else recipe(fields, soma=soma)
    stages = tuple(stages)
    require(len(stages) > 0, "stages", stages, "at least one stage")
    picks = []
    for k, stage in enumerate(stages):
        require(isinstance(stage, Stage), f"stages[{k}]", stage, "a Stage")
        for name in stage.fields:
            require(name in fields, f"stages[{k}].fields", name, f"one of the fields {fields}")
        pick = stage.pick(recording)
        require(len(pick) > 0, f"stages[{k}].sweeps", stage.sweeps,
                "selects at least one sweep of the recording")
        for j in pick:
            require(0 <= j < recording.n_sweeps, f"stages[{k}].sweeps", j,
                    f"0 ≤ index < {recording.n_sweeps}")
        _check_targets(stage.loss, recording.select(pick), f"stages[{k}]")
        if stage.spikes == "recorded":
            require(recording.spike_times is not None, f"stages[{k}].spikes", stage.spikes,
                    "known spike times in the recording, to reset the model at them")
        picks.append(pick)
    held_out = recording if held_out is None else held_out
    require(isinstance(held_out, Recording), "held_out", type(held_out).__name__,
            "a spark_somas.fitting.Recording")
    require(same_dt(held_out.dt, recording.dt), "held_out.dt", held_out.dt,
            f"the recording's sampling interval, {recording.dt:g} ms")
    if selection is None:
        judges = _judges(stages, held_out)
    else:
        _check_targets(selection, held_out, "selection")
        judges = [(selection, held_out)]

    guess = {n: float(f"{float(np.asarray(params[n]).ravel()[0]):.7g}") for n in fields}
    boxes = field_boxes(soma, fields, bounds, guess)
    count = start_count(starts)
    graph, fixed = _template(soma, fields)
    boxes_key = tuple(sorted(boxes.items()))
    # The optimizer works in at least float32 (optax's line search keeps
    # its state in float32); the soma runs in its own dtypes.
    dtype = jnp.promote_types(soma.param_dtype, jnp.float32)
    with allocating(*_footprint(soma, recording, count, dtype)):
        u0 = initial_u(boxes, fields, guess, starts if isinstance(starts, Mapping) else count,
                       seed)
        u = {n: jnp.asarray(v, dtype) for n, v in u0.items()}
        u, history, evaluations = _run_stages(u, fixed, recording, stages, picks, graph=graph,
                                              boxes=boxes_key)
        losses = _selection_losses(u, fixed, judges, graph=graph, boxes=boxes_key,
                                   dt=recording.dt)
    best = int(np.argmin(losses))
    x = {n: np.asarray(boxes[n].to_x(v), np.float64) for n, v in u.items()}
    return FitResult(
        params={n: float(v[best]) for n, v in x.items()}, starts=x,
        initial={n: np.asarray(boxes[n].to_x(jnp.asarray(v, dtype)), np.float64)
                 for n, v in u0.items()},
        best=best, held_out_loss=losses, history=tuple(history), evaluations=evaluations,
        stages=stages, wall_s=time.perf_counter() - t0, soma=soma)



def _footprint(soma: Soma, recording: Recording, count: int, dtype: Any) -> tuple[str, float]:
    """What a fit of ``count`` starts allocates and about how many bytes, for
    :func:`~spark_somas.errors.allocating`: every start runs every sweep at
    once, and its gradient keeps each step's state (the stored variables and
    the input, forward and backward) in ``dtype``."""
    steps = max(recording.lengths)
    per_sample = 2 * (len(soma.stored_names) + 1) * jnp.dtype(dtype).itemsize
    return (f"fit_soma: starts = {count} ({recording.n_sweeps} sweeps of up to {steps} steps "
            f"each)", float(count) * recording.n_sweeps * steps * per_sample)


def _run_stages(u: dict[str, Array], fixed: Any, recording: Recording, stages: Sequence[Stage],
                picks: Sequence[Sequence[int]], *, graph: Any,
                boxes: tuple) -> tuple[dict[str, Array], list[np.ndarray], int]:
    """Every stage in turn on its sweeps, for every start at once; returns
    the final u, each stage's loss history (K, steps) and the most loss
    evaluations any start made."""
    history, evaluations = [], 0
    for stage, pick in zip(stages, picks):
        data = {k: jnp.asarray(v) for k, v in recording.select(pick).arrays().items()}
        u_fit = {n: u[n] for n in stage.fields}
        u_rest = {n: v for n, v in u.items() if n not in stage.fields}
        u_fit, h, evals = _fit_stage(u_fit, u_rest, fixed, data, graph=graph, stage=stage,
                                     boxes=boxes, dt=recording.dt)
        u = {**u, **u_fit}
        history.append(np.asarray(h).T)
        evaluations += int(np.max(evals))
    return u, history, evaluations


def _selection_losses(u: dict[str, Array], fixed: Any, judges: Sequence[tuple[Loss, Recording]],
                      *, graph: Any, boxes: tuple, dt: float) -> np.ndarray:
    """Each start's selection loss (K,): the judges' losses, each relative to
    the best start's when there are several, summed; inf where not finite."""
    losses = np.zeros(len(next(iter(u.values()))))
    for loss, sweeps in judges:
        data = {k: jnp.asarray(v) for k, v in sweeps.arrays().items()}
        value = np.asarray(_losses(u, fixed, data, graph=graph, loss=loss, boxes=boxes, dt=dt),
                           np.float64)
        value = np.where(np.isfinite(value), value, np.inf)
        # Each stage's loss relative to the best start's, so that every stage
        # counts alike whatever its units and scale.
        losses += value / max(np.min(value), 1e-12) if len(judges) > 1 else value
    return losses



def _judges(stages: Sequence[Stage], held_out: Recording) -> list[tuple[Loss, Recording]]:
    """What chooses among the starts by default: each stage's :func:`_judge`
    on the held-out sweeps of its kind (all of them for a stage given sweep
    indices, which index the training recording). A stage with no sweep of
    its kind there is not judged; a held-out recording on which no stage can
    be judged is refused, since it could not tell the starts apart."""
    judges = []
    for k, stage in enumerate(stages):
        pick = (tuple(range(held_out.n_sweeps)) if not isinstance(stage.sweeps, str)
                else stage.pick(held_out))
        if pick:
            judge = _judge(stage)
            _check_targets(judge, held_out.select(pick), f"held_out (stages[{k}])")
            judges.append((judge, held_out.select(pick)))
    counts = held_out.spike_counts()
    kinds = sorted({s.sweeps for s in stages if isinstance(s.sweeps, str)})
    require(judges, "held_out", f"{held_out.n_sweeps} sweep(s), "
            f"{0 if counts is None else int(np.sum(counts > 0))} with spikes",
            f"at least one sweep of a kind the stages fit ({', '.join(kinds)}), to judge "
            "the starts on")
    return judges


def _judge(stage: Stage) -> Loss:
    """The loss that judges a start by ``stage`` on held-out sweeps, where
    the model runs free: the stage's own, and for a forced stage its loss
    plus the spike count and the van Rossum distance, since a free run's
    potential alone rewards a model whose spikes are missing."""
    if stage.spikes == "model":
        return stage.loss
    return dataclasses.replace(stage.loss, count=1.0, van_rossum=1.0)


def _check_targets(loss: Loss, recording: Recording, where: str) -> None:
    if loss.potential:
        require(recording.potential is not None
                and any(np.isfinite(v).any() for v in recording.potential),
                f"{where}: potential", "all NaN" if recording.potential else None,
                "at least one recorded (non-NaN) sample on the sweeps a potential loss uses")
    if loss.uses_spikes:
        require(recording.spike_times is not None, f"{where}: spike_times", None,
                "known spike times on the sweeps a spike loss uses")
