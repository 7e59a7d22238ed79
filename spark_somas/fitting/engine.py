"""Running a fit: :func:`fit_soma` (one cell) and :func:`fit_cells` (many)
check their input, run the stages for every cell and start at once (one
compiled program per stage: ``jax.vmap`` of one neuron's optimisation, the
neuron driven by :func:`~spark_somas.simulation.driver.drive`, the
package's one time loop) and keep each cell's start that does best on its
held-out sweeps."""

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

from spark_somas.errors import ConfigError, allocating
from spark_somas.models.configs import require
from spark_somas.models.somas import Soma, SomaConstant, SomaState, step
from spark_somas.simulation.driver import drive
from spark_somas.fitting.boxes import Box, check_bounds, field_boxes, initial_u, start_count
from spark_somas.fitting.losses import Loss
from spark_somas.fitting.recording import Recording, same_dt
from spark_somas.fitting.result import FitResult
from spark_somas.fitting.stages import Stage, default_recipe

__all__ = ["fit_soma", "fit_cells"]

Array = jax.Array


def _template(soma: Soma, fields: tuple[str, ...], settings: tuple[tuple[str, Any], ...] = ()
              ) -> tuple[Any, tuple[dict[str, Array], nnx.State]]:
    """One fitting neuron of ``soma``'s class: its graph (shared by every fit
    of the same class, fields, dt, method, dtype, surrogate and settings,
    so that they share one compilation), the fixed fields' values and its
    state. Every setting of ``soma``'s config is kept — the surrogate, the
    gradient switches and the model's own (``exp_gradient``) — but those a
    stage changes (``settings``)."""
    config = soma.config_class(surrogate=soma.config.surrogate,
                               detach_reset=soma.config.detach_reset,
                               detach_adaptation=soma.config.detach_adaptation,
                               **{**dict(soma.config.settings()), **dict(settings)})
    neuron = type(soma)(config, units=1, dt=soma.dt, method=soma.method, trainable=fields,
                        dtype=soma.dtype, param_dtype=soma.param_dtype)
    graph, _, _, state = nnx.split(neuron, nnx.Param, SomaConstant, SomaState)
    fixed = {n: jnp.asarray(np.asarray(v).ravel()[0], soma.param_dtype)
             for n, v in soma.parameters().items() if n not in fields}
    return graph, (fixed, state)


def _fit_step(soma: Soma, inputs: tuple[Array, Array | None]) -> tuple[Array, Array]:
    """One step of ``soma`` driven by the current, its spikes detected or,
    where ``inputs`` carries them (0/1), imposed (teacher forcing,
    :func:`~spark_somas.models.somas.step`); returns the potential (mV)
    and the spikes. A module-level function, so that every run shares the
    compiled loop of :func:`~spark_somas.simulation.driver.drive`."""
    current, imposed = inputs
    new, spikes = step(type(soma), soma.parameters(), soma.neuron_state(), current, soma.options,
                       forced=imposed)
    for name, value in new.items():
        getattr(soma, name)[...] = value
    return new[soma.membrane], spikes


def _run(graph: Any, x: Mapping[str, Array], fixed: tuple[Mapping[str, Array], nnx.State],
         currents: Array, forced: Array | None = None) -> tuple[Array, Array]:
    """One neuron with fields ``x`` (scalars), the other fields and the
    state template ``fixed``, over currents (T, S) from rest, through the
    package's time loop: its potential and spikes, (T, S); with ``forced``
    (T, S), the spikes imposed instead of detected."""
    values, state = fixed
    params = nnx.State({k: nnx.Param(jnp.reshape(v, (1,))) for k, v in x.items()})
    consts = nnx.State({k: SomaConstant(v) for k, v in values.items()})
    soma = nnx.merge(graph, params, consts, state, copy=True)
    soma.reset(currents.shape[1:])
    potential, spikes = drive(soma, (currents[..., None],
                                     None if forced is None else forced[..., None]),
                              _fit_step, backend="scan")
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


@functools.partial(jax.jit, static_argnames=("graph", "stage", "dt"))
def _fit_stage(u_fit, u_rest, fixed, data, boxes, limits, *, graph, stage, dt):
    """``stage.steps`` iterations for every cell and start at once (vmapped
    over the cells, the leading axis of ``u_fit`` / ``u_rest`` and ``data``,
    then over the starts, their second axis), u kept in ``limits`` (each
    box's ``u_range``); returns the final u, the loss before each iteration
    (N, K, steps) and the loss evaluations (N, K)."""
    opt = _optimizer(stage)
    low = {n: limits[n][0] for n in u_fit}
    high = {n: limits[n][1] for n in u_fit}

    def one(u_fit, u_rest, data):
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

    return jax.vmap(jax.vmap(one, in_axes=(0, 0, None)))(u_fit, u_rest, data)


@functools.partial(jax.jit, static_argnames=("graph", "loss", "dt"))
def _losses(u, fixed, data, boxes, *, graph, loss, dt):
    """The loss of every cell and start, (N, K): vmapped over the cells (the
    leading axis of u and ``data``), then the starts (u's second axis)."""
    def one(u, data):
        return _lane_loss(u, {}, graph, boxes, fixed, data, loss, dt, False)

    return jax.vmap(jax.vmap(one, in_axes=(0, None)))(u, data)



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
    test: Recording | None = None,
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
      stages: the recipe; default
        :func:`~spark_somas.fitting.stages.default_recipe`: forced with the
        escape error when the recording has both the potential and the
        spike times, free-running on the spikes when it has spike times
        only.
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
      test: sweeps neither fitted nor used to choose the start, on which
        the fitted model runs free to judge it (:attr:`FitResult.quality`,
        in its report; :class:`~spark_somas.fitting.result.PoorPredictionWarning`
        when Γ there is poor). Without them the report says the fit is
        not judged: Γ on the ``held_out`` sweeps, which chose the start, is
        optimistic.

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
    require(isinstance(recording, Recording), "recording", type(recording).__name__,
            "a spark_somas.fitting.Recording")
    soma, fields, bounds = _check_fit(soma, recording.dt, fields, bounds)
    stages = _default_stages(stages, soma, fields, [recording])
    plan = _plan(soma, recording, fields, stages, held_out, selection)
    if test is not None:
        _check_test(test, recording, held_out, "test")
    result = _fit(soma, fields, bounds, stages, [plan], starts, seed, t0)[0]
    return result if test is None else result.judged(test)


def _check_test(test: Any, recording: Recording, held_out: Recording | None, name: str) -> None:
    """Refuses test sweeps that are no recording, are the fitted or the
    choosing sweeps themselves, or are sampled at another dt."""
    require(isinstance(test, Recording), name, type(test).__name__,
            "a spark_somas.fitting.Recording")
    require(test is not recording and test is not held_out, name, "the same recording",
            "sweeps other than those fitted (recording) and those that choose the start "
            "(held_out)")
    require(same_dt(test.dt, recording.dt), f"{name}.dt", test.dt,
            f"the recording's sampling interval, {recording.dt:g} ms")


def fit_cells(
    soma: Soma | type[Soma],
    recordings: Sequence[Recording],
    fields: Sequence[str],
    *,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    stages: Sequence[Stage] | None = None,
    starts: int | Mapping[str, Any] = 1,
    held_out: Sequence[Recording] | None = None,
    selection: Loss | None = None,
    seed: int = 0,
    test: Sequence[Recording] | None = None,
) -> tuple[FitResult, ...]:
    """Fits ``fields`` of ``soma`` to each of N cells' ``recordings`` at once.

    Each cell is fitted as :func:`fit_soma` would fit it alone, from the
    same starting points (``soma``'s values, one per field, and the same
    drawn starts), in the same boxes and by the same stages; the N cells
    and their K starts run as N·K neurons in one compiled program per stage
    (``jax.vmap`` over the cells of the fit of one cell's starts): one
    compilation serves every cell. The cells' recordings may differ
    in their sweeps' number and lengths: each stage runs on every cell's
    own sweeps, padded to the longest with samples that no loss counts.

    Args:
      soma, fields, bounds, starts, selection, seed: as for :func:`fit_soma`,
        shared by the cells.
      recordings: one :class:`Recording` per cell, all at the soma's dt.
      stages: the recipe, shared; default
        :func:`~spark_somas.fitting.stages.default_recipe`.
      held_out: one recording per cell on which to choose its best start;
        default each cell's training sweeps.
      test: one recording per cell, neither fitted nor used to choose the
        start, on which each cell's fitted model runs free to judge it, as
        :func:`fit_soma`'s ``test`` does (one
        :class:`~spark_somas.fitting.result.PoorPredictionWarning` per cell
        predicted poorly).

    Returns:
      One :class:`FitResult` per cell, in the order of ``recordings``;
      each one's ``wall_s`` is the wall time of the whole call.

    Raises:
      ConfigError: before any simulation, as :func:`fit_soma` does, a
        cell's refusal naming the cell (``recordings[i]``); and for no
        recordings, or a ``held_out`` or ``test`` that is not one recording
        per cell.
      OutOfMemoryError: when the cells and starts at once need more memory
        than the device could allocate.
    """
    t0 = time.perf_counter()
    require(isinstance(recordings, Sequence) and len(recordings) > 0, "recordings",
            recordings if isinstance(recordings, Sequence) else type(recordings).__name__,
            "a non-empty sequence of spark_somas.fitting.Recording, one per cell")
    for i, recording in enumerate(recordings):
        require(isinstance(recording, Recording), f"recordings[{i}]",
                type(recording).__name__, "a spark_somas.fitting.Recording")
    soma, fields, bounds = _check_fit(soma, recordings[0].dt, fields, bounds)
    if held_out is not None:
        require(isinstance(held_out, Sequence) and len(held_out) == len(recordings),
                "held_out", f"{len(held_out)} recordings" if isinstance(held_out, Sequence)
                else type(held_out).__name__, f"one recording per cell ({len(recordings)})")
    held_out = [None] * len(recordings) if held_out is None else held_out
    if test is not None:
        require(isinstance(test, Sequence) and len(test) == len(recordings), "test",
                f"{len(test)} recordings" if isinstance(test, Sequence)
                else type(test).__name__, f"one recording per cell ({len(recordings)})")
        for i, (cell_test, recording) in enumerate(zip(test, recordings)):
            _check_test(cell_test, recording, held_out[i], f"test[{i}]")
    stages = _default_stages(stages, soma, fields, recordings)
    plans = []
    for i, recording in enumerate(recordings):
        try:
            plans.append(_plan(soma, recording, fields, stages, held_out[i], selection))
        except ConfigError as error:
            raise ConfigError(f"recordings[{i}]: {error}") from None
    results = _fit(soma, fields, bounds, stages, plans, starts, seed, t0)
    return results if test is None else tuple(r.judged(t) for r, t in zip(results, test))


def _check_fit(soma: Soma | type[Soma], dt: float, fields: Sequence[str],
               bounds: Any) -> tuple[Soma, tuple[str, ...], dict[str, tuple[float, float]]]:
    """The soma (built from a class at ``dt``, the recordings' step), the
    fields and the bounds, checked; shared by every cell of a fit."""
    if isinstance(soma, type):
        require(issubclass(soma, Soma), "soma", soma, "a soma class or instance")
        soma = soma(units=1, dt=dt)
    require(isinstance(soma, Soma), "soma", soma, "a soma class or instance")
    fields = (fields,) if isinstance(fields, str) else tuple(fields)
    known = [f.name for f in soma.config_class.quantity_fields()]
    require(len(fields) > 0, "fields", fields, "at least one field to fit")
    for name in fields:
        require(name in known, "fields", name,
                f"a numeric config field of {soma.config_class.__name__}: one of {known}")
    require(len(set(fields)) == len(fields), "fields", fields, "each field once")
    for name, value in soma.parameters().items():
        require(np.size(value) == 1 or np.ptp(np.asarray(value)) == 0, name,
                f"an array of shape {np.shape(value)}",
                "one value, every cell's starting point (several starting points: starts; "
                "several cells: fit_cells, one recording per cell)")
    return soma, fields, check_bounds(bounds, fields)


def _default_stages(stages: Sequence[Stage] | None, soma: Soma, fields: tuple[str, ...],
                    recordings: Sequence[Recording]) -> tuple[Stage, ...]:
    """``stages``, or :func:`~spark_somas.fitting.stages.default_recipe`."""
    if stages is None:
        stages = default_recipe(fields, soma, recordings)
    stages = tuple(stages)
    require(len(stages) > 0, "stages", stages, "at least one stage")
    return stages


@dataclasses.dataclass(frozen=True)
class _Plan:
    """One cell's part of a fit: its training recording, each stage's
    sweeps of it and the losses that judge its starts, by stage index (or
    ``"selection"``), each with its held-out sweeps."""

    recording: Recording
    picks: tuple[tuple[int, ...], ...]
    judges: dict[Any, tuple[Loss, Recording]]


def _plan(soma: Soma, recording: Recording, fields: tuple[str, ...], stages: tuple[Stage, ...],
          held_out: Recording | None, selection: Loss | None) -> _Plan:
    """One cell's recording checked against the soma and the stages."""
    require(same_dt(soma.dt, recording.dt), "dt", soma.dt,
            f"the soma's step equals the recording's sampling interval ({recording.dt} ms)")
    picks = []
    own = dict(soma.config.settings())
    for k, stage in enumerate(stages):
        require(isinstance(stage, Stage), f"stages[{k}]", stage, "a Stage")
        for name, _ in stage.settings:
            require(name in own, f"stages[{k}].settings", name,
                    f"a setting of {soma.config_class.__name__}: one of {sorted(own)}")
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
        judges = {"selection": (selection, held_out)}
    return _Plan(recording, tuple(picks), judges)


def _fit(soma: Soma, fields: tuple[str, ...], bounds: Mapping[str, tuple[float, float]],
         stages: tuple[Stage, ...], plans: Sequence[_Plan], starts: int | Mapping[str, Any],
         seed: int, t0: float) -> list[FitResult]:
    """Every cell's fit at once, from the same starts in the same boxes."""
    params = soma.parameters()
    guess = {n: float(f"{float(np.asarray(params[n]).ravel()[0]):.7g}") for n in fields}
    boxes = field_boxes(soma, fields, bounds, guess)
    count = start_count(starts)
    graph, fixed = _template(soma, fields)
    # The optimizer works in at least float32 (optax's line search keeps
    # its state in float32); the soma runs in its own dtypes.
    dtype = jnp.promote_types(soma.param_dtype, jnp.float32)
    cells = len(plans)
    with allocating(*_footprint(soma, [p.recording for p in plans], count, dtype)):
        u0 = initial_u(boxes, fields, guess, starts if isinstance(starts, Mapping) else count,
                       seed)
        u = {n: jnp.broadcast_to(jnp.asarray(v, dtype), (cells, len(v))) for n, v in u0.items()}
        graphs = {settings: _template(soma, fields, settings)[0] if settings else graph
                  for settings in {st.settings for st in stages}}
        u, history, evaluations = _run_stages(u, fixed, plans, stages, graphs=graphs,
                                              boxes=boxes, dt=soma.dt)
        losses = _selection_losses(u, fixed, plans, graph=graph, boxes=boxes, dt=soma.dt)
    x = {n: np.asarray(boxes[n].to_x(v), np.float64) for n, v in u.items()}
    initial = {n: np.asarray(boxes[n].to_x(jnp.asarray(v, dtype)), np.float64)
               for n, v in u0.items()}
    wall = time.perf_counter() - t0
    results = []
    for i in range(cells):
        best = int(np.argmin(losses[i]))
        results.append(FitResult(
            params={n: float(v[i, best]) for n, v in x.items()},
            starts={n: v[i] for n, v in x.items()}, initial=initial, best=best,
            held_out_loss=losses[i], history=tuple(h[i].T for h in history),
            evaluations=int(evaluations[i]), stages=stages, wall_s=wall, soma=soma))
    return results


def _footprint(soma: Soma, recordings: Sequence[Recording], count: int,
               dtype: Any) -> tuple[str, float]:
    """What a fit of ``count`` starts of each cell allocates and about how
    many bytes, for :func:`~spark_somas.errors.allocating`: every start runs
    every sweep at once, and its gradient keeps each step's state (the
    stored variables and the input, forward and backward) in ``dtype``."""
    steps = max(max(r.lengths) for r in recordings)
    sweeps = max(r.n_sweeps for r in recordings)
    per_sample = 2 * (len(soma.stored_names) + 1) * jnp.dtype(dtype).itemsize
    cells = f"{len(recordings)} cells, " if len(recordings) > 1 else ""
    return (f"fit_soma: starts = {count} ({cells}{sweeps} sweeps of up to {steps} steps "
            f"each)", float(count) * len(recordings) * sweeps * steps * per_sample)


def _stacked(recordings: Sequence[Recording | None]) -> dict[str, Array]:
    """The cells' :meth:`Recording.arrays`, padded with zeros (samples no
    loss counts: not valid, not recorded, no spike) to the longest sweep and
    the most sweeps, stacked: (N, T, S). None: a cell with nothing there."""
    arrays = [None if r is None else r.arrays() for r in recordings]
    shapes = [a["currents"].shape for a in arrays if a is not None]
    steps, sweeps = max(t for t, _ in shapes), max(s for _, s in shapes)
    out = {}
    for key in ("currents", "potential", "recorded", "valid", "spikes"):
        stack = np.zeros((len(arrays), steps, sweeps), np.float32)
        for i, a in enumerate(arrays):
            if a is not None:
                t, s = a[key].shape
                stack[i, :t, :s] = a[key]
        out[key] = jnp.asarray(stack)
    return out


def _run_stages(u: dict[str, Array], fixed: Any, plans: Sequence[_Plan],
                stages: Sequence[Stage], *, graphs: Mapping[tuple, Any],
                boxes: Mapping[str, Box], dt: float
                ) -> tuple[dict[str, Array], list[np.ndarray], np.ndarray]:
    """Every stage in turn on each cell's sweeps, for every cell and start at
    once, each by the fitting neuron of its settings (``graphs``); returns
    the final u (N, K), each stage's loss history (N, K, steps) and per cell
    the most loss evaluations any start made (N,)."""
    history, evaluations = [], np.zeros(len(plans), int)
    limits = {n: box.u_range() for n, box in boxes.items()}
    for k, stage in enumerate(stages):
        data = _stacked([p.recording.select(p.picks[k]) for p in plans])
        u_fit = {n: u[n] for n in stage.fields}
        u_rest = {n: v for n, v in u.items() if n not in stage.fields}
        u_fit, h, evals = _fit_stage(u_fit, u_rest, fixed, data, boxes, limits,
                                     graph=graphs[stage.settings], stage=stage, dt=dt)
        u = {**u, **u_fit}
        history.append(np.asarray(h))
        evaluations += np.max(np.asarray(evals), axis=1)
    return u, history, evaluations


def _selection_losses(u: dict[str, Array], fixed: Any, plans: Sequence[_Plan], *, graph: Any,
                      boxes: Mapping[str, Box], dt: float) -> np.ndarray:
    """Each cell's starts' selection losses (N, K): the cell's judges'
    losses, each relative to its best start's when it has several, summed;
    inf where not finite."""
    losses = np.zeros(next(iter(u.values())).shape)
    for key in dict.fromkeys(k for p in plans for k in p.judges):
        judged = [key in p.judges for p in plans]
        loss = next(p.judges[key][0] for p in plans if key in p.judges)
        data = _stacked([p.judges[key][1] if key in p.judges else None for p in plans])
        values = np.asarray(_losses(u, fixed, data, boxes, graph=graph, loss=loss, dt=dt),
                            np.float64)
        for i, plan in enumerate(plans):
            if judged[i]:
                value = np.where(np.isfinite(values[i]), values[i], np.inf)
                # Each stage's loss relative to the best start's, so that every
                # stage counts alike whatever its units and scale.
                losses[i] += (value / max(np.min(value), 1e-12) if len(plan.judges) > 1
                              else value)
    return losses


def _judges(stages: Sequence[Stage],
            held_out: Recording) -> dict[int, tuple[Loss, Recording]]:
    """What chooses among the starts by default, by stage index: each stage's :func:`_judge`
    on the held-out sweeps of its kind (all of them for a stage given sweep
    indices, which index the training recording). A stage with no sweep of
    its kind there is not judged; a held-out recording on which no stage can
    be judged is refused, since it could not tell the starts apart."""
    judges = {}
    for k, stage in enumerate(stages):
        pick = (tuple(range(held_out.n_sweeps)) if not isinstance(stage.sweeps, str)
                else stage.pick(held_out))
        if pick:
            judge = _judge(stage)
            _check_targets(judge, held_out.select(pick), f"held_out (stages[{k}])")
            judges[k] = (judge, held_out.select(pick))
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
    potential alone rewards a model whose spikes are missing, less the
    escape error, which means something only where the model is forced."""
    if stage.spikes == "model":
        return stage.loss
    return dataclasses.replace(stage.loss, count=1.0, van_rossum=1.0, escape=0.0)


def _check_targets(loss: Loss, recording: Recording, where: str) -> None:
    if loss.potential:
        require(recording.potential is not None
                and any(np.isfinite(v).any() for v in recording.potential),
                f"{where}: potential", "all NaN" if recording.potential else None,
                "at least one recorded (non-NaN) sample on the sweeps a potential loss uses")
    if loss.uses_spikes:
        require(recording.spike_times is not None, f"{where}: spike_times", None,
                "known spike times on the sweeps a spike loss uses")
