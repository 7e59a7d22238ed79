"""Fused time-loop kernels (Pallas) for the four somas, forward and BPTT.

Why: a ``lax.scan`` of an elementwise update launches a few kernels per time
step; on a GPU each step then costs ~15 µs of loop overhead whatever the
population size, so a layer of 10^3–10^5 neurons leaves the card idle
(measured: ~15–19 ms for T = 1000 at any N ≤ 2^20 on an H100). Here one kernel
runs the whole time loop for a block of neurons, keeps the state in
registers, streams the input current in and the spikes (and any recorded
state) out: its cost is the traffic of those arrays, not T launches.

**One generator, one set of equations.** The kernel bodies call the same pure
:func:`spark_somas.somas.step` that :func:`spark_somas.simulate`
scans (forward), and ``jax.vjp`` of it (backward), so all four models, every
surrogate, ``detach_reset`` and the numerics guarantees of
:mod:`spark_somas.numerics` (capped exponential, wide arithmetic, saturated
state and cotangents) are the scan's, by construction, for every model and
integration method. ``custom_jvp``/``custom_vjp`` calls and
nested ``jit``\\ s inside the step are inlined to plain primitives
(:func:`_inline`) because the Triton lowering has no rule for
``custom_vjp_call``; in the backward kernel ``jax.vjp`` has already applied
their derivative rules (the surrogate, ``widen``'s cotangent saturation).

**Layout.** Batch and unit axes are flattened to one neuron axis of
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
``simulate(..., backend="auto")``: the scan everywhere, until a run of the
kernel tests and ``benchmarks/fused.py`` on a GPU is recorded in
``benchmarks/README.md`` and shows the kernels winning there; then that
platform joins ``FUSED_BY_DEFAULT``. Until then the fused path is used only
when asked for by name, ``backend="fused"``.

**Limits.** Reverse mode only (``jax.custom_vjp``): ``jax.jvp`` through the
fused path is not defined; ``vmap`` and ``jit`` compose. The GPU path has
been checked to lower to Triton IR for CUDA (tests/test_fused.py), not yet
compiled or timed on a GPU: :func:`block_size` and ``num_warps`` are
untuned first guesses.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton
from jax.extend import core as jex_core

from spark_somas import somas

__all__ = ["BACKENDS", "FUSED_BY_DEFAULT", "resolve_backend", "run", "block_size"]

Array = jax.Array
BACKENDS = ("auto", "scan", "fused")
_INT_STATES = ("refractory",)


# Platforms where the fused kernels have been run, checked and timed faster
# than the scan (benchmarks/README.md): none yet, not even a GPU.
FUSED_BY_DEFAULT: tuple[str, ...] = ()


def resolve_backend(backend: str) -> str:
    """``"scan"`` or ``"fused"``: ``"auto"`` is fused only on a platform in
    ``FUSED_BY_DEFAULT`` (none yet), the scan elsewhere."""
    if backend not in BACKENDS:
        raise ValueError(f"backend = {backend!r} violates the rule: one of {BACKENDS}")
    if backend == "auto":
        return "fused" if jax.default_backend() in FUSED_BY_DEFAULT else "scan"
    return backend


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
class _Plan:
    model: type
    options: somas.StepOptions
    record: tuple[str, ...]
    steps: int
    segment: int
    block: int
    interpret: bool

    def step(self, inline: bool = True) -> Callable:
        """The step; inlined for the kernels' primal use, raw for ``jax.vjp``
        (inlining first would drop the surrogate, a custom_jvp rule)."""
        fn = functools.partial(somas.step, self.model, options=self.options)
        return _inline(fn) if inline else fn

    @property
    def checkpoints(self) -> int:
        return -(-self.steps // self.segment)

    def call(self, kernel: Callable, args: tuple, out_shape: Any) -> Any:
        """``pallas_call`` over the neuron blocks: a leading dimension of a
        block is the whole time (or checkpoint) axis, the last is B neurons."""

        def spec(x):
            shape = (*x.shape[:-1], self.block)
            return pl.BlockSpec(shape, lambda j, n=len(shape): (0,) * (n - 1) + (j,))

        neurons = jax.tree.leaves(args)[0].shape[-1]
        warps = max(1, min(4, self.block // 256))
        return pl.pallas_call(
            kernel,
            grid=(neurons // self.block,),
            in_specs=jax.tree.map(spec, args),
            out_specs=jax.tree.map(spec, out_shape),
            out_shape=out_shape,
            interpret=self.interpret,
            compiler_params=None if self.interpret else pl_triton.CompilerParams(
                num_warps=warps, num_stages=1),
            name="fused_soma",
        )(*args)


def _float_names(state: Mapping[str, Any]) -> list[str]:
    return [n for n in state if n not in _INT_STATES]


# Forward kernel.


def _forward(plan: _Plan, params: dict, state: dict, currents: Array, with_checkpoints: bool):
    steps, neurons = currents.shape
    dtype = state["potential"].dtype
    out_shape = {
        "final": {n: jax.ShapeDtypeStruct((neurons,), x.dtype) for n, x in state.items()},
        "record": {r: jax.ShapeDtypeStruct((steps, neurons), dtype if r == "spikes" else state[r].dtype)
                   for r in plan.record},
        "checkpoints": {n: jax.ShapeDtypeStruct((plan.checkpoints, neurons), x.dtype)
                        for n, x in state.items()} if with_checkpoints else {},
    }
    step = plan.step()
    k = plan.segment

    def kernel(p_refs, s_refs, i_ref, out):
        params_ = {n: r[...] for n, r in p_refs.items()}

        def body(t, carry):
            st, current = carry
            upcoming = i_ref[jnp.minimum(t + 1, steps - 1)]
            if with_checkpoints:
                def save():
                    for n, r in out["checkpoints"].items():
                        r[jax.lax.div(t, k)] = st[n]
                # lax.rem/div, not % and //: t ≥ 0, and Triton lowers
                # jnp.remainder's sign fix-up wrongly (i32 vs i1 operands).
                save() if k == 1 else pl.when(jax.lax.rem(t, k) == 0)(save)
            new, spikes = step(params_, st, current)
            values = {"spikes": spikes, **new}
            for r in plan.record:
                out["record"][r][t] = values[r]
            return new, upcoming

        final, _ = jax.lax.fori_loop(0, steps, body, ({n: r[...] for n, r in s_refs.items()}, i_ref[0]))
        for n, r in out["final"].items():
            r[...] = final[n]

    return plan.call(kernel, (params, state, currents), out_shape)


# Backward kernel.


def _backward(plan: _Plan, params: dict, checkpoints: dict, currents: Array, ct_final: dict,
              ct_record: dict):
    steps, neurons = currents.shape
    k, n_seg = plan.segment, plan.checkpoints
    floats = _float_names(checkpoints)
    step, raw_step = plan.step(), plan.step(inline=False)

    def step_floats(p, fs, ints, current):
        new, spikes = raw_step(p, {**fs, **ints}, current)
        return {n: new[n] for n in floats}, spikes

    def pullback(p, st, current, ct_new, ct_spikes):
        ints = {n: st[n] for n in st if n not in floats}
        _, vjp = jax.vjp(lambda p_, fs, i: step_floats(p_, fs, ints, i),
                         p, {n: st[n] for n in floats}, current)
        return vjp((ct_new, ct_spikes))

    pullback = _inline(pullback)
    out_shape = {
        "params": {n: jax.ShapeDtypeStruct((neurons,), x.dtype) for n, x in params.items()},
        "state": {n: jax.ShapeDtypeStruct((neurons,), checkpoints[n].dtype) for n in floats},
        "current": jax.ShapeDtypeStruct(currents.shape, currents.dtype),
        "scratch": {n: jax.ShapeDtypeStruct((k, neurons), x.dtype) for n, x in checkpoints.items()}
        if k > 1 else {},
    }
    spike_dtype = checkpoints["potential"].dtype

    def kernel(p_refs, c_refs, i_ref, ctf_refs, ctr_refs, out):
        params_ = {n: r[...] for n, r in p_refs.items()}

        def segment(j, carry):
            c = n_seg - 1 - j
            start = c * k
            length = jnp.minimum(k, steps - start)
            first = {n: r[c] for n, r in c_refs.items()}
            if k > 1:
                for n, r in out["scratch"].items():
                    r[0] = first[n]

                def recompute(i, st):
                    new, _ = step(params_, st, i_ref[start + i])
                    for n, r in out["scratch"].items():
                        r[i + 1] = new[n]
                    return new

                jax.lax.fori_loop(0, length - 1, recompute, first)

            def reverse(i, carry):
                ct, acc = carry
                local = length - 1 - i
                t = start + local
                st = first if k == 1 else {n: r[local] for n, r in out["scratch"].items()}
                ct_new = {n: ct[n] + ctr_refs[n][t] if n in ctr_refs else ct[n] for n in floats}
                ct_spikes = (ctr_refs["spikes"][t] if "spikes" in ctr_refs
                             else jnp.zeros_like(st["potential"], spike_dtype))
                d_params, d_state, d_current = pullback(params_, st, i_ref[t], ct_new, ct_spikes)
                out["current"][t] = d_current
                return d_state, {n: acc[n] + d_params[n] for n in acc}

            return jax.lax.fori_loop(0, length, reverse, carry)

        ct0 = {n: ctf_refs[n][...] for n in floats}
        acc0 = {n: jnp.zeros_like(v) for n, v in params_.items()}
        ct, acc = jax.lax.fori_loop(0, n_seg, segment, (ct0, acc0))
        for n, r in out["state"].items():
            r[...] = ct[n]
        for n, r in out["params"].items():
            r[...] = acc[n]

    res = plan.call(kernel, (params, checkpoints, currents, ct_final, ct_record), out_shape)
    return res["params"], res["state"], res["current"]


# custom_vjp over the flattened, padded arrays.


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(plan: _Plan, params: dict, state: dict, currents: Array):
    out = _forward(plan, params, state, currents, with_checkpoints=False)
    return out["final"], out["record"]


def _fused_fwd(plan, params, state, currents):
    out = _forward(plan, params, state, currents, with_checkpoints=True)
    return (out["final"], out["record"]), (params, out["checkpoints"], currents)


def _fused_bwd(plan, residuals, cts):
    params, checkpoints, currents = residuals
    ct_final, ct_record = cts
    floats = _float_names(checkpoints)
    ct_final = {n: ct_final[n] for n in floats}
    ct_record = {r: ct_record[r] for r in plan.record if r not in _INT_STATES}
    d_params, d_state, d_current = _backward(plan, params, checkpoints, currents, ct_final, ct_record)
    d_state = {n: d_state.get(n) for n in checkpoints}
    return d_params, d_state, d_current


_fused.defvjp(_fused_fwd, _fused_bwd)


@functools.partial(jax.jit, static_argnames=("model", "options", "record", "segment", "block",
                                             "interpret"))
def _run(params, state, currents, *, model, options, record, segment, block, interpret):
    steps = currents.shape[0]
    shape = state["potential"].shape
    neurons = math.prod(shape)
    padded = -(-neurons // block) * block

    def flat(x):
        return jnp.pad(x.reshape(-1), (0, padded - neurons), mode="edge")

    flat_params = {n: flat(jnp.broadcast_to(v, shape)) for n, v in params.items()}
    flat_state = {n: flat(v) for n, v in state.items()}
    flat_currents = jnp.pad(currents.reshape(steps, neurons), ((0, 0), (0, padded - neurons)))
    plan = _Plan(model=model, options=options, record=record, steps=steps,
                 segment=segment, block=block, interpret=interpret)
    final, recorded = _fused(plan, flat_params, flat_state, flat_currents)
    final = {n: v[:neurons].reshape(shape) for n, v in final.items()}
    recorded = {r: v[:, :neurons].reshape((steps,) + shape) for r, v in recorded.items()}
    return final, recorded


def run(
    model: type,
    params: Mapping[str, Array],
    state: Mapping[str, Array],
    currents: Array,
    options: "somas.StepOptions",
    *,
    record: Sequence[str] = ("spikes", "potential"),
    segment: int | None = None,
    block: int | None = None,
    interpret: bool | None = None,
) -> tuple[dict[str, Array], dict[str, Array]]:
    """T steps of :func:`~spark_somas.somas.step` in one fused kernel.

    Args:
      model: the soma class whose equations to run.
      params: config fields by name, each broadcastable to the state's shape.
      state: the initial state, all of shape ``(*batch, *units)``.
      currents: ``(T, *batch, *units)`` input current (pA).
      options: dt, method, surrogate and reset detachment, as for ``step``.
      record: outputs to return per step: "spikes" and state names.
      segment: K, steps between checkpoints for the backward pass (None: 1).
      block: neurons per program (a power of two); None picks
        :func:`block_size`.
      interpret: run the kernels interpreted; None: unless on a GPU.

    Returns:
      (final state, recorded outputs of shape ``(T, *batch, *units)``).
    """
    interpret = jax.default_backend() != "gpu" if interpret is None else bool(interpret)
    state = dict(state)
    shape = state["potential"].shape
    steps = currents.shape[0]
    missing = len(shape) - (currents.ndim - 1)  # batch axes the current lacks
    currents = jnp.broadcast_to(
        currents.reshape((steps,) + (1,) * missing + currents.shape[1:]), (steps,) + shape)
    if steps == 0 or math.prod(shape) == 0:
        return state, {r: jnp.zeros((steps,) + shape, state["potential"].dtype if r == "spikes"
                                    else state[r].dtype) for r in record}
    neurons = math.prod(shape)
    block = block_size(neurons, interpret) if block is None else int(block)
    if block <= 0 or block & (block - 1):
        raise ValueError(f"block = {block} violates the rule: a positive power of two")
    segment = 1 if segment is None else max(1, min(int(segment), steps))
    return _run(dict(params), state, currents, model=model, options=options,
                record=tuple(record), segment=segment, block=block, interpret=interpret)
