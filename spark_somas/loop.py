"""The training loop: jit-compiled train and evaluation steps and ``fit``.

Gradients flow back through time (BPTT) through the somas' surrogate spike
function (Neftci, Mostafa & Zenke 2019; Zenke & Vogels 2021). A run's whole
state is explicit — model, optimizer, seed and epoch counter — and every
random choice is a pure function of (seed, epoch, batch), so a resumed run
is the run that never stopped.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from spark_somas import sharding
from spark_somas.configs import require
from spark_somas.constraints import NeuronOptimizer, neuron_constraints
from spark_somas.datasets import DataError, Dataset
from spark_somas.encoders import Encoder
from spark_somas.network import NetworkOutput, SpikingNetwork
from spark_somas.objectives import Objective, firing_rate

__all__ = [
    "make_optimizer",
    "train_step",
    "train_epoch",
    "eval_step",
    "classification_metrics",
    "fits_on_device",
    "record",
    "evaluate",
    "epoch_order",
    "batch_key",
    "NonFiniteLossError",
    "HISTORY_KEYS",
    "fit",
    "plot_training",
]

Array = jax.Array


def make_optimizer(model: nnx.Module, learning_rate: float = 2e-3,
                   tx: optax.GradientTransformation | None = None, *,
                   total_steps: int | None = None) -> nnx.Optimizer:
    """``NeuronOptimizer(model, optax.chain(tx, neuron_constraints(model)), wrt=nnx.Param)``.

    The default ``tx``: global-norm clipping at 1, then Adam with peak
    ``learning_rate``, decayed to 0 over ``total_steps`` by a cosine schedule
    when given, inside ``optax.apply_if_finite``: a batch whose gradient
    overflows (BPTT through long runs of exponential somas can: the
    exponential's slope near V_T exceeds 1 per step) is skipped instead of
    turning every weight into NaN; after 20 such batches in a row the update
    goes through and ``fit`` stops on the non-finite loss. Any optax
    transformation works; the trained neuron parameters are kept inside
    their rules either way (:func:`~spark_somas.constraints.neuron_constraints`),
    against the somas' fixed fields as they are at each update: the
    :class:`~spark_somas.constraints.NeuronOptimizer`, an ``nnx.Optimizer``,
    passes them from the model it updates.
    """
    if tx is None:
        schedule = (learning_rate if total_steps is None
                    else optax.cosine_decay_schedule(learning_rate, total_steps))
        tx = optax.apply_if_finite(
            optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule)),
            max_consecutive_errors=20)
    return NeuronOptimizer(model, optax.chain(tx, neuron_constraints(model)), wrt=nnx.Param)


def _metrics(model, out: NetworkOutput, labels: Array, loss: Array) -> dict[str, Array]:
    return {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(out.logits, -1) == labels),
        "rate_hz": firing_rate(out.hidden_spikes, model.dt),
    }


def _train_step(model: SpikingNetwork, optimizer: nnx.Optimizer, x: Array, labels: Array,
                key: Array, *, encoder: Encoder, objective: Objective) -> dict[str, Array]:
    inputs = encoder(x, key, train=True)

    def loss_fn(model):
        out = model(inputs)
        return objective(model, out, labels), out

    (loss, out), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    model.reset()
    return _metrics(model, out, labels, loss)


@nnx.jit(static_argnames=("encoder", "objective"))
def train_step(model: SpikingNetwork, optimizer: nnx.Optimizer, x: Array, labels: Array,
               key: Array, *, encoder: Encoder, objective: Objective) -> dict[str, Array]:
    """One compiled update on a batch: encode, forward, BPTT, the
    optimizer's update (which keeps neuron parameters legal when built by
    :func:`make_optimizer`), somas back to rest. Returns loss, accuracy and
    the hidden layers' mean rate (Hz) on the batch (before the update)."""
    return _train_step(model, optimizer, x, labels, key, encoder=encoder, objective=objective)


@functools.partial(jax.jit, static_argnames=("graphdef", "encoder", "objective"),
                   donate_argnames=("state",))
def _scan_epoch(graphdef, state, x, labels, order, keys, *, encoder, objective):
    def one(state, batch):
        idx, key = batch
        model, optimizer = nnx.merge(graphdef, state)
        metrics = _train_step(model, optimizer, x[idx], labels[idx], key, encoder=encoder,
                              objective=objective)
        return nnx.state((model, optimizer)), metrics

    return jax.lax.scan(one, state, (order, keys))


def train_epoch(model: SpikingNetwork, optimizer: nnx.Optimizer, x: Array, labels: Array,
                order: Array, keys: Array, *, encoder: Encoder,
                objective: Objective) -> dict[str, Array]:
    """A whole epoch as one compiled program: the updates of
    :func:`train_step` on batches ``x[order[i]]``, ``labels[order[i]]`` with
    key ``keys[i]``, for i = 0 … K − 1, scanned on the device
    (``jax.lax.scan`` over batches) instead of K Python calls.

    ``x`` and ``labels`` are the whole training split (on the device);
    ``order`` (K, B) holds the batches' sample indices, ``keys`` (K,) their
    encoder keys. The model and optimizer are split once into a graph
    definition and their state, which the scan carries (no per-batch
    traversal of the module graph in Python), and the state's buffers are
    donated. Returns each batch's metrics stacked, shape (K,).
    """
    graphdef, state = nnx.split((model, optimizer))
    state, metrics = _scan_epoch(graphdef, state, x, labels, order, keys, encoder=encoder,
                                 objective=objective)
    nnx.update((model, optimizer), state)
    return metrics


@nnx.jit(static_argnames=("encoder", "objective"))
def eval_step(model: SpikingNetwork, x: Array, labels: Array, key: Array, *,
              encoder: Encoder, objective: Objective) -> dict[str, Array]:
    """Per sample: the objective's task loss, the logits and the hidden
    layers' mean rate (Hz). Somas end at rest."""
    out = model(encoder(x, key))
    model.reset()
    spikes = out.hidden_spikes
    return {
        "loss": objective.per_sample(out, labels),
        "logits": out.logits,
        "rate_hz": firing_rate(spikes, model.dt, (0, spikes.ndim - 1)),
    }


@nnx.jit(static_argnames=("encoder",))
def record(model: SpikingNetwork, x: Array, key: Array, *, encoder: Encoder) -> NetworkOutput:
    """The forward pass on a batch (logits and every trace); somas end at rest."""
    out = model(encoder(x, key))
    model.reset()
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


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The training order of epoch ``epoch``: a permutation of range(n) that is
    a pure function of (seed, epoch), so a resumed run sees the same batches."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_key(seed: int, epoch: int, index: int) -> Array:
    """The encoder's PRNG key for batch ``index`` of ``epoch``: a pure function."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), index)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the run stopped before the
    epoch's ``on_epoch_end`` (so no checkpoint of it was written)."""


def _check_fit(model: Any, data: Dataset, encoder: Encoder, epochs: Any, batch_size: Any,
               start_epoch: Any) -> None:
    """Refuses, before any step, settings and data that ``fit`` cannot train on."""
    for name, value, low in (("epochs", epochs, 0), ("batch_size", batch_size, 1),
                             ("start_epoch", start_epoch, 0)):
        require(not isinstance(value, bool) and isinstance(value, (int, np.integer))
                and value >= low, name, value, f"an int >= {low}", error=ValueError)
    require(start_epoch <= epochs, "start_epoch", start_epoch, f"start_epoch <= epochs = {epochs}",
            error=ValueError)
    data.check()
    spec = model.spec if isinstance(model, SpikingNetwork) else {}
    if "in_features" in spec and data.n_features != spec["in_features"]:
        raise DataError(f"{data.name}: {data.n_features} features violate the rule: the model's "
                        f"in_features = {spec['in_features']}")
    if "n_classes" in spec and data.n_classes > spec["n_classes"]:
        raise DataError(f"{data.name}: n_classes = {data.n_classes} violates the rule: at most the "
                        f"model's n_classes = {spec['n_classes']}")
    require(encoder.kind != "poisson" or not hasattr(model, "dt") or encoder.dt == model.dt,
            "Encoder.dt", encoder.dt, f"the model's dt = {getattr(model, 'dt', None)} ms "
            "(a Poisson rate per step needs the step the network takes; a network's dt is 1 ms "
            "by default, a lone soma's 0.1 ms)", error=ValueError)
    spikes = data.encoding == "spikes"
    if spikes != (encoder.kind == "spikes"):
        raise DataError(f"{data.name}: {data.encoding} data violate the rule: encoder kind "
                        f"{encoder.kind!r} needs {'spikes' if encoder.kind == 'spikes' else 'static'} data")
    if spikes and data.x_train.shape[1] != encoder.steps:
        raise DataError(f"{data.name}: {data.x_train.shape[1]} time steps per sample violate the "
                        f"rule: the encoder's steps = {encoder.steps}")


HISTORY_KEYS = ("epoch", "train_loss", "train_accuracy", "train_rate_hz",
                "test_loss", "test_accuracy", "test_rate_hz", "seconds")


def fits_on_device(nbytes: int, device: jax.Device | None = None, *, fraction: float = 0.25) -> bool:
    """Whether ``nbytes`` take at most ``fraction`` of ``device``'s memory
    (default: the first device; its ``bytes_limit``, or the machine's
    physical memory for a CPU, which reports none)."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    limit = (stats or {}).get("bytes_limit")
    if limit is None:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return nbytes <= fraction * limit


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
    on_epoch_end: Callable[[int, SpikingNetwork, nnx.Optimizer, dict], None] | None = None,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    stop_on_nonfinite: bool = True,
    epoch_on_device: bool | None = None,
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

    **Epochs on the device.** With ``epoch_on_device`` True the training
    split is copied to the device once and each epoch is one compiled
    program (:func:`train_epoch`: the batches scanned on the device); with
    False each batch is one call of the compiled :func:`train_step` from a
    Python loop (the module graph cached with ``nnx.cached_partial``). Both
    run the same updates in the same order. None (default) chooses the
    device when there is no ``mesh`` and the training split takes at most a
    quarter of the device's memory (:func:`fits_on_device`).

    **Logging.** ``on_epoch_end(epoch, model, optimizer, history)`` runs
    after each epoch, ``epoch`` being the 0-based index of the epoch just
    finished and ``history`` every epoch so far: checkpoint there, or log
    (:mod:`spark_somas.loggers`: JSON lines, TensorBoard, a three-line
    Weights & Biases hook; :func:`~spark_somas.loggers.chain` runs several).

    History: a dict of equal-length lists, one entry per epoch —
    :data:`HISTORY_KEYS` (loss and accuracy on the training batches as
    trained, and on the test split after the epoch; mean hidden rates in
    Hz; wall seconds of the epoch, evaluation included). The metrics are
    ``flax.nnx.metrics`` (:func:`classification_metrics`).

    A tqdm bar counts training steps (Python loop) or epochs (on the
    device) and shows loss, accuracy and the hidden mean rate.

    With a ``mesh`` (:func:`spark_somas.sharding.make_mesh`) training is data
    parallel: ``model`` and ``optimizer`` are replicated onto it and every
    batch is split over its ``"data"`` axis (``batch_size`` must divide by
    that axis' size); the compiler all-reduces the gradients. It runs the
    Python loop.

    Before the first step, the settings and ``data`` are checked
    (:meth:`Dataset.check`: shapes, finite inputs, labels in range; the
    model's input size and classes; the encoder's kind and steps). After
    each epoch a NaN or infinite train or test loss raises
    :class:`NonFiniteLossError` before ``on_epoch_end``, so the last
    checkpoint written is the last good one; ``stop_on_nonfinite=False``
    trains on regardless.

    Raises:
      ValueError: bad ``epochs``, ``batch_size`` or ``start_epoch``, or
        ``epoch_on_device=True`` with a ``mesh``.
      DataError: ``data`` that cannot train ``model`` (see above).
      NonFiniteLossError: the loss diverged.
    """
    if progress:  # tqdm.auto picks the notebook bar, and warns in a kernel without ipywidgets
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm

    _check_fit(model, data, encoder, epochs, batch_size, start_epoch)
    require(not (epoch_on_device and mesh is not None), "epoch_on_device", epoch_on_device,
            "False with a mesh (a sharded run loops over batches in Python)", error=ValueError)
    n = len(data.x_train)
    batch_size = min(batch_size, n)
    per_epoch = n // batch_size
    if epoch_on_device is None:
        epoch_on_device = mesh is None and fits_on_device(data.x_train.nbytes + data.y_train.nbytes)
    history = {k: list(history.get(k, [])) if history else [] for k in HISTORY_KEYS}
    place = lambda batch: batch  # noqa: E731
    if mesh is not None:
        sharding.replicate(model, mesh)
        sharding.replicate(optimizer, mesh)
        place = lambda batch: sharding.shard_batch(batch, mesh)  # noqa: E731
    if epoch_on_device:
        x_all, y_all = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    else:
        step = nnx.cached_partial(train_step, model, optimizer)
    eval_key = jax.random.fold_in(jax.random.key(seed), 2**32 - 1)  # never an epoch
    bar = tqdm(total=(epochs - start_epoch) * (1 if epoch_on_device else per_epoch),
               disable=not progress, unit="epoch" if epoch_on_device else "step",
               dynamic_ncols=True)
    try:
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            order = epoch_order(seed, epoch, n)[:per_epoch * batch_size].reshape(per_epoch,
                                                                                 batch_size)
            train = nnx.MultiMetric(**{k: nnx.metrics.Average(k)
                                       for k in ("loss", "accuracy", "rate_hz")})
            if epoch_on_device:
                keys = jax.vmap(lambda i: batch_key(seed, epoch, i))(jnp.arange(per_epoch))
                train.update(**train_epoch(model, optimizer, x_all, y_all, jnp.asarray(order),
                                           keys, encoder=encoder, objective=objective))
                bar.update(1)
            for i in range(0 if epoch_on_device else per_epoch):
                m = step(*place((data.x_train[order[i]], data.y_train[order[i]])),
                         batch_key(seed, epoch, i), encoder=encoder, objective=objective)
                train.update(**m)
                bar.update(1)
                if i % 10 == 0 or i == per_epoch - 1:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{float(m['loss']):.3f}",
                                    acc=f"{float(m['accuracy']):.3f}",
                                    rate=f"{float(m['rate_hz']):.1f}Hz", refresh=False)
            train = {k: float(v) for k, v in train.compute().items()}
            test = evaluate(model, data.x_test, data.y_test, encoder=encoder,
                            objective=objective, key=eval_key, mesh=mesh)
            for k, v in (("epoch", epoch + 1), ("train_loss", train["loss"]),
                         ("train_accuracy", train["accuracy"]), ("train_rate_hz", train["rate_hz"]),
                         ("test_loss", test["loss"]), ("test_accuracy", test["accuracy"]),
                         ("test_rate_hz", test["rate_hz"]), ("seconds", time.perf_counter() - t0)):
                history[k].append(v)
            bar.set_postfix(epoch=epoch + 1, loss=f"{train['loss']:.3f}",
                            acc=f"{train['accuracy']:.3f}", test_acc=f"{test['accuracy']:.3f}",
                            rate=f"{train['rate_hz']:.1f}Hz")
            if stop_on_nonfinite and not np.isfinite([train["loss"], test["loss"]]).all():
                raise NonFiniteLossError(
                    f"epoch {epoch + 1}: train loss {train['loss']}, test loss {test['loss']} "
                    "violate the rule: a finite loss (lower the learning rate or check the "
                    "inputs); training stopped before this epoch was saved")
            if on_epoch_end is not None:
                on_epoch_end(epoch, model, optimizer, history)
    finally:
        bar.close()
    return history


def plot_training(history: Mapping[str, Sequence[float]], raster: np.ndarray | None = None, *,
                  dt: float = 1.0, title: str = ""):
    """A matplotlib Figure: loss and accuracy per epoch (train and test) and,
    given ``raster`` (T, N) 0/1 of one sample, its hidden spike raster."""
    import matplotlib.pyplot as plt

    from spark_somas import plotting

    panels = 3 if raster is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4), layout="constrained")
    for ax, what in zip(axes, ("loss", "accuracy")):
        ax.plot(history["epoch"], history[f"train_{what}"], "o-", ms=3, label="train")
        ax.plot(history["epoch"], history[f"test_{what}"], "s-", ms=3, label="test")
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
