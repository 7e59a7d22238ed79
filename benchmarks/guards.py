"""What the numerics guards cost: ``simulate`` against the same loop in plain JAX.

The baseline is the forward-Euler AdEx step written inline in plain JAX, the
way a user would write it by hand: the exponent clamped at
(V_th − V_T)/Δ_T, a hard reset detached from the gradient and the
adaptation jump w ← w + b·s not (the library's default gradient switches,
so both sides compute the same gradient), the fast-sigmoid surrogate
(slope 1/mV) for the spike, parameters passed as arrays. It has
none of the library's guards (saturated state and input, overflow-proof
exponential, compensated half precision), which is the point: the ratio
library/baseline is what the guards and the NNX plumbing cost.

Three measurements, each side by side in one process, interleaved repeats,
least time kept (``_common.best_times``):

* ``forward``: ``simulate`` recording spikes and potential vs the plain scan.
* ``bptt``: ``jax.grad`` of a loss with respect to the input currents,
  through ``simulate`` vs the plain scan, for two losses: ``spikes``
  (Σ s, the spikes alone: what a rate or count loss reads) and
  ``spikes_potential`` (Σ s + 10^-3·Σ V, the potential too). Columns
  ``bptt_ratio`` and ``bptt_spikes_ratio``.
* ``train_step``: one Adam step of a 100 → 128 AdEx → 10 network (input
  Linear, soma layer through ``simulate``, Linear readout of the spike
  counts, cross-entropy) built from ``nnx.Linear`` + ``simulate`` +
  ``nnx.Optimizer``, vs the same network in plain JAX + optax.

Shapes: ``small`` is the training shape (T = 100, batch 64, 128 neurons,
dt = 1 ms), ``large`` is T = 1000, 10^4 neurons (batch 1, dt = 0.1 ms).
Targets: forward ≤ 1.1, BPTT ≤ 1.15, train step ≤ 1.15.

    python benchmarks/guards.py [--repeats 20] [--out benchmarks/guards.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import spark_somas as ss  # noqa: E402

FIELDS = ("potential_rest", "potential_reset", "potential_tau", "resistance", "threshold",
          "rheobase_threshold", "spike_slope", "adaptation_tau", "adaptation_delta",
          "adaptation_subthreshold")


@jax.custom_jvp
def plain_spike(x):
    return (x > 0).astype(x.dtype)


@plain_spike.defjvp
def _plain_spike_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return plain_spike(x), dx / jnp.square(1.0 + jnp.abs(x))


def plain_adex_step(p, dt, carry, current):
    """One AdEx Euler step: integrate, detect, detached hard reset."""
    v, w = carry
    u = jnp.minimum((v - p["rheobase_threshold"]) / p["spike_slope"],
                    (p["threshold"] - p["rheobase_threshold"]) / p["spike_slope"])
    v_new = v + dt / p["potential_tau"] * (
        -(v - p["potential_rest"]) + p["spike_slope"] * jnp.exp(u)
        - p["resistance"] * w + p["resistance"] * current)
    w_new = w + dt / p["adaptation_tau"] * (p["adaptation_subthreshold"] * (v - p["potential_rest"]) - w)
    s = plain_spike(v_new - p["threshold"])
    r = jax.lax.stop_gradient(s)
    v_new = v_new * (1.0 - r) + p["potential_reset"] * r
    w_new = w_new + p["adaptation_delta"] * s
    return (v_new, w_new), (s, v_new)


def plain_run(p, dt, currents):
    rest = jnp.full(currents.shape[1:], p["potential_rest"], currents.dtype)
    carry = (rest, jnp.zeros_like(rest))
    _, (spikes, potential) = jax.lax.scan(lambda c, i: plain_adex_step(p, dt, c, i), carry, currents)
    return spikes, potential


def loss_of(spikes, potential):
    """Σ s + 10^-3·Σ V (V in mV): the spikes and the potential."""
    return jnp.sum(spikes) + 1e-3 * jnp.sum(potential)


def spikes_loss(spikes, potential):
    """Σ s: the spikes alone."""
    return jnp.sum(spikes)


LOSSES = {"spikes_potential": loss_of, "spikes": spikes_loss}


def currents_for(shape, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return (600.0 + 400.0 * jax.random.uniform(k1, shape[1:])
            + 100.0 * jax.random.normal(k2, shape)).astype(jnp.float32)


def measure_loop(name, steps, batch, units, dt, repeats):
    shape = (steps,) + ((batch,) if batch else ()) + (units,)
    currents = currents_for(shape)
    soma = ss.AdaptiveExponentialSoma(units=units, dt=dt)
    params = {k: jnp.asarray(v) for k, v in soma.parameters().items() if k in FIELDS}
    graphdef, state = nnx.split(soma)

    @jax.jit
    def lib_forward(state, currents):
        soma = nnx.merge(graphdef, state)
        rec = ss.simulate(soma, currents)
        return rec.spikes, rec.potential

    @jax.jit
    def plain_forward(params, currents):
        return plain_run(params, dt, currents)

    lib_grad = {loss: jax.jit(jax.grad(lambda s, c, f=f: f(*lib_forward(s, c)), argnums=1))
                for loss, f in LOSSES.items()}
    plain_grad = {loss: jax.jit(jax.grad(lambda p, c, f=f: f(*plain_forward(p, c)), argnums=1))
                  for loss, f in LOSSES.items()}

    lib_s, _ = lib_forward(state, currents)
    plain_s, _ = plain_forward(params, currents)
    grad_diff = {}
    for loss in LOSSES:
        g_lib, g_plain = lib_grad[loss](state, currents), plain_grad[loss](params, currents)
        grad_diff[loss] = float(jnp.linalg.norm(g_lib - g_plain) / jnp.linalg.norm(g_plain))
    # Forward and backward are timed in separate rounds: interleaved with the
    # backward passes' large allocations, whichever forward runs first after
    # one pays for the cold cache.
    t = {**_common.best_times({"library_forward": lambda: lib_forward(state, currents),
                               "plain_forward": lambda: plain_forward(params, currents)}, repeats),
         **_common.best_times({"library_bptt": lambda: lib_grad["spikes_potential"](state, currents),
                               "plain_bptt": lambda: plain_grad["spikes_potential"](params, currents)},
                              repeats),
         **_common.best_times({"library_bptt_spikes": lambda: lib_grad["spikes"](state, currents),
                               "plain_bptt_spikes": lambda: plain_grad["spikes"](params, currents)},
                              repeats)}
    return {
        "shape": name, "T": steps, "batch": batch, "N": units, "dt": dt, "repeats": repeats,
        **{f"{k}_wall_s": v["wall_s"] for k, v in t.items()},
        **{f"{k}_cpu_s": v["cpu_s"] for k, v in t.items()},
        "forward_ratio": t["library_forward"]["wall_s"] / t["plain_forward"]["wall_s"],
        "forward_ratio_cpu": t["library_forward"]["cpu_s"] / t["plain_forward"]["cpu_s"],
        "bptt_ratio": t["library_bptt"]["wall_s"] / t["plain_bptt"]["wall_s"],
        "bptt_ratio_cpu": t["library_bptt"]["cpu_s"] / t["plain_bptt"]["cpu_s"],
        "bptt_spikes_ratio": t["library_bptt_spikes"]["wall_s"] / t["plain_bptt_spikes"]["wall_s"],
        "bptt_spikes_ratio_cpu": (t["library_bptt_spikes"]["cpu_s"]
                                  / t["plain_bptt_spikes"]["cpu_s"]),
        "spike_entries_equal": float(np.mean(np.asarray(lib_s) == np.asarray(plain_s))),
        "grad_rel_diff": grad_diff["spikes_potential"],
        "grad_rel_diff_spikes": grad_diff["spikes"],
    }


class LibraryNetwork(nnx.Module):
    def __init__(self, inputs, hidden, classes, dt, rngs):
        self.encoder = nnx.Linear(inputs, hidden, rngs=rngs)
        self.soma = ss.AdaptiveExponentialSoma(units=hidden, dt=dt)
        self.readout = nnx.Linear(hidden, classes, rngs=rngs)

    def __call__(self, x):  # x: (T, batch, inputs)
        self.soma.reset((x.shape[1],))
        rec = ss.simulate(self.soma, 1000.0 * self.encoder(x))
        return self.readout(rec.spikes.mean(0))


def measure_train_step(steps, batch, inputs, hidden, classes, dt, repeats):
    x = jax.random.uniform(jax.random.key(1), (steps, batch, inputs))
    labels = jax.random.randint(jax.random.key(2), (batch,), 0, classes)
    net = LibraryNetwork(inputs, hidden, classes, dt, nnx.Rngs(0))
    tx = optax.adam(1e-3)
    optimizer = nnx.Optimizer(net, tx, wrt=nnx.Param)

    @nnx.jit
    def lib_step(net, optimizer, x, labels):
        def loss_fn(net):
            return optax.softmax_cross_entropy_with_integer_labels(net(x), labels).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(net)
        optimizer.update(net, grads)
        return loss

    # nnx.jit walks the module graph in Python on every call; cached_partial
    # walks it once (Flax's recommended pattern for hot training loops).
    cached_step = nnx.cached_partial(lib_step, net, optimizer)

    p = {k: jnp.asarray(v) for k, v in net.soma.parameters().items() if k in FIELDS}
    weights = {"w_in": net.encoder.kernel[...], "b_in": net.encoder.bias[...],
               "w_out": net.readout.kernel[...], "b_out": net.readout.bias[...]}
    opt_state = tx.init(weights)

    @jax.jit
    def plain_step(weights, opt_state, x, labels):
        def loss_fn(weights):
            spikes, _ = plain_run(p, dt, 1000.0 * (x @ weights["w_in"] + weights["b_in"]))
            logits = spikes.mean(0) @ weights["w_out"] + weights["b_out"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        loss, grads = jax.value_and_grad(loss_fn)(weights)
        updates, opt_state = tx.update(grads, opt_state, weights)
        return optax.apply_updates(weights, updates), opt_state, loss

    state = {"weights": weights, "opt": opt_state}

    def plain():
        state["weights"], state["opt"], loss = plain_step(state["weights"], state["opt"], x, labels)
        return loss

    lib_loss, plain_loss = cached_step(x, labels), plain()
    t = _common.best_times({"library_train_step": lambda: cached_step(x, labels),
                            "plain_train_step": plain}, repeats)
    return {
        "shape": "train", "T": steps, "batch": batch, "N": hidden, "dt": dt, "repeats": repeats,
        **{f"{k}_wall_s": v["wall_s"] for k, v in t.items()},
        **{f"{k}_cpu_s": v["cpu_s"] for k, v in t.items()},
        "train_step_ratio": t["library_train_step"]["wall_s"] / t["plain_train_step"]["wall_s"],
        "train_step_ratio_cpu": t["library_train_step"]["cpu_s"] / t["plain_train_step"]["cpu_s"],
        "first_loss_library": float(lib_loss), "first_loss_plain": float(plain_loss),
    }


COLUMNS = ["shape", "T", "batch", "N", "forward_ratio", "bptt_ratio", "bptt_spikes_ratio",
           "train_step_ratio", "forward_ratio_cpu", "bptt_ratio_cpu", "bptt_spikes_ratio_cpu",
           "train_step_ratio_cpu", "spike_entries_equal"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--shapes", nargs="+", default=["small", "large", "train"])
    parser.add_argument("--out", default=str(_common.HERE / "guards.json"))
    args = parser.parse_args()
    info = _common.machine()
    print(info)
    rows = []
    if "small" in args.shapes:
        rows.append(measure_loop("small", 100, 64, 128, 1.0, args.repeats))
        print(_common.table(rows[-1:], COLUMNS), flush=True)
    if "large" in args.shapes:
        rows.append(measure_loop("large", 1000, 0, 10_000, 0.1, max(3, args.repeats // 4)))
        print(_common.table(rows[-1:], COLUMNS), flush=True)
    if "train" in args.shapes:
        rows.append(measure_train_step(100, 64, 100, 128, 10, 1.0, args.repeats))
        print(_common.table(rows[-1:], COLUMNS), flush=True)
    info["load_average_end"] = _common.machine()["load_average"]
    print(_common.table(rows, COLUMNS))
    _common.write_json(args.out, {"machine": info, "rows": rows})


if __name__ == "__main__":
    main()
