"""Gradients through long runs: the adjoint against steps back, and what each option does to training.

``--mode adjoint``: ‖∂L/∂x_t‖ of a recurrent network (8 → 16 recurrent
somas → 2, input gain 3, 5 ms synapses, recurrent weights 2/√N, Bernoulli
inputs at 50 Hz) whose loss reads only the last of 2,000 steps, for the
exponential's backward pass exact / bounded / detached and the somas' own
surrogate (fast sigmoid, 1/mV) or the training default (triangle as wide as
V_th − E_L, damped 0.3). Writes the curves to JSON and a figure.

``--mode ablation``: the cue task at delay 0 (40 → 48 recurrent AdEx → 2,
650 steps, 640 trials, Adam 1e-2, batch 64) trained for ``--epochs`` epochs
(8 updates each) with each combination; final-epoch test accuracy, firing
rate and skipped updates.

    python benchmarks/gradients.py --mode adjoint   # writes benchmarks/gradients_adjoint.json, docs/training-adjoint.png
    python benchmarks/gradients.py --mode ablation  # writes benchmarks/gradients_ablation.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from spark_somas import surrogates, tasks  # noqa: E402
from spark_somas import training as tr  # noqa: E402

DEFAULT_SOMA_SURROGATE = surrogates.DEFAULT
VARIANTS = {
    "exact, fast sigmoid (the somas' own)": ("exact", DEFAULT_SOMA_SURROGATE),
    "bounded, fast sigmoid": ("bounded", DEFAULT_SOMA_SURROGATE),
    "exact, triangle (cell, γ = 0.3)": ("exact", tr.TRAINING_SURROGATE),
    "detached, triangle (cell, γ = 0.3)": ("detached", tr.TRAINING_SURROGATE),
    "bounded, triangle (cell, γ = 0.3): the default": ("bounded", tr.TRAINING_SURROGATE),
    "bounded, triangle (cell, γ = 1)": ("bounded", surrogates.Triangle(width=1.0,
                                                                        relative=True)),
}


def adjoint(soma: str, exp_gradient: str, surrogate, steps: int = 2000, seed: int = 0):
    net = tr.SpikingNetwork(8, 16, 2, soma=soma, recurrent=True, input_gain=3.0,
                            synapse_tau=5.0, surrogate=surrogate, exp_gradient=exp_gradient,
                            rngs=nnx.Rngs(seed))
    kernel = net.layers[0].recurrent.kernel
    kernel[...] = 2.0 * jax.random.normal(jax.random.key(seed), kernel[...].shape) / 4.0
    x = (jax.random.uniform(jax.random.key(seed + 1), (steps, 4, 8)) < 0.05).astype(jnp.float32)

    def loss(net, x):
        return jnp.sum(net(x).output_potential[-1] ** 2)

    g = nnx.jit(nnx.grad(loss, argnums=1))(net, x)
    return np.linalg.norm(np.asarray(g, np.float64).reshape(steps, -1), axis=1)[::-1]


def run_adjoint(args) -> None:
    import plots

    curves = {}
    for soma in ("adex", "expif"):
        for label, (mode, surrogate) in VARIANTS.items():
            a = adjoint(soma, mode, surrogate)
            curves[f"{soma}: {label}"] = [float(v) if np.isfinite(v) else "inf" for v in a]
    plots.adjoint_figure(curves, args.figure)
    _common.write_json(args.out, {"machine": _common.machine(), "curves": curves})
    for name, a in curves.items():
        picks = {k: a[k] for k in (10, 150, 600, 1999)}
        print(f"{name:<60} {picks}")


def run_ablation(args) -> None:
    task = tasks.EvidenceAccumulation(delay_ms=0.0, cue_ms=50.0, gap_ms=25.0)
    data = task.dataset(640, seed=0)
    rows = []
    for label, (mode, surrogate) in VARIANTS.items():
        net = tr.SpikingNetwork(data.n_features, 48, 2, soma="adex", recurrent=True,
                                input_gain=3.0, synapse_tau=5.0, surrogate=surrogate,
                                exp_gradient=mode, readout_window=(-task.recall_steps, None),
                                soma_kwargs={"adaptation_tau": 1000.0}, rngs=nnx.Rngs(0))
        optimizer = tr.make_optimizer(net, 1e-2, total_steps=args.epochs * 8)
        t0 = time.perf_counter()
        history = tr.fit(net, optimizer, data, encoder=tr.Encoder("spikes", task.steps),
                         epochs=args.epochs, batch_size=64, progress=False)
        rows.append({"variant": label, "test_accuracy": history["test_accuracy"][-1],
                     "rate_hz": history["test_rate_hz"][-1],
                     "skipped_batches": int(np.nansum(history["skipped_batches"])),
                     "grad_norm_max": float(np.max(history["grad_norm_max"])),
                     "wall_s": time.perf_counter() - t0})
        print(rows[-1], flush=True)
    info = _common.machine()
    _common.write_json(args.out, {"machine": info, "epochs": args.epochs, "rows": rows})
    lines = ["| exponential's backward pass, surrogate | final test accuracy | rate | skipped "
             "updates | largest ‖g‖ |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['variant']} | {100 * r['test_accuracy']:.1f} % | {r['rate_hz']:.0f} Hz | "
              f"{r['skipped_batches']} | {r['grad_norm_max']:.3g} |" for r in rows]
    lines.append(f"\n{args.epochs * 8} updates, chance 50 %, 128 test trials; load average "
                 f"{info['load_average']} at the start, CPU.")
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("adjoint", "ablation"), default="adjoint")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--out", default=None)
    parser.add_argument("--figure", default=str(_common.HERE.parent / "docs" /
                                                 "training-adjoint.png"))
    args = parser.parse_args()
    args.out = args.out or str(_common.HERE / f"gradients_{args.mode}.json")
    (run_adjoint if args.mode == "adjoint" else run_ablation)(args)


if __name__ == "__main__":
    main()
