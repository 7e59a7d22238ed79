"""The training loop: jit-compiled train and evaluation steps and ``fit``.

Gradients flow back through time (BPTT) through the somas' surrogate spike
function (Neftci, Mostafa & Zenke 2019; Zenke & Vogels 2021). A run's whole
state is explicit — model, optimizer, seed and epoch counter — and every
random choice is a pure function of (seed, epoch, batch), so a resumed run
is the run that never stopped.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from spark_somas.simulation import sharding
from spark_somas.training.callbacks import (Callback, Checkpoint, EarlyStopping, FitState, Logger,
                                   ProgressBar, default_callbacks, resolve_callbacks)
from spark_somas.models.configs import require
from spark_somas.training.constraints import NeuronOptimizer, neuron_constraints, skip_non_finite
from spark_somas.data.datasets import DataError, Dataset
from spark_somas.training.encoders import Encoder
from spark_somas.errors import RuleError, SparkSomasError, device_memory, violation
from spark_somas.training.network import NetworkOutput, SpikingNetwork
from spark_somas.models.somas import SomaState, path_name
from spark_somas.training.objectives import Objective, firing_rate

__all__ = [
    "make_optimizer",
    "gradient_norms",
    "train_step",
    "train_epoch",
    "eval_step",
    "classification_metrics",
    "fits_on_device",
    "record",
    "evaluate",
    "epoch_order",
    "evaluation_key",
    "batch_key",
    "NonFiniteLossError",
    "NonFiniteGradientError",
    "NonFiniteStateError",
    "summarize_batches",
    "HISTORY_KEYS",
    "EVAL_SPLITS",
    "history_keys",
    "fit",
    "Callback",
    "FitState",
    "ProgressBar",
    "Logger",
    "Checkpoint",
    "EarlyStopping",
    "default_callbacks",
    "plot_training",
]

Array = jax.Array


def make_optimizer(model: nnx.Module, learning_rate: float = 2e-3,
                   tx: optax.GradientTransformation | None = None, *,
                   total_steps: int | None = None,
                   clip_norm: float | None = 1.0,
                   frozen: nnx.filterlib.Filter | None = None) -> nnx.Optimizer:
    """An ``nnx.Optimizer`` of ``model``'s parameters that never writes a
    non-finite value and keeps the trained neuron parameters legal:

        NeuronOptimizer(model, chain(skip_non_finite(chain(clip, tx)), neuron_constraints(model)))

    * ``tx``: the update rule; default Adam with peak ``learning_rate``,
      decayed to 0 over ``total_steps`` by a cosine schedule when given. A
      transformation of your own takes its place, and keeps the two guards
      around it.
    * ``clip``: ``optax.clip_by_global_norm(clip_norm)`` (None: no clipping).
    * :func:`~spark_somas.training.constraints.skip_non_finite`: a batch whose
      gradient or update is not finite (BPTT through long runs of
      exponential somas can overflow: see "Training over long sequences" in
      the docs) is skipped — parameters and the moments of ``tx`` stay as
      they were — however many come in a row; ``fit`` counts the skipped
      batches in its history and stops if a whole epoch is skipped.
    * :func:`~spark_somas.training.constraints.neuron_constraints`: the trained neuron
      parameters are projected into their rules after every update, against
      the somas' fixed fields as they are at that update (the
      :class:`~spark_somas.training.constraints.NeuronOptimizer` passes them).
    * ``frozen``: an NNX filter of parameters that never move (e.g.
      :data:`~spark_somas.training.network.HIDDEN`: only the readout learns,
      the liquid-state machine of Maass, Natschläger & Markram 2002, Neural
      Comput. 14:2531). They are left out of the optimizer (its ``wrt`` is
      ``All(Param, Not(frozen))``): no gradient is computed for them, so the
      train step's backward pass stops where they begin, their gradients
      count in no clip norm, and no term of ``tx`` (a weight decay) moves
      them. None (the default): every ``nnx.Param``.
    """
    if clip_norm is not None:
        require(isinstance(clip_norm, (int, float)) and np.isfinite(clip_norm) and clip_norm > 0,
                "clip_norm", clip_norm, "None or > 0 and finite", error=RuleError)
    wrt = nnx.Param
    if frozen is not None:  # a typo such as "hiden" would freeze nothing, silently
        try:
            chosen = nnx.state(model, nnx.All(nnx.Param, frozen))
        except (TypeError, ValueError):
            chosen = None
        require(chosen is not None and len(jax.tree.leaves(chosen)) > 0, "frozen", frozen,
                "an NNX filter of parameters to freeze that selects at least one (a path filter "
                "such as training.HIDDEN or nnx.PathContains('output'), a Variable type)",
                error=RuleError)
        wrt = nnx.All(nnx.Param, nnx.Not(frozen))
    if tx is None:
        schedule = (learning_rate if total_steps is None
                    else optax.cosine_decay_schedule(learning_rate, total_steps))
        tx = optax.adam(schedule)
    if clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
    return NeuronOptimizer(model, optax.chain(skip_non_finite(tx), neuron_constraints(model)),
                           wrt=wrt)


def gradient_norms(grads: Any) -> dict[str, Array]:
    """``"grad_norm"``: the global L2 norm of ``grads`` (an ``nnx.State``); and
    ``"grad_norm/<module>"`` for each module that owns parameters (its path,
    e.g. ``layers/0/input``, ``layers/0/recurrent``, ``layers/0/soma``,
    ``output``)."""
    pure = nnx.to_pure_dict(grads) if isinstance(grads, nnx.State) else grads
    leaves = jax.tree_util.tree_flatten_with_path(pure)[0]
    groups: dict[str, list] = {}
    for path, leaf in leaves:
        groups.setdefault(path_name(path[:-1]), []).append(leaf)
    out = {"grad_norm": optax.tree.norm([leaf for _, leaf in leaves])}
    out.update({f"grad_norm/{name}": optax.tree.norm(group) for name, group in groups.items()})
    return out


def _running_state(model: nnx.Module) -> nnx.State:
    """A snapshot of ``model``'s running state (its ``SomaState`` values)."""
    return jax.tree.map(lambda x: x, nnx.state(model, SomaState))


@nnx.jit(static_argnames=("encoder", "objective"))
def train_step(model: SpikingNetwork, optimizer: nnx.Optimizer, x: Array, labels: Array,
               key: Array, *, encoder: Encoder, objective: Objective) -> dict[str, Array]:
    """One compiled update on a batch, the whole of it here:

    1. encode ``x`` (``encoder(x, key, train=True)``, time-major);
    2. forward from rest (the network's one reset of the batch) and the
       objective, differentiated by BPTT with respect to what the optimizer
       moves (its ``wrt``: nothing frozen);
    3. ``optimizer.update(model, grads)`` — with :func:`make_optimizer`'s
       optimizer, the finite guard and the neuron projection of
       :mod:`~spark_somas.training.constraints`;
    4. the running state put back as the batch found it (at rest, unbatched,
       for a network that came in so), which keeps the compiled shapes and
       an epoch scan's carry fixed.

    Returns loss, accuracy and the hidden layers' mean rate (Hz) on the
    batch (before the update), the gradient's norms
    (:func:`gradient_norms`), ``skipped``: 1 when the update was not
    applied — what the optimizer's finite guard decided
    (:func:`~spark_somas.training.constraints.skip_non_finite` or
    ``optax.apply_if_finite``: a finite gradient can still give a non-finite
    update), or, without a guard, whether the gradient was not finite — and
    ``nonfinite_state``: 1 when a running state variable is NaN after the
    batch (a NaN input current or parameter makes a soma's potential NaN for
    the rest of the run, and a NaN soma never spikes, so its spikes alone
    would not show it)."""
    inputs = encoder(x, key, train=True)
    running = _running_state(model)

    def loss_fn(model):
        out = model(inputs, time_major=True)  # from rest: the batch's one reset
        return objective(model, out, labels), out

    wrt = nnx.DiffState(0, optimizer.wrt)
    (loss, out), grads = nnx.value_and_grad(loss_fn, argnums=wrt, has_aux=True)(model)
    states = [v for v in jax.tree.leaves(nnx.state(model, SomaState))  # as the batch ended
              if jnp.issubdtype(v.dtype, jnp.floating)]
    nonfinite = (jnp.any(jnp.stack([jnp.any(jnp.isnan(v)) for v in states])) if states
                 else False)
    optimizer.update(model, grads)
    nnx.update(model, running)
    norms = gradient_norms(grads)
    is_guard = lambda x: isinstance(x, optax.ApplyIfFiniteState)  # noqa: E731
    guards = [s for s in jax.tree.leaves(optimizer.opt_state, is_leaf=is_guard) if is_guard(s)]
    applied = guards[0].last_finite[...] if guards else jnp.isfinite(norms["grad_norm"])
    return {"loss": loss, "accuracy": jnp.mean(jnp.argmax(out.logits, -1) == labels),
            "rate_hz": firing_rate(out.hidden_spikes, model.dt), **norms,
            "skipped": 1.0 - applied.astype(jnp.float32),
            "nonfinite_state": jnp.asarray(nonfinite, jnp.float32)}


@nnx.jit(static_argnames=("encoder", "objective"), donate_argnames=("model", "optimizer"))
def train_epoch(model: SpikingNetwork, optimizer: nnx.Optimizer, x: Array, labels: Array,
                order: Array, keys: Array, *, encoder: Encoder,
                objective: Objective) -> dict[str, Array]:
    """A whole epoch as one compiled program: :func:`train_step` on batches
    ``x[order[i]]``, ``labels[order[i]]`` with key ``keys[i]``, for i = 0 …
    K − 1, scanned on the device (``jax.lax.scan`` over batches) instead of
    K Python calls.

    ``x`` and ``labels`` are the whole training split (on the device);
    ``order`` (K, B) holds the batches' sample indices, ``keys`` (K,) their
    encoder keys. The model and optimizer are split once into a graph
    definition and their state, which the scan carries (no traversal of the
    module graph per batch), and their buffers are donated. Returns each
    batch's metrics stacked, shape (K,).
    """
    graphdef, state = nnx.split((model, optimizer))

    def one(state, batch):
        idx, key = batch
        model, optimizer = nnx.merge(graphdef, state)
        metrics = train_step(model, optimizer, x[idx], labels[idx], key, encoder=encoder,
                             objective=objective)
        return nnx.state((model, optimizer)), metrics

    state, metrics = jax.lax.scan(one, state, (order, keys))
    nnx.update((model, optimizer), state)
    return metrics


@nnx.jit(static_argnames=("encoder", "objective"))
def eval_step(model: SpikingNetwork, x: Array, labels: Array, key: Array, *,
              encoder: Encoder, objective: Objective) -> dict[str, Array]:
    """Per sample: the objective's task loss, the logits and the hidden
    layers' mean rate (Hz). The network runs from rest and keeps the
    running state it came in with, as :func:`train_step`."""
    running = _running_state(model)
    out = model(encoder(x, key), time_major=True)
    nnx.update(model, running)
    spikes = out.hidden_spikes
    return {
        "loss": objective.per_sample(out, labels),
        "logits": out.logits,
        "rate_hz": firing_rate(spikes, model.dt, (0, spikes.ndim - 1)),
    }


@nnx.jit(static_argnames=("encoder",))
def record(model: SpikingNetwork, x: Array, key: Array, *, encoder: Encoder) -> NetworkOutput:
    """The forward pass on a batch (logits and every trace), from rest; the
    network keeps the running state it came in with, as :func:`train_step`."""
    running = _running_state(model)
    out = model(encoder(x, key), time_major=True)
    nnx.update(model, running)
    return out


def classification_metrics() -> nnx.MultiMetric:
    """``flax.nnx`` metrics of a split: mean task loss, accuracy (argmax of
    the logits) and mean hidden rate (Hz); updated with ``loss``, ``logits``,
    ``labels``, ``rate_hz`` and an optional 0/1 ``mask``."""
    return nnx.MultiMetric(loss=nnx.metrics.Average("loss"), accuracy=nnx.metrics.Accuracy(),
                           rate_hz=nnx.metrics.Average("rate_hz"))


def evaluate(model: SpikingNetwork, x: np.ndarray, labels: np.ndarray, *, encoder: Encoder,
             objective: Objective = Objective(), key: Array | None = None,
             batch_size: int = 512, mesh: jax.sharding.Mesh | None = None) -> dict[str, float]:
    """Task loss, accuracy and hidden mean rate (Hz) over a whole split
    (:func:`classification_metrics`), in fixed-size batches (one
    compilation; the last batch is padded and the padding masked out). With
    a ``mesh``, each batch (padded to a multiple of its ``"data"`` axis) is
    split over it."""
    n = len(x)
    key = jax.random.key(0) if key is None else key
    batch_size = min(batch_size, n)
    if mesh is not None:
        batch_size = -(-batch_size // mesh.shape[sharding.DATA]) * mesh.shape[sharding.DATA]
    metrics = classification_metrics()
    for start in range(0, n, batch_size):
        xb, yb = x[start:start + batch_size], labels[start:start + batch_size]
        pad = batch_size - len(xb)
        mask = np.concatenate([np.ones(len(xb), bool), np.zeros(pad, bool)])
        xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
        yb = np.concatenate([yb, np.zeros(pad, yb.dtype)]).astype(np.int32)
        if mesh is not None:
            xb, yb = sharding.shard_batch((xb, yb), mesh)
        out = eval_step(model, xb, yb, jax.random.fold_in(key, start), encoder=encoder,
                        objective=objective)
        metrics.update(labels=yb, mask=mask, **out)
    return {k: float(v) for k, v in metrics.compute().items()}


def evaluation_key(seed: int) -> Array:
    """The encoder's PRNG key of every evaluation of a run seeded ``seed``
    (after each epoch, and of the test set after ``fit``): no epoch's key."""
    return jax.random.fold_in(jax.random.key(seed), 2**32 - 1)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The training order of epoch ``epoch``: a permutation of range(n) that is
    a pure function of (seed, epoch), so a resumed run sees the same batches."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_key(seed: int, epoch: int, index: int) -> Array:
    """The encoder's PRNG key for batch ``index`` of ``epoch``: a pure function."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), index)


class NonFiniteLossError(SparkSomasError, FloatingPointError):
    """Training produced a NaN or infinite loss; the run stopped before the
    epoch's ``on_epoch_end`` (so no checkpoint of it was written)."""


class NonFiniteGradientError(NonFiniteLossError):
    """Every batch of an epoch had a non-finite gradient, so every update was
    skipped and nothing was learned; the run stopped as for a non-finite loss."""


class NonFiniteStateError(NonFiniteLossError):
    """A batch left a neuron's running state NaN (a NaN input current, a NaN
    encoder output or a NaN parameter); the run stopped as for a non-finite
    loss, although the loss and the spikes may look normal."""


def summarize_batches(batches: Mapping[str, Any]) -> dict[str, float]:
    """One epoch's training metrics from its batches' (arrays of shape (K,)):
    loss, accuracy and rate averaged; ``grad_norm`` and each
    ``grad_norm/<module>`` averaged over the batches whose gradient was
    finite (NaN if none was), ``grad_norm_max`` the largest (inf if one
    was not finite), ``skipped_batches`` the count of skipped updates and
    ``nonfinite_state_batches`` the count of batches that left a neuron's
    state NaN."""
    batches = {k: np.asarray(v, np.float64) for k, v in batches.items()}
    finite = np.isfinite(batches["grad_norm"])
    out = {k: float(np.mean(batches[k])) for k in ("loss", "accuracy", "rate_hz")}
    for k, v in batches.items():
        if k.startswith("grad_norm"):
            out[k] = float(np.mean(v[finite])) if finite.any() else math.nan
    out["grad_norm_max"] = float(np.max(np.where(finite, batches["grad_norm"], np.inf)))
    out["skipped_batches"] = int(np.sum(batches["skipped"]))
    out["nonfinite_state_batches"] = int(np.sum(batches.get("nonfinite_state", 0.0)))
    return out


def _check_fit(model: Any, data: Dataset, encoder: Encoder, epochs: Any, batch_size: Any,
               start_epoch: Any) -> None:
    """Refuses, before any step, settings and data that ``fit`` cannot train on."""
    for name, value, low in (("epochs", epochs, 0), ("batch_size", batch_size, 1),
                             ("start_epoch", start_epoch, 0)):
        require(not isinstance(value, bool) and isinstance(value, (int, np.integer))
                and value >= low, name, value, f"an int >= {low}", error=RuleError)
    require(start_epoch <= epochs, "start_epoch", start_epoch, f"start_epoch <= epochs = {epochs}",
            error=RuleError)
    data.check()
    spec = model.spec if isinstance(model, SpikingNetwork) else {}
    if "in_features" in spec and data.n_features != spec["in_features"]:
        raise DataError(violation(f"{data.name}: {data.n_features} features",
                                  f"the model's in_features = {spec['in_features']}", plural=True))
    if "n_classes" in spec:
        require(data.n_classes <= spec["n_classes"], f"{data.name}: n_classes", int(data.n_classes),
                f"at most the model's n_classes = {spec['n_classes']}", error=DataError)
    require(encoder.kind != "poisson" or not hasattr(model, "dt") or encoder.dt == model.dt,
            "Encoder.dt", encoder.dt, f"the model's dt = {getattr(model, 'dt', None)} ms "
            "(a Poisson rate per step needs the step the network takes; a network's dt is 1 ms "
            "by default, a lone soma's 0.1 ms)", error=RuleError)
    spikes = data.encoding == "spikes"
    if spikes != (encoder.kind == "spikes"):
        raise DataError(violation(
            f"{data.name}: {data.encoding} data", f"encoder kind {encoder.kind!r} needs "
            f"{'spikes' if encoder.kind == 'spikes' else 'static'} data", plural=True))
    if spikes and data.x_train.shape[1] != encoder.steps:
        raise DataError(violation(f"{data.name}: {data.x_train.shape[1]} time steps per sample",
                                  f"the encoder's steps = {encoder.steps}", plural=True))


HISTORY_KEYS = ("epoch", "train_loss", "train_accuracy", "train_rate_hz",
                "test_loss", "test_accuracy", "test_rate_hz", "grad_norm", "grad_norm_max",
                "skipped_batches", "nonfinite_state_batches", "seconds")

#: What ``fit``'s per-epoch evaluation of ``data.x_test`` may be called in
#: the history: the test split, or a validation split the data hold there
#: (``load_shd(..., holdout="validation")``) while the test set waits.
EVAL_SPLITS = ("test", "validation")


def history_keys(eval_split: str = "test") -> tuple[str, ...]:
    """:data:`HISTORY_KEYS` with the evaluated split's metrics named
    ``<eval_split>_loss``, ``<eval_split>_accuracy``, ``<eval_split>_rate_hz``."""
    return tuple(k.replace("test_", f"{eval_split}_", 1) if k.startswith("test_") else k
                 for k in HISTORY_KEYS)


def fits_on_device(nbytes: int, device: jax.Device | None = None, *, fraction: float = 0.25) -> bool:
    """Whether ``nbytes`` take at most ``fraction`` of ``device``'s memory
    (:func:`~spark_somas.errors.device_memory`; default: the first device)."""
    return nbytes <= fraction * device_memory(device)


def _continued(history: Mapping[str, list] | None, eval_split: str) -> dict[str, list]:
    """A copy of a saved history to append to; keys it lacks (an older run's,
    or per-module gradient norms) are filled with NaN for its epochs."""
    history = {k: list(v) for k, v in (history or {}).items()}
    done = len(history.get("epoch", []))
    for k in history_keys(eval_split):
        history.setdefault(k, list(range(1, done + 1)) if k == "epoch" else [math.nan] * done)
    return history


def _check_finite(epoch: int, row: Mapping[str, float], steps_per_epoch: int,
                  eval_split: str) -> None:
    """Raises when the epoch learned nothing (every update skipped) or its loss diverged."""
    require(row["skipped_batches"] != steps_per_epoch, f"epoch {epoch + 1}: skipped_batches",
            steps_per_epoch, "at least one batch with a finite gradient per epoch (every update "
            "was skipped; see 'Training over long sequences' in the docs: exp_gradient='bounded', "
            "a damped surrogate, a lower learning rate); training stopped before this epoch was "
            "saved", error=NonFiniteGradientError)
    held = row[f"{eval_split}_loss"]
    if not np.isfinite([row["train_loss"], held]).all():
        raise NonFiniteLossError(violation(
            f"epoch {epoch + 1}: train loss {row['train_loss']}, {eval_split} loss {held}",
            "a finite loss (lower the learning rate or check the inputs); training stopped "
            "before this epoch was saved", plural=True))
    require(row["nonfinite_state_batches"] == 0, f"epoch {epoch + 1}: nonfinite_state_batches",
            row["nonfinite_state_batches"], "0: no batch may leave a neuron's state NaN (a NaN "
            "input current, or a NaN from the encoder or a parameter, makes a soma's potential "
            "NaN for the rest of the run and silences it while loss and spikes look normal); "
            "training stopped before this epoch was saved", error=NonFiniteStateError)


def fit(
    model: SpikingNetwork,
    optimizer: nnx.Optimizer,
    data: Dataset,
    *,
    encoder: Encoder,
    epochs: int,
    batch_size: int = 64,
    seed: int = 0,
    objective: Objective = Objective(),
    start_epoch: int = 0,
    history: Mapping[str, list] | None = None,
    on_epoch_end: Callable[[FitState, int, dict], bool | None] | None = None,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    stop_on_nonfinite: bool = True,
    epoch_on_device: bool | None = None,
    callbacks: Sequence[Callback] | None = None,
    fresh_data: bool = False,
    eval_split: str = "test",
) -> dict[str, list]:
    """Trains for epochs ``start_epoch`` … ``epochs − 1``; returns the history.

    The run's whole state is explicit: ``model`` and ``optimizer`` (weights,
    neuron parameters, Adam moments, step count), ``seed`` and the epoch
    counter. Epoch e visits ``data``'s training set in the order
    :func:`epoch_order` (seed, e) in batches of ``batch_size`` (the last,
    incomplete one is dropped: one compiled shape); batch i uses encoder key
    :func:`batch_key` (seed, e, i). So a run restored after epoch e and
    continued with ``start_epoch=e + 1`` and the saved history is the run
    that never stopped.

    **Fresh data.** With ``fresh_data`` every epoch trains on new samples,
    ``data.draw_train(e, n)`` (n: the training split's size), which a
    generated task offers (the cue task, Randman): a pure function of its
    seed and e, so a resumed run still equals the unbroken one. The test
    split stays the same.

    **Epochs on the device.** With ``epoch_on_device`` True the training
    split is copied to the device once and each epoch is one compiled
    program (:func:`train_epoch`); with False each batch is one call of the
    compiled :func:`train_step` from a Python loop. Both run the same
    updates in the same order. None (default) chooses the device when there
    is no ``mesh`` and the training split takes at most a quarter of the
    device's memory (:func:`fits_on_device`).

    **Hooks.** Around the epochs, ``callbacks`` (:mod:`spark_somas.training.callbacks`)
    draw the progress bar, checkpoint, log and stop early: their
    ``on_fit_start``, ``on_batch_end``, ``on_epoch_end`` (True: stop after
    this epoch) and ``on_fit_end``. None (default) runs a
    :class:`~spark_somas.training.callbacks.ProgressBar` when ``progress`` (a tqdm
    bar of steps or epochs: loss, accuracy, hidden mean rate) and
    ``on_epoch_end(fit, epoch, history)`` when given, after each epoch — the
    arguments of a callback's ``on_epoch_end``: the
    :class:`~spark_somas.training.callbacks.FitState` (``fit.model``,
    ``fit.optimizer``), ``epoch`` the 0-based index of the epoch just
    finished, ``history`` every epoch so far, whose ``"epoch"`` entries count
    the epochs done (``epoch + 1`` for this one); True stops ``fit``. A
    function of the older form ``(epoch, model, optimizer, history)`` still
    runs, with a ``DeprecationWarning``. A list replaces
    those defaults; ``on_epoch_end``, when given, still runs after it.

    History: a dict of equal-length lists, one entry per epoch —
    :data:`HISTORY_KEYS` (loss and accuracy on the training batches as
    trained, and on ``data``'s held-out split after the epoch, named by
    ``eval_split``: ``test_*`` or ``validation_*``; mean hidden rates in
    Hz; the gradient's global norm averaged over the epoch's finite batches
    and its largest value, and the number of batches skipped for a
    non-finite gradient, and of batches that left a neuron's state NaN;
    wall seconds of the epoch, evaluation included),
    plus ``grad_norm/<module>`` for each module that owns parameters
    (:func:`gradient_norms`, :func:`summarize_batches`). The test metrics
    are ``flax.nnx.metrics`` (:func:`classification_metrics`).

    With a ``mesh`` (:func:`spark_somas.simulation.sharding.make_mesh`) training is data
    parallel: ``model`` and ``optimizer`` are replicated onto it and every
    batch is split over its ``"data"`` axis (``batch_size`` must divide by
    that axis' size); the compiler all-reduces the gradients. It runs the
    Python loop.

    Before the first step, the settings and ``data`` are checked
    (:meth:`Dataset.check`: shapes, finite inputs, labels in range; the
    model's input size and classes; the encoder's kind and steps). After
    each epoch a NaN or infinite train or test loss raises
    :class:`NonFiniteLossError` before any ``on_epoch_end``, so the last
    checkpoint written is the last good one, and so does a batch that left
    a neuron's running state NaN (:class:`NonFiniteStateError`: a NaN
    input silences a soma for the rest of the run with a finite loss);
    ``stop_on_nonfinite=False`` trains on regardless.

    Args:
      model: the :class:`~spark_somas.training.network.SpikingNetwork` to train (in place).
      optimizer: its ``nnx.Optimizer``, from :func:`make_optimizer` (updated in place).
      data: a :class:`~spark_somas.data.base.Dataset`, training and test split.
      encoder: turns a batch of samples into the network's time-major input.
      epochs: train up to this epoch count (epochs ``start_epoch`` … ``epochs − 1``).
      batch_size: samples per update; the last incomplete batch is dropped.
      seed: the batch order and the encoder's noise (see above).
      objective: the loss, :class:`~spark_somas.training.objectives.Objective`.
      start_epoch: the first epoch to train (a resumed run: the epochs done).
      history: a resumed run's history, appended to.
      on_epoch_end: ``f(fit, epoch, history)`` after each epoch (see Hooks).
      progress: draw a progress bar (when ``callbacks`` is None).
      mesh: train data parallel over this device mesh.
      stop_on_nonfinite: raise on a non-finite loss or state (see below).
      epoch_on_device: each epoch one compiled program (True), a Python loop
        of steps (False), or chosen by size (None).
      callbacks: :mod:`~spark_somas.training.callbacks` to run, replacing the default bar.
      fresh_data: train each epoch on ``data.draw_train(epoch, n)``.
      eval_split: what ``data.x_test`` is, and the history calls it after
        each epoch: ``"test"`` (``test_loss``, ``test_accuracy``,
        ``test_rate_hz``) or ``"validation"`` (``validation_loss``, …), for
        data whose held-out split is a validation split (model selection
        on it, the test set evaluated once after ``fit``).

    Raises:
      ValueError: bad ``epochs``, ``batch_size`` or ``start_epoch``, or
        ``epoch_on_device=True`` with a ``mesh``.
      TypeError: an entry of ``callbacks`` that is not a Callback.
      DataError: ``data`` that cannot train ``model`` (see above).
      NonFiniteLossError: the loss diverged.
      NonFiniteStateError: a batch left a neuron's state NaN.
      NonFiniteGradientError: every batch of an epoch had a non-finite gradient.
    """
    _check_fit(model, data, encoder, epochs, batch_size, start_epoch)
    require(not fresh_data or data.draw_train is not None, "fresh_data", fresh_data,
            f"a dataset that draws new training samples ({data.name} has no draw_train)",
            error=RuleError)
    require(eval_split in EVAL_SPLITS, "eval_split", eval_split, f"one of {EVAL_SPLITS}",
            error=RuleError)
    require(not (epoch_on_device and mesh is not None), "epoch_on_device", epoch_on_device,
            "False with a mesh (a sharded run loops over batches in Python)", error=RuleError)
    callbacks = resolve_callbacks(callbacks, progress=progress, on_epoch_end=on_epoch_end)
    n = len(data.x_train)
    batch_size = min(batch_size, n)
    steps_per_epoch = n // batch_size
    if epoch_on_device is None:
        epoch_on_device = mesh is None and fits_on_device(data.x_train.nbytes + data.y_train.nbytes)
    place = lambda batch: batch  # noqa: E731
    if mesh is not None:
        sharding.replicate(model, mesh)
        sharding.replicate(optimizer, mesh)
        place = lambda batch: sharding.shard_batch(batch, mesh)  # noqa: E731
    step = None if epoch_on_device else nnx.cached_partial(train_step, model, optimizer)
    state = FitState(model, optimizer, epochs, start_epoch, steps_per_epoch, epoch_on_device,
                     _continued(history, eval_split), eval_split)
    eval_key = evaluation_key(seed)
    split = None  # (the epoch it was drawn for, or None: the dataset's; inputs, labels)
    try:
        for callback in callbacks:
            callback.on_fit_start(state)
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            order = epoch_order(seed, epoch, n)[:steps_per_epoch * batch_size].reshape(
                steps_per_epoch, batch_size)
            if split is None or (fresh_data and split[0] != epoch):
                x, y = (data.draw_train(epoch, n) if fresh_data
                        else (data.x_train, data.y_train))
                if epoch_on_device:  # copied once, or once per epoch when fresh
                    x, y = jnp.asarray(x), jnp.asarray(y)
                split = (epoch if fresh_data else None, x, y)
            x, y = split[1:]
            if epoch_on_device:
                keys = jax.vmap(functools.partial(batch_key, seed, epoch))(
                    jnp.arange(steps_per_epoch))
                batches = train_epoch(model, optimizer, x, y, jnp.asarray(order), keys,
                                      encoder=encoder, objective=objective)
            else:
                batches = []
                for i, idx in enumerate(order):
                    metrics = step(*place((x[idx], y[idx])), batch_key(seed, epoch, i),
                                   encoder=encoder, objective=objective)
                    batches.append(metrics)
                    for callback in callbacks:
                        callback.on_batch_end(state, epoch, i, metrics)
                batches = {k: np.stack([np.asarray(m[k]) for m in batches]) for k in batches[0]}
            train = summarize_batches(batches)
            held = evaluate(model, data.x_test, data.y_test, encoder=encoder,
                            objective=objective, key=eval_key, mesh=mesh)
            row = {"epoch": epoch + 1, "train_loss": train["loss"],
                   "train_accuracy": train["accuracy"], "train_rate_hz": train["rate_hz"],
                   **{f"{eval_split}_{k}": held[k] for k in ("loss", "accuracy", "rate_hz")},
                   "seconds": time.perf_counter() - t0,
                   **{k: v for k, v in train.items() if k.startswith("grad_norm")},
                   "skipped_batches": train["skipped_batches"],
                   "nonfinite_state_batches": train["nonfinite_state_batches"]}
            for k, v in row.items():  # "epoch" first: a new key has NaN for the epochs before
                state.history.setdefault(k, [math.nan] * (len(state.history["epoch"]) - 1))
                state.history[k].append(v)
            if stop_on_nonfinite:
                _check_finite(epoch, row, steps_per_epoch, eval_split)
            answers = [callback.on_epoch_end(state, epoch, state.history) for callback in callbacks]
            if any(answer is True for answer in answers):
                break
    finally:
        for callback in callbacks:
            callback.on_fit_end(state)
    return state.history


def plot_training(history: Mapping[str, Sequence[float]], raster: np.ndarray | None = None, *,
                  dt: float = 1.0, title: str = "", figure: Any = None):
    """A matplotlib Figure: loss and accuracy per epoch (train and test) and,
    given ``raster`` (T, N) 0/1 of one sample, its hidden spike raster.

    Drawn into ``figure`` when given (an empty ``matplotlib.figure.Figure``:
    one made without pyplot needs no display and no backend, which is how
    :func:`spark_somas.training.runs.train` writes its PNG), else into a new pyplot figure."""
    from spark_somas import plotting

    panels = 3 if raster is not None else 2
    size = (4.2 * panels, 3.4)
    if figure is None:
        import matplotlib.pyplot as plt

        figure = plt.figure(figsize=size, layout="constrained")
    else:
        figure.set_size_inches(*size)
        figure.set_layout_engine("constrained")
    fig, axes = figure, figure.subplots(1, panels)
    held = next((split for split in EVAL_SPLITS if f"{split}_loss" in history), "test")
    for ax, what in zip(axes, ("loss", "accuracy")):
        ax.plot(history["epoch"], history[f"train_{what}"], "o-", ms=3, label="train")
        ax.plot(history["epoch"], history[f"{held}_{what}"], "s-", ms=3, label=held)
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend()
    if raster is not None:
        plotting.raster(raster, dt=dt, ax=axes[2])
        axes[2].set_ylabel("hidden neuron")
        axes[2].set_title("one test sample")
    if title:
        fig.suptitle(title)
    return fig
