"""Somas beyond one device: meshes, shardings and data parallelism with ``jax.sharding``.

A population of N neurons driven by a batch of B inputs holds state of shape
``(B, *units)``. Every soma step is elementwise in (B, neuron): neuron i of
sample b only reads its own V, w, θ, counter, parameters and current. So a
2-D device mesh ``data × neurons`` can split the state into B/D × N/M blocks,
one per device, and :func:`spark_somas.simulate` runs each block locally: the
compiler (GSPMD, Xu et al. 2021, "GSPMD: General and Scalable Parallelization
for ML Computation Graphs") propagates the input shardings through the
``lax.scan`` and inserts no communication at all. :func:`collectives` checks
that on the compiled program.

Data-parallel training is the same mechanism one level up: with the batch
split over ``data`` and the parameters replicated, the gradient of a mean
loss L = (1/B) Σ_b ℓ_b is a sum of per-shard partial gradients, and the
compiler inserts the one all-reduce that adds them. Nothing in a train step
changes; only where its inputs live.

Which dimension goes where (``partition_spec``): an array of shape
``(*lead, *batch, *units)`` has its first batch dimension on ``batch_axis`` and
its first units dimension on ``neuron_axis``; leading dimensions (time) and
dimensions of size 1 (broadcast parameters) are replicated. Parameters of
shape ``units`` are thus split over neurons and replicated over data.
"""

from __future__ import annotations

import collections
import functools
import math
import re
from typing import Any, Callable, Sequence, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from spark_somas.simulation import layout
from spark_somas.models.configs import as_number
from spark_somas.errors import RuleError, require, violation
from spark_somas.simulation.driver import output, recorded_fields, simulate
from spark_somas.models.somas import Soma, SomaOutput, SomaState

__all__ = [
    "DATA",
    "NEURONS",
    "make_mesh",
    "partition_spec",
    "shard_soma",
    "shard_currents",
    "shard_batch",
    "replicate",
    "simulate_sharded",
    "collectives",
]

DATA = "data"
NEURONS = "neurons"

Axis = str | Sequence[str] | None
T = TypeVar("T")

_COLLECTIVE = re.compile(
    r"\b(all-gather|all-reduce|all-to-all|reduce-scatter|collective-permute|collective-broadcast|"
    r"ragged-all-to-all)(?:-start)?\("
)


def make_mesh(data: int | None = None, neurons: int = 1, *,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``data × neurons`` device mesh (axis names :data:`DATA`, :data:`NEURONS`).

    Args:
      data: devices along the batch axis; None takes all devices not used by
        ``neurons``.
      neurons: devices along the neuron axis.
      devices: the devices to use (default ``jax.devices()``, which spans
        every host after ``jax.distributed.initialize``).

    The axes are ``AxisType.Auto``: arrays carry their sharding, and the
    compiler propagates it through jitted code.
    """
    devices = list(jax.devices() if devices is None else devices)
    neurons = as_number(neurons, "make_mesh: neurons", integer=True, error=RuleError)
    if data is not None:
        data = as_number(data, "make_mesh: data", integer=True, error=RuleError)
    require(isinstance(neurons, int) and 0 < neurons <= len(devices), "make_mesh: neurons",
            neurons, f"a positive int ≤ {len(devices)} devices", error=RuleError)
    data = len(devices) // neurons if data is None else data
    require(isinstance(data, int) and data > 0 and data * neurons <= len(devices),
            "make_mesh: data", data, f"a positive int with data × neurons = {data} × {neurons} "
            f"≤ {len(devices)} devices", error=RuleError)
    return jax.make_mesh((data, neurons), (DATA, NEURONS), (AxisType.Auto, AxisType.Auto),
                         devices=devices[: data * neurons])


def _axis_size(mesh: Mesh, axis: Axis, what: str) -> int:
    names = (axis,) if isinstance(axis, str) else tuple(axis)
    unknown = [n for n in names if n not in mesh.shape]
    require(not unknown, what, axis, f"names of mesh axes {tuple(mesh.axis_names)}",
            error=RuleError)
    return math.prod(mesh.shape[n] for n in names)


def partition_spec(
    shape: Sequence[int],
    mesh: Mesh,
    *,
    units_ndim: int,
    lead: int = 0,
    batch_axis: Axis = DATA,
    neuron_axis: Axis = NEURONS,
    name: str = "array",
) -> PartitionSpec:
    """Where each dimension of an array of shape ``(*lead, *batch, *units)`` goes.

    The first batch dimension (after ``lead`` replicated ones, e.g. time) is
    split over ``batch_axis``, the first of the ``units_ndim`` trailing
    dimensions over ``neuron_axis``; arrays of lower rank are aligned to the
    right (numpy broadcasting), so a parameter of shape ``units`` has no batch
    dimension and a scalar none at all. Dimensions of size 1 are replicated.
    An axis of None replicates. Raises ValueError (naming ``name``) when a
    dimension does not divide evenly over its axis.
    """
    shape = tuple(shape)
    spec: list[Any] = [None] * len(shape)
    first_unit = len(shape) - units_ndim
    targets = ((lead, batch_axis, "batch_axis") if lead < first_unit else None,
               (first_unit, neuron_axis, "neuron_axis") if units_ndim and first_unit >= lead else None)
    for dim, axis, what in filter(None, targets):
        if axis is None or shape[dim] == 1:
            continue
        size = _axis_size(mesh, axis, what)
        if shape[dim] % size:
            raise RuleError(violation(
                f"{name}: dimension {dim} of shape {shape} is {shape[dim]}, which",
                f"divisible by the {size} devices of mesh axis {axis!r}"))
        spec[dim] = axis if isinstance(axis, str) else tuple(axis)
    return PartitionSpec(*spec)


def _place_module(module: nnx.Pytree, place: Callable[[str, jax.Array], jax.Array]) -> None:
    state = nnx.state(module)
    placed = jax.tree_util.tree_map_with_path(
        lambda path, x: place(jax.tree_util.keystr(path, simple=True, separator="."), x), state)
    nnx.update(module, placed)


def shard_soma(
    soma: Soma,
    mesh: Mesh,
    *,
    batch_axis: Axis = DATA,
    neuron_axis: Axis = NEURONS,
    batch_shape: Sequence[int] | None = None,
) -> Soma:
    """Places a soma's state and parameters on ``mesh``, in place; returns it.

    State (shape ``(*batch, *units)``) is split over ``batch_axis`` and
    ``neuron_axis``; per-neuron parameters (shape ``units``) over
    ``neuron_axis`` and replicated over data; scalar fields are replicated.
    ``batch_shape`` first broadcasts the state to ``(*batch_shape, *units)``
    (values kept), so an unbatched soma can be split over data.
    ``simulate`` then keeps this sharding through its time loop.
    """
    if batch_shape is not None:
        soma.broadcast_state(tuple(batch_shape) + soma.units)

    def place(path: str, x: jax.Array) -> jax.Array:
        spec = partition_spec(x.shape, mesh, units_ndim=len(soma.units), batch_axis=batch_axis,
                              neuron_axis=neuron_axis, name=f"{type(soma).__name__}.{path}")
        return jax.device_put(x, NamedSharding(mesh, spec))

    _place_module(soma, place)
    return soma


def shard_currents(
    currents: jax.Array,
    mesh: Mesh,
    *,
    units_ndim: int = 1,
    batch_axis: Axis = DATA,
    neuron_axis: Axis = NEURONS,
) -> jax.Array:
    """Places time-major currents ``(T, *batch, *units)`` (pA) on ``mesh``: time
    replicated, batch over ``batch_axis``, neurons over ``neuron_axis`` —
    the layout :func:`shard_soma` gives the state, so no step moves data."""
    spec = partition_spec(np.shape(currents), mesh, units_ndim=units_ndim, lead=1,
                          batch_axis=batch_axis, neuron_axis=neuron_axis, name="currents")
    return jax.device_put(currents, NamedSharding(mesh, spec))


def simulate_sharded(
    soma: Soma,
    currents: jax.Array,
    mesh: Mesh,
    *,
    batch_axis: Axis = DATA,
    neuron_axis: Axis = NEURONS,
    time_major: bool = True,
    **simulate_kwargs: Any,
) -> SomaOutput:
    """:func:`spark_somas.simulate` on every device's block, under ``jax.shard_map``.

    Each device runs ``simulate`` on its own (T, B/D, N/M) block of currents
    with its block of state and parameters (the layout of
    :func:`partition_spec`); since a step is elementwise in (batch, neuron),
    that is the whole run, with no communication by construction. Unlike
    plain ``simulate`` on sharded arrays (where the compiler partitions the
    scan), this also splits what the compiler cannot partition: the fused
    Pallas kernels (``backend="fused"``), which then run once per device on
    its block. ``simulate_kwargs`` go to ``simulate``; the final state is
    left in ``soma``, laid out on ``mesh``. ``time_major`` is the layout of
    ``currents`` and of the result, as in ``simulate``: batch-first currents
    are moved to time-major before the blocks are cut.
    """
    currents = currents if isinstance(currents, jax.Array) else jnp.asarray(currents)
    currents = layout.to_time_major(
        currents, layout.time_axis("currents", currents.shape, soma.units, time_major))
    soma.broadcast_state(currents.shape[1:])
    units_ndim = len(soma.units)

    def spec(x: Any, lead: int, name: str) -> PartitionSpec:
        return partition_spec(np.shape(x), mesh, units_ndim=units_ndim, lead=lead,
                              batch_axis=batch_axis, neuron_axis=neuron_axis, name=name)

    def specs(tree: Any) -> tuple[tuple[PartitionSpec, ...], Any]:  # hashable: static under jit
        leaves, treedef = jax.tree.flatten(jax.tree_util.tree_map_with_path(
            lambda p, x: spec(x, 0, type(soma).__name__ + jax.tree_util.keystr(p)), tree))
        return tuple(leaves), treedef

    graphdef, state, rest = nnx.split(soma, SomaState, ...)
    record = recorded_fields(soma, simulate_kwargs.pop("record", ("spikes", "potential")))
    out, final = _simulate_blocks(
        graphdef, state, rest, currents, mesh=mesh, specs=(specs(state), specs(rest)),
        current_spec=spec(currents, 1, "currents"), record=record,
        kwargs=tuple(sorted(simulate_kwargs.items())))
    nnx.update(soma, final)
    return layout.from_time_major(out, units_ndim, time_major)


@functools.partial(jax.jit, static_argnames=("graphdef", "mesh", "specs", "current_spec", "record",
                                             "kwargs"))
def _simulate_blocks(graphdef, state, rest, currents, *, mesh, specs, current_spec, record, kwargs):
    def block(state, rest, currents):
        local = nnx.merge(graphdef, state, rest)
        # The block holds a slice of the neurons; the soma checks currents against its units.
        local.units = tuple(currents.shape[currents.ndim - len(local.units):])
        out = simulate(local, currents, record=record, **dict(kwargs))
        return out, nnx.state(local, SomaState)

    state_spec, rest_spec = (jax.tree.unflatten(treedef, leaves) for leaves, treedef in specs)
    model = nnx.merge(graphdef, state, rest)
    out_spec = jax.tree.map(lambda _: current_spec, output(model, {k: 0 for k in record}))
    # check_vma=False: a pallas_call's outputs do not declare how they vary
    # over the mesh; here every output is per block by construction.
    return jax.shard_map(block, mesh=mesh, in_specs=(state_spec, rest_spec, current_spec),
                         out_specs=(out_spec, state_spec), check_vma=False)(state, rest, currents)


def shard_batch(batch: T, mesh: Mesh, *, axis: Axis = DATA, dim: int = 0) -> T:
    """Splits dimension ``dim`` of every array in a pytree over ``axis``
    (data parallelism); the other dimensions are replicated.

    On several hosts every process passes the same global batch; a loader
    that reads only this host's share builds the global array with
    ``jax.make_array_from_process_local_data`` instead.
    """
    def place(path, x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        spec = partition_spec(x.shape, mesh, units_ndim=0, lead=dim, batch_axis=axis,
                              neuron_axis=None, name=f"batch{jax.tree_util.keystr(path)}")
        return jax.device_put(x, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map_with_path(place, batch)


def replicate(tree: T, mesh: Mesh) -> T:
    """Copies every array of a pytree, or of an NNX object (an ``nnx.Module``,
    an ``nnx.Optimizer``: in place), to every device of ``mesh``: the
    parameter layout of data parallelism. Returns what it was given."""
    everywhere = NamedSharding(mesh, PartitionSpec())
    if isinstance(tree, nnx.Pytree):
        _place_module(tree, lambda _, x: jax.device_put(x, everywhere))
        return tree
    return jax.device_put(tree, everywhere)


def collectives(fn: Callable[..., Any], *args: Any) -> collections.Counter[str]:
    """Counts the cross-device operations (all-gather, all-reduce, …) in the
    compiled program of ``fn(*args)``; ``args`` may hold ``nnx.Module``\\ s.

    An empty counter means every device computes on its own shard; for the
    elementwise soma dynamics under :func:`shard_soma` that is the expected
    result, for a data-parallel train step it is the gradient all-reduce.
    """
    graphdef, state = nnx.split(args)

    def pure(state):
        merged = nnx.merge(graphdef, state)
        return fn(*merged), nnx.state(merged)

    text = jax.jit(pure).lower(state).compile().as_text()
    return collections.Counter(m.group(1) for m in _COLLECTIVE.finditer(text))
