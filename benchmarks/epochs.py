"""Epochs at the floor: a training epoch scanned on the device, the Python
loop over compiled steps, and the same network and optimizer in plain JAX + optax.

The data are SHD-shaped and synthetic: N = 8,156 samples (SHD's training
set) of T = 100 steps × 700 input channels, Bernoulli spikes with p = 0.05
per step and channel, 20 classes. The network is the SHD recipe of
``spark-somas train --task shd --recurrent``: 700 → 256 recurrent AdEx
(input gain 3 × the rheobase current, 5 ms exponential synapse, dt = 1 ms)
→ 20, leaky readout (τ_out = 10 ms), mean over time, softmax cross-entropy;
global-norm clipping at 1 then Adam (lr 2e-3); batch 256 (31 batches, the
last partial one dropped, as ``fit`` does).

Three ways to train one epoch, side by side in one process, interleaved
repeats, least time kept (``_common.best_times``):

* ``scanned``: :func:`spark_somas.training.train_epoch`, the epoch as one
  compiled program (``jax.lax.scan`` over batches, the data on the device):
  what ``fit`` runs when the training split fits on the device.
* ``python_loop``: one call per batch of the compiled
  :func:`~spark_somas.training.train_step` through ``nnx.cached_partial``,
  batches gathered on the host, as ``fit(epoch_on_device=False)`` does.
* ``plain``: the same network and optimizer written in plain JAX + optax
  (the AdEx Euler step inline, as in ``benchmarks/guards.py``; parameters
  in a dict), its epoch scanned over batches the same way. Both it and the
  library project the input x_t @ W_in for all T steps at once, before
  the time loop.

Ratios library/plain (targets ≤ 1.15) are printed and written to JSON with
samples/s and seconds per epoch. ``--batches K`` times K batches per epoch
instead of all 31 (seconds per epoch are then scaled by 31/K and say so).

    python benchmarks/epochs.py [--batches 31] [--repeats 2] [--out benchmarks/epochs_cpu.json]
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
from guards import FIELDS, plain_adex_step  # noqa: E402

from spark_somas import training as tr  # noqa: E402

N, T, F, C, H, BATCH = 8156, 100, 700, 20, 256, 256
GAIN, SYNAPSE_TAU, READOUT_TAU, LR = 3.0, 5.0, 10.0, 2e-3


def synthetic_shd(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, T, F) float32 Bernoulli(0.05) spikes (the hidden layer then fires
    at ~8 Hz) and n labels in 0 … C − 1."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, T, F), np.float32)
    for start in range(0, n, 512):
        x[start:start + 512] = rng.random((min(512, n - start), T, F), np.float32) < 0.05
    return x, rng.integers(0, C, n).astype(np.int32)


def library_network() -> tr.SpikingNetwork:
    return tr.SpikingNetwork(F, H, C, soma="adex", recurrent=True, input_gain=GAIN,
                             synapse_tau=SYNAPSE_TAU, readout_tau=READOUT_TAU, rngs=nnx.Rngs(0))


def plain_epoch_fn(net: tr.SpikingNetwork):
    """The plain JAX + optax epoch, with ``net``'s initial weights and constants."""
    layer = net.layers[0]
    p = {k: jnp.asarray(v) for k, v in layer.soma.parameters().items() if k in FIELDS}
    scale, syn, out_decay = layer.scale, layer.decay, net.readout_decay
    weights = {"w_in": layer.input.kernel[...], "b_in": layer.input.bias[...],
               "w_rec": layer.recurrent.kernel[...],
               "w_out": net.output.kernel[...], "b_out": net.output.bias[...]}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(LR))

    def forward(w, x):  # x: (T, B, F)
        batch = x.shape[1]
        zeros = jnp.zeros((batch, H))
        carry = (jnp.full((batch, H), p["potential_rest"]), zeros, zeros, zeros,
                 jnp.zeros((batch, C)))

        def step(carry, z_t):
            v, a, current, s_prev, u = carry
            current = syn * current + scale * (z_t + s_prev @ w["w_rec"])
            (v, a), (s, _) = plain_adex_step(p, 1.0, (v, a), current)
            u = out_decay * u + s @ w["w_out"] + w["b_out"]
            return (v, a, current, s, u), u

        _, us = jax.lax.scan(step, carry, x @ w["w_in"] + w["b_in"])
        return us.mean(0)

    def train_step(state, batch):
        w, opt = state
        x, y = batch

        def loss_fn(w):
            logits = forward(w, jnp.swapaxes(x, 0, 1))
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(w)
        updates, opt = tx.update(grads, opt, w)
        return (optax.apply_updates(w, updates), opt), loss

    @jax.jit
    def epoch(state, x_all, y_all, order):
        def one(state, idx):
            return train_step(state, (x_all[idx], y_all[idx]))
        return jax.lax.scan(one, state, order)

    return epoch, (weights, tx.init(weights))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=N // BATCH,
                        help=f"batches timed per epoch (a full epoch: {N // BATCH})")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--samples", type=int, default=N)
    parser.add_argument("--out", default=str(_common.HERE / "epochs_cpu.json"))
    args = parser.parse_args()
    info = _common.machine()
    print(info, flush=True)
    full = args.samples // BATCH
    k = min(args.batches, full)
    x, y = synthetic_shd(args.samples)
    x_dev, y_dev = jnp.asarray(x), jnp.asarray(y)
    order = np.random.default_rng(0).permutation(args.samples)[:k * BATCH].reshape(k, BATCH)
    order_dev = jnp.asarray(order)
    encoder, objective = tr.Encoder("spikes", T), tr.Objective()

    scanned_net = library_network()
    scanned_opt = tr.make_optimizer(scanned_net, LR)
    keys = jax.vmap(lambda i: tr.batch_key(0, 0, i))(jnp.arange(k))

    def scanned():
        return tr.train_epoch(scanned_net, scanned_opt, x_dev, y_dev, order_dev, keys,
                              encoder=encoder, objective=objective)["loss"]

    loop_net = library_network()
    loop_opt = tr.make_optimizer(loop_net, LR)
    loop_step = nnx.cached_partial(tr.train_step, loop_net, loop_opt)

    def python_loop():
        return [loop_step(x[idx], y[idx], tr.batch_key(0, 0, i), encoder=encoder,
                          objective=objective)["loss"] for i, idx in enumerate(order)]

    plain_epoch, plain_state = plain_epoch_fn(library_network())
    state = {"plain": plain_state}

    def plain():
        state["plain"], losses = plain_epoch(state["plain"], x_dev, y_dev, order_dev)
        return losses

    first = {"scanned": np.asarray(scanned()), "python_loop": np.asarray(python_loop()),
             "plain": np.asarray(plain())}  # compiles; the first epoch's losses
    print({name: losses[:3].round(4).tolist() for name, losses in first.items()}, flush=True)
    times = _common.best_times({"scanned": scanned, "python_loop": python_loop, "plain": plain},
                               args.repeats)
    rows = []
    for name, t in times.items():
        rows.append({
            "path": name, "batches_timed": k, "samples_timed": k * BATCH,
            "wall_s": t["wall_s"], "cpu_s": t["cpu_s"],
            "samples_per_s": k * BATCH / t["wall_s"],
            "s_per_epoch": t["wall_s"] * full / k,
            "ratio_to_plain": t["wall_s"] / times["plain"]["wall_s"],
            "ratio_to_plain_cpu": t["cpu_s"] / times["plain"]["cpu_s"],
        })
    info["load_average_end"] = _common.machine()["load_average"]
    columns = ["path", "batches_timed", "samples_per_s", "s_per_epoch", "ratio_to_plain",
               "ratio_to_plain_cpu"]
    print(_common.table(rows, columns))
    if k < full:
        print(f"(s_per_epoch scaled from {k} of the {full} batches of an epoch)")
    _common.write_json(args.out, {
        "machine": info,
        "setup": {"N": args.samples, "T": T, "F": F, "H": H, "C": C, "batch": BATCH,
                  "batches_per_epoch": full, "batches_timed": k, "repeats": args.repeats,
                  "network": "700 -> 256 recurrent AdEx (gain 3, 5 ms synapse) -> 20, leaky "
                             "mean readout, cross-entropy, clip 1 + Adam 2e-3"},
        "first_epoch_losses": {name: losses[:5].tolist() for name, losses in first.items()},
        "rows": rows,
    })


if __name__ == "__main__":
    main()
