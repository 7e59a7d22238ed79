"""Fused time-loop kernels (Pallas) for the somas and whole networks, forward and BPTT.

Why: a ``lax.scan`` of an elementwise update launches a few kernels per time
step; on a GPU each step then costs ~15 µs of loop overhead whatever the
population size, so a layer of 10^3–10^5 neurons leaves the card idle
(measured: ~15–19 ms for T = 1000 at any N ≤ 2^20 on an H100). Here one kernel
runs the whole time loop for a block of neurons, keeps the state in
registers, streams the input current in and the spikes (and any recorded
state) out: its cost is the traffic of those arrays, not T launches.

**One generator, one set of equations.** One engine builds the kernels for
any pure step ``(shared, local, state, x_t) -> (state, y_t)``, and its two
users hand it the steps that the scan runs: :func:`run` the soma's
:func:`spark_somas.models.protocol.step`, :func:`run_module` an NNX module's step
(a whole :class:`~spark_somas.training.network.SpikingNetwork` time step: Linear →
soma → recurrent Linear → synapse → readout). The kernel bodies call that
step (forward) and ``jax.vjp`` of it (backward), so the models, every
surrogate, the gradient switches, every integration method and the numerics
guarantees of :mod:`spark_somas.dynamics.numerics` (capped exponential, wide
arithmetic, saturated state and cotangents) are the scan's, by construction.
``custom_jvp``/``custom_vjp`` calls and
nested ``jit``\\ s inside the step are inlined to plain primitives
(:func:`_inline`) because the Triton lowering has no rule for
``custom_vjp_call``; in the backward kernel ``jax.vjp`` has already applied
their derivative rules (the surrogate, ``widen``'s cotangent saturation).

**Partition.** A program owns a block of rows of one axis for the whole run
— the rows never interact within a step — and loops over t inside:
:func:`run` partitions the neurons (a soma's step is elementwise),
:func:`run_module` the samples (a network mixes its neurons through its
weights, never its samples); the weights and other "shared" operands are
whole in every program, and their gradients are accumulated per program and
summed after the kernel.

**Layout of a soma.** Batch and unit axes are flattened to one neuron axis of
M = ∏ ``(*batch, *units)`` neurons, padded (edge values, zero current) to a
multiple of the block B; parameters are broadcast to that axis (per-neuron
parameter gradients are summed back by JAX's transpose of the broadcast).
Program j owns neurons [jB, (j+1)B) for the whole run: ``fori_loop`` over t
inside the kernel, reading row t of the (T, M) current (the next row is
loaded one step ahead so its latency overlaps the update) and writing row t
of every recorded output.

**Backward: checkpoints, recomputed per segment.** When differentiated, the
forward kernel also stores the state before every K-th step (checkpoints,
⌈T/K⌉ rows per state). A ``jax.custom_vjp`` runs a backward kernel that walks
the segments in reverse: it recomputes the K pre-step states of a segment
from its checkpoint into a (K, M) scratch, then runs the reverse time loop
through them, applying the VJP of the step; the state cotangents and the
per-neuron parameter cotangents stay in registers, the current's cotangent
is written per step. K follows ``simulate``'s ``remat``: ``False`` → K = 1
(the checkpoints are the full pre-step state trace, read back with no
recompute), ``True`` → K = ⌈√T⌉, an int k → K = k. Why saved states and not a
reversed integration: the reset V ← V_r destroys information and Euler run
backwards amplifies rounding, so the exact pre-step states, which gradients
equal to the scan's need, must be stored or recomputed from stored ones.

**Memory** (S float states + the int32 counter, 4 bytes each in float32):
the forward keeps ⌈T/K⌉·Σ bytes(state)·M of checkpoints for the backward,
plus the recorded outputs; the backward adds K·Σ bytes(state)·M of scratch
and writes the current's cotangent (T·M). AdEx, float32, K = 1: 8 bytes per
neuron per step, as much as the spikes and potential it records.

**Backends.** On a GPU the kernels compile through Pallas' Triton lowering;
elsewhere they run with ``interpret=True`` (the kernel body as XLA loops:
correct, not fast). :func:`resolve_backend` implements
``simulate(..., backend="auto")``: the scan everywhere, until the kernels
have been checked and timed faster than the scan on a platform's hardware;
then that platform joins ``FUSED_BY_DEFAULT``. Until then the fused path is used only
when asked for by name, ``backend="fused"``.

**Limits.** Reverse mode only (``jax.custom_vjp``): ``jax.jvp`` through the
fused path is not defined; ``vmap`` and ``jit`` compose. The GPU path has
been checked to lower to Triton IR for CUDA, not yet
compiled or timed on a GPU: :func:`block_size`, the 16-sample block of
:func:`run_module` and ``num_warps`` are untuned first guesses. On a GPU
every dimension of a module's operands but time and the batch must be a
power of two (Triton's rule for a loaded tensor; refused by name otherwise),
and a weight matrix is held whole by each program, so wide layers are
bounded by its registers and shared memory.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton
from jax.extend import core as jex_core

from spark_somas.models import protocol
from spark_somas.simulation.backends import BACKENDS, FUSED_BY_DEFAULT, FusedBackendError, resolve_backend
from spark_somas.errors import RuleError, require, require_shape, violation

# BACKENDS, FUSED_BY_DEFAULT, FusedBackendError and resolve_backend are
# spark_somas.simulation.backends' (documented there), imported here for this module's checks.
__all__ = ["run", "run_module", "block_size"]

Array = jax.Array


def block_size(neurons: int, interpret: bool) -> int:
    """Neurons per program: a power of two (Triton's rule for loaded tensors).

    On a GPU, aim for ≥ 512 programs so that every SM holds several warps
    (latency hiding), within [32, 1024]; interpreted, one large block (the
    grid runs sequentially there, so fewer programs is faster).
    """
    if interpret:
        return min(1 << max(neurons - 1, 1).bit_length(), 1 << 16)
    target = max(neurons // 512, 1)
    return min(max(1 << (target.bit_length() - 1), 32), 1024)


# Inlining custom derivative rules and nested jits (Triton has no rule for
# custom_vjp_call).

_INLINED = {
    jex_core.primitives.custom_jvp_call_p: "call_jaxpr",
    jex_core.primitives.custom_vjp_call_p: "call_jaxpr",
    jex_core.primitives.jit_p: "jaxpr",
    jex_core.primitives.closed_call_p: "call_jaxpr",
}


def _eval_inlined(jaxpr: jex_core.Jaxpr, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
    env: dict[Any, Any] = {}

    def read(v):
        return v.val if isinstance(v, jex_core.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        key = _INLINED.get(eqn.primitive)
        if key is not None:
            sub = eqn.params[key]
            sub_jaxpr, sub_consts = (sub.jaxpr, sub.consts) if hasattr(sub, "consts") else (sub, ())
            outs = _eval_inlined(sub_jaxpr, sub_consts, invals)
        else:
            outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            outs = outs if eqn.primitive.multiple_results else [outs]
        for v, x in zip(eqn.outvars, outs):
            if not isinstance(v, jex_core.DropVar):
                env[v] = x
    return [read(v) for v in jaxpr.outvars]


def _inline(fn: Callable) -> Callable:
    """``fn`` re-emitted with custom_jvp/custom_vjp calls and nested jits
    replaced by their bodies: same values, plain primitives only."""

    def wrapped(*args):
        closed, shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        outs = _eval_inlined(closed.jaxpr, closed.consts, jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(shape), outs)

    return wrapped


# The plan: everything static about one fused run.


@dataclasses.dataclass(frozen=True)
class _SomaStep:
    """A soma's step in the engine's form: no shared operands, per-neuron
    parameters, the current as input, the recorded fields as output."""

    model: type
    options: protocol.StepOptions
    record: tuple[str, ...]

    def __call__(self, shared: Any, local: dict, state: dict, current: Array):
        new, spikes = protocol.step(self.model, local, state, current, self.options)
        values = {"spikes": spikes, **new}
        return new, {r: values[r] for r in self.record}


@dataclasses.dataclass(frozen=True)
class _ModuleStep:
    """``step(module, x_t)`` of an NNX module in the engine's form: the
    module's other Variables shared by every program, its ``SomaState``
    Variables the carry."""

    graphdef: Any
    step: Callable

    def __call__(self, shared: Any, local: Any, state: Any, x: Any):
        module = nnx.merge(self.graphdef, state, shared)
        y = self.step(module, x)
        return nnx.state(module, protocol.SomaState), y


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A fused run: ``step(shared, local, state, x_t) -> (state, y_t)`` on
    pytrees (``trees``: the structures of its four arguments), T steps,
    checkpoints every ``segment`` steps, ``block`` rows of the partitioned
    axis per program."""

    step: Callable
    trees: tuple
    steps: int
    segment: int
    block: int
    interpret: bool

    def flat_step(self, inline: bool = True) -> Callable:
        """The step on leaf lists; inlined for the kernels' primal use, raw
        for ``jax.vjp`` (inlining first would drop the surrogate, a
        custom_jvp rule)."""

        def fn(shared, local, state, x):
            new, y = self.step(*(jax.tree.unflatten(t, leaves)
                                 for t, leaves in zip(self.trees, (shared, local, state, x))))
            new, tree = jax.tree.flatten(new)
            if tree != self.trees[2]:
                raise FusedBackendError(
                    f"the step returns a state of structure {tree}, not its carry's "
                    f"{self.trees[2]}")
            return new, jax.tree.leaves(y)

        return _inline(fn) if inline else fn

    @property
    def checkpoints(self) -> int:
        return -(-self.steps // self.segment)

    def call(self, kernel: Callable, rows: int, args: dict, kinds: dict, out_shape: dict,
             out_kinds: dict) -> dict:
        """``pallas_call`` over ``rows // block`` programs. Each group of
        operands (lists of arrays) is laid out by its kind: "shared" (whole,
        in every program), "rows" (the partitioned axis first), "time" (a
        time or checkpoint axis, then the partitioned axis) or "program"
        (outputs only: one slice per program)."""
        programs = rows // self.block

        def spec(kind, shape):
            tail = tuple(shape[{"shared": 0, "rows": 1, "time": 2, "program": 0}[kind]:])
            zeros = (0,) * len(tail)
            if kind == "shared":
                return pl.BlockSpec(tail, lambda j: zeros)
            if kind == "rows":
                return pl.BlockSpec((self.block,) + tail, lambda j: (j,) + zeros)
            if kind == "time":
                return pl.BlockSpec((shape[0], self.block) + tail, lambda j: (0, j) + zeros)
            return pl.BlockSpec((None,) + tail, lambda j: (j,) + zeros)

        out_shape = {k: [jax.ShapeDtypeStruct(
            ((programs,) if out_kinds[k] == "program" else ()) + s.shape, s.dtype) for s in v]
            for k, v in out_shape.items()}
        warps = max(1, min(4, self.block // 256))
        return pl.pallas_call(
            kernel,
            grid=(programs,),
            in_specs=[{k: [spec(kinds[k], x.shape) for x in v] for k, v in args.items()}],
            out_specs={k: [spec(out_kinds[k], s.shape[1:] if out_kinds[k] == "program"
                                else s.shape) for s in v] for k, v in out_shape.items()},
            out_shape=out_shape,
            interpret=self.interpret,
            compiler_params=None if self.interpret else pl_triton.CompilerParams(
                num_warps=warps, num_stages=1),
            name="fused_loop",
        )(args)


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(x.dtype, jnp.inexact)


def _pick(values: Sequence[Any], mask: Sequence[bool]) -> list:
    return [v for v, m in zip(values, mask) if m]


def _fill(values: Sequence[Any], mask: Sequence[bool], picked: Sequence[Any]) -> list:
    """``values`` with the masked positions replaced, in order, by ``picked``."""
    picked = iter(picked)
    return [next(picked) if m else v for v, m in zip(values, mask)]


_ARGS = {"shared": "shared", "local": "rows", "state": "rows", "x": "time"}


# Forward kernel.


def _forward(plan: _Plan, shared: list, local: list, state: list, xs: list,
             with_checkpoints: bool) -> dict:
    steps, rows = xs[0].shape[:2]
    _, y_shapes = jax.eval_shape(plan.flat_step(inline=False), shared, local, state,
                                 [x[0] for x in xs])
    out_shape = {
        "final": [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in state],
        "record": [jax.ShapeDtypeStruct((steps,) + y.shape, y.dtype) for y in y_shapes],
        "checkpoints": [jax.ShapeDtypeStruct((plan.checkpoints,) + x.shape, x.dtype)
                        for x in state] if with_checkpoints else [],
    }
    step, k = plan.flat_step(), plan.segment

    def kernel(refs, out):
        shared_, local_ = [r[...] for r in refs["shared"]], [r[...] for r in refs["local"]]

        def body(t, carry):
            st, x = carry
            upcoming = [r[jnp.minimum(t + 1, steps - 1)] for r in refs["x"]]
            if with_checkpoints:
                def save():
                    for r, v in zip(out["checkpoints"], st):
                        r[jax.lax.div(t, k)] = v
                # lax.rem/div, not % and //: t ≥ 0, and Triton lowers
                # jnp.remainder's sign fix-up wrongly (i32 vs i1 operands).
                save() if k == 1 else pl.when(jax.lax.rem(t, k) == 0)(save)
            new, y = step(shared_, local_, st, x)
            for r, v in zip(out["record"], y):
                r[t] = v
            return new, upcoming

        final, _ = jax.lax.fori_loop(
            0, steps, body, ([r[...] for r in refs["state"]], [r[0] for r in refs["x"]]))
        for r, v in zip(out["final"], final):
            r[...] = v

    args = {"shared": shared, "local": local, "state": state, "x": xs}
    return plan.call(kernel, rows, args, _ARGS, out_shape,
                     {"final": "rows", "record": "time", "checkpoints": "time"})


# Backward kernel.


def _backward(plan: _Plan, shared: list, local: list, checkpoints: list, xs: list,
              ct_final: list, ct_record: list) -> dict:
    """Cotangents of the float operands: "shared" per program, "local",
    "state" (the initial state's) and "x" (per step)."""
    steps, rows = xs[0].shape[:2]
    k, n_seg = plan.segment, plan.checkpoints
    masks = [[_is_float(v) for v in group] for group in (shared, local, checkpoints, xs)]
    step, raw_step = plan.flat_step(), plan.flat_step(inline=False)

    def pullback(shared_, local_, st, x, ct_new, ct_y):
        def floats_only(*picked):
            new, y = raw_step(*(_fill(full, m, p) for full, m, p in
                                zip((shared_, local_, st, x), masks, picked)))
            return _pick(new, masks[2]), [v for v, c in zip(y, ct_y) if c is not None]

        _, vjp = jax.vjp(floats_only, *(_pick(v, m) for v, m in
                                       zip((shared_, local_, st, x), masks)))
        return vjp((ct_new, [c for c in ct_y if c is not None]))

    pullback = _inline(pullback)
    out_shape = {
        "shared": [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in _pick(shared, masks[0])],
        "local": [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in _pick(local, masks[1])],
        "state": [jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for v in _pick(checkpoints, masks[2])],
        "x": [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in _pick(xs, masks[3])],
        "scratch": [jax.ShapeDtypeStruct((k,) + v.shape[1:], v.dtype) for v in checkpoints]
        if k > 1 else [],
    }
    recorded = [c is not None for c in ct_record]

    def kernel(refs, out):
        shared_, local_ = [r[...] for r in refs["shared"]], [r[...] for r in refs["local"]]

        def segment(j, carry):
            c = n_seg - 1 - j
            start = c * k
            length = jnp.minimum(k, steps - start)
            first = [r[c] for r in refs["checkpoints"]]
            if k > 1:
                for r, v in zip(out["scratch"], first):
                    r[0] = v

                def recompute(i, st):
                    new, _ = step(shared_, local_, st, [r[start + i] for r in refs["x"]])
                    for r, v in zip(out["scratch"], new):
                        r[i + 1] = v
                    return new

                jax.lax.fori_loop(0, length - 1, recompute, first)

            def reverse(i, carry):
                ct, acc_shared, acc_local = carry
                offset = length - 1 - i
                t = start + offset
                st = first if k == 1 else [r[offset] for r in out["scratch"]]
                ct_y = iter(refs["ct_record"])
                ct_y = [next(ct_y)[t] if m else None for m in recorded]
                d_shared, d_local, d_state, d_x = pullback(
                    shared_, local_, st, [r[t] for r in refs["x"]], ct, ct_y)
                for r, v in zip(out["x"], d_x):
                    r[t] = v
                return (d_state, [a + d for a, d in zip(acc_shared, d_shared)],
                        [a + d for a, d in zip(acc_local, d_local)])

            return jax.lax.fori_loop(0, length, reverse, carry)

        zeros = [[jnp.zeros_like(v) for v in _pick(group, m)]
                 for group, m in ((shared_, masks[0]), (local_, masks[1]))]
        ct, acc_shared, acc_local = jax.lax.fori_loop(
            0, n_seg, segment, ([r[...] for r in refs["ct_final"]], *zeros))
        for name, values in (("state", ct), ("shared", acc_shared), ("local", acc_local)):
            for r, v in zip(out[name], values):
                r[...] = v

    args = {"shared": shared, "local": local, "checkpoints": checkpoints, "x": xs,
            "ct_final": ct_final, "ct_record": [c for c in ct_record if c is not None]}
    kinds = {**_ARGS, "checkpoints": "time", "ct_final": "rows", "ct_record": "time"}
    return plan.call(kernel, rows, args, kinds, out_shape,
                     {"shared": "program", "local": "rows", "state": "rows", "x": "time",
                      "scratch": "time"})


# custom_vjp over leaf lists, the partitioned axis padded to whole blocks.


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(plan: _Plan, shared: list, local: list, state: list, xs: list):
    out = _forward(plan, shared, local, state, xs, with_checkpoints=False)
    return out["final"], out["record"]


def _fused_fwd(plan, shared, local, state, xs):
    out = _forward(plan, shared, local, state, xs, with_checkpoints=True)
    return (out["final"], out["record"]), (shared, local, out["checkpoints"], xs)


def _zero_cotangent(x: Array) -> Any:
    return np.zeros(x.shape, jax.dtypes.float0)


def _fused_bwd(plan, residuals, cts):
    shared, local, checkpoints, xs = residuals
    ct_final, ct_record = cts
    float_state = [_is_float(c) for c in checkpoints]
    grads = _backward(plan, shared, local, checkpoints, xs, _pick(ct_final, float_state),
                      [c if _is_float(c) else None for c in ct_record])
    grads["shared"] = [g.sum(axis=0) for g in grads["shared"]]
    initial = [c[0] for c in checkpoints]
    return tuple(
        _fill([_zero_cotangent(v) for v in group], [_is_float(v) for v in group], grads[name])
        for name, group in (("shared", shared), ("local", local), ("state", initial), ("x", xs)))


_fused.defvjp(_fused_fwd, _fused_bwd)


def _pad_rows(x: Array, rows: int, axis: int, mode: str) -> Array:
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, rows - x.shape[axis])
    return jnp.pad(x, widths, mode=mode) if rows != x.shape[axis] else x


def _engine(step: Callable, shared: Any, local: Any, state: Any, xs: Any, *, segment: int,
            block: int, interpret: bool) -> tuple[Any, Any]:
    """T steps of ``step(shared, local, state, x_t) -> (state, y_t)`` fused:
    ``local`` and ``state`` leaves are ``(P, ...)``, ``xs`` leaves ``(T, P, ...)``,
    partitioned into blocks of ``block`` rows (padded: edge values, zero
    inputs). Returns (final state, y stacked over time), unpadded."""
    leaves = [jax.tree.flatten(t) for t in (shared, local, state, xs)]
    steps, rows = jax.tree.leaves(xs)[0].shape[:2]
    padded = -(-rows // block) * block
    flat_local, flat_state = ([_pad_rows(v, padded, 0, "edge") for v in group[0]]
                              for group in leaves[1:3])
    flat_xs = [_pad_rows(v, padded, 1, "constant") for v in leaves[3][0]]
    plan = _Plan(step=step, trees=tuple(t for _, t in leaves), steps=steps, segment=segment,
                 block=block, interpret=interpret)
    x0 = jax.tree.unflatten(leaves[3][1], [x[0] for x in leaves[3][0]])
    y_tree = jax.tree.structure(jax.eval_shape(step, shared, local, state, x0)[1])
    final, record = _fused(plan, leaves[0][0], flat_local, flat_state, flat_xs)
    return (jax.tree.unflatten(leaves[2][1], [v[:rows] for v in final]),
            jax.tree.unflatten(y_tree, [v[:, :rows] for v in record]))


@functools.partial(jax.jit, static_argnames=("model", "options", "record", "segment", "block",
                                             "interpret"))
def _run(params, state, currents, *, model, options, record, segment, block, interpret):
    steps = currents.shape[0]
    shape = state[model.membrane].shape
    neurons = math.prod(shape)
    flat_params = {n: jnp.broadcast_to(v, shape).reshape(-1) for n, v in params.items()}
    flat_state = {n: v.reshape(-1) for n, v in state.items()}
    final, recorded = _engine(_SomaStep(model, options, record), {}, flat_params, flat_state,
                              currents.reshape(steps, neurons), segment=segment, block=block,
                              interpret=interpret)
    return ({n: v.reshape(shape) for n, v in final.items()},
            {r: v.reshape((steps,) + shape) for r, v in recorded.items()})


@functools.partial(jax.jit, static_argnames=("graphdef", "step", "segment", "block", "interpret"))
def _run_module(state, rest, inputs, *, graphdef, step, segment, block, interpret):
    # The checks run when this is traced (once per shape), before any kernel.
    steps, rows = jax.tree.leaves(inputs)[0].shape[:2]
    _check_rows("state", state, 0, rows)
    _check_rows("inputs", inputs, 1, rows)
    module_step = _ModuleStep(graphdef, step)
    traced, (_, outputs) = jax.make_jaxpr(module_step, return_shape=True)(
        rest, [], state, jax.tree.map(lambda x: x[0], inputs))
    _check_rows("step output", outputs, 0, rows)
    if traced.consts:
        raise FusedBackendError(violation(
            f"the step captures constant arrays of shapes {[c.shape for c in traced.consts]}, "
            f"which", "a kernel takes its operands as inputs; hold them in the module's "
            "Variables (or use backend = 'scan')"))
    if not interpret:
        for what, tree, batch_axes in (("state", state, 1), ("inputs", inputs, 2),
                                       ("module", rest, 0)):
            _check_triton_shapes(what, tree, batch_axes)
    if steps == 0:
        return state, jax.tree.map(lambda y: jnp.zeros((0,) + y.shape, y.dtype), outputs)
    return _engine(module_step, rest, [], state, inputs, segment=segment, block=block,
                   interpret=interpret)


def _check_rows(what: str, tree: Any, axis: int, rows: int) -> None:
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        require_shape(
            x.ndim > axis and x.shape[axis] == rows, f"{what}{jax.tree_util.keystr(path)}",
            x.shape, f"the fused backend partitions a batch of {rows} (axis 1 of the inputs), "
            f"so it needs axis {axis} of that length: inputs (T, B, ...), state and step "
            f"outputs (B, ...); use backend = 'scan'", error=FusedBackendError)


def run_module(
    graphdef: Any,
    state: Any,
    rest: Any,
    inputs: Any,
    step: Callable,
    *,
    segment: int | None = None,
    block: int | None = None,
    interpret: bool | None = None,
) -> tuple[Any, Any]:
    """T calls of ``step(module, x_t)`` in one fused kernel, partitioned over the batch.

    The module is ``nnx.merge(graphdef, state, rest)``: ``state`` its
    ``SomaState`` Variables (the carry; every leaf ``(B, ...)``), ``rest``
    the others (weights, parameters; whole in every program, their
    gradients summed over the programs). Samples never interact in a step,
    so each program runs the whole time loop of ``block`` samples.

    Args:
      inputs: pytree of ``(T, B, ...)`` arrays.
      segment: K, steps between checkpoints for the backward pass (None: 1).
      block: samples per program (a power of two); None: one block of the
        whole batch interpreted, 16 on a GPU (Triton's smallest matrix
        product).
      interpret: run the kernels interpreted; None: unless on a GPU.

    Returns:
      (final state, ``step``'s outputs stacked over time, ``(T, B, ...)``).

    Raises:
      spark_somas.simulation.backends.FusedBackendError: a state leaf, input or output
        without the batch axis.
    """
    interpret = _interpret(interpret)
    steps, rows = jax.tree.leaves(inputs)[0].shape[:2]
    block = _block(block, block_size(rows, True) if interpret else 16)
    return _run_module(state, rest, inputs, graphdef=graphdef, step=step,
                       segment=_segment(segment, steps), block=block, interpret=interpret)


def _check_triton_shapes(what: str, tree: Any, batch_axes: int) -> None:
    """Triton loads tensors whose every dimension is a power of two: so
    must be each weight and layer width (the batch axis is padded)."""
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        powers = not any(d & (d - 1) for d in x.shape[batch_axes:])
        require_shape(
            powers, f"{what}{jax.tree_util.keystr(path)}", x.shape, "on a GPU the fused "
            "backend needs every dimension but time and the batch to be a power of two "
            "(Triton's rule for a loaded tensor); use backend = 'scan'", error=FusedBackendError)


def _interpret(interpret: bool | None) -> bool:
    """None: interpreted unless on a GPU."""
    return jax.default_backend() != "gpu" if interpret is None else bool(interpret)


def _block(block: int | None, default: int) -> int:
    block = default if block is None else int(block)
    require(block > 0 and not block & (block - 1), "block", block, "a positive power of two",
            error=RuleError)
    return block


def _segment(segment: int | None, steps: int) -> int:
    return 1 if segment is None else max(1, min(int(segment), steps))


def run(
    model: type,
    params: Mapping[str, Array],
    state: Mapping[str, Array],
    currents: Array,
    options: "protocol.StepOptions",
    *,
    record: Sequence[str] = ("spikes", "potential"),
    segment: int | None = None,
    block: int | None = None,
    interpret: bool | None = None,
) -> tuple[dict[str, Array], dict[str, Array]]:
    """T steps of :func:`~spark_somas.models.protocol.step` in one fused kernel,
    partitioned over the neurons (batch and units flattened).

    Args:
      model: the soma class whose equations to run.
      params: config fields by name, each broadcastable to the state's shape.
      state: the initial state, all of shape ``(*batch, *units)``.
      currents: ``(T, *batch, *units)`` input current (pA).
      options: dt, method, surrogate and gradient switches, as for ``step``.
      record: outputs to return per step: "spikes" and state names.
      segment: K, steps between checkpoints for the backward pass (None: 1).
      block: neurons per program (a power of two); None picks
        :func:`block_size`.
      interpret: run the kernels interpreted; None: unless on a GPU.

    Returns:
      (final state, recorded outputs of shape ``(T, *batch, *units)``).
    """
    interpret = _interpret(interpret)
    state = dict(state)
    shape = state[model.membrane].shape
    steps = currents.shape[0]
    missing = len(shape) - (currents.ndim - 1)  # batch axes the current lacks
    currents = jnp.broadcast_to(
        currents.reshape((steps,) + (1,) * missing + currents.shape[1:]), (steps,) + shape)
    if steps == 0 or math.prod(shape) == 0:
        return state, {r: jnp.zeros((steps,) + shape, state[model.membrane].dtype if r == "spikes"
                                    else state[r].dtype) for r in record}
    neurons = math.prod(shape)
    block = _block(block, block_size(neurons, interpret))
    return _run(dict(params), state, currents, model=model, options=options,
                record=tuple(record), segment=_segment(segment, steps), block=block,
                interpret=interpret)
