"""Where the gradient of a recall loss reaches, under each gradient switch.

The cue task's networks (the ``spark-somas train --task cues`` recipe: 64
recurrent somas, τ_w = τ_θ = 2 s, untrained, seed 0) run 16 test trials;
L is the cross-entropy read over the 150 ms recall period (the task loss
alone: the recipe's rate regulariser, which reads every step, would reach
the cues directly). For each soma
kind and each combination of the two gradient switches (the reset's,
``detach_reset``; the adaptation jumps', ``detach_adaptation``) this
measures, with :mod:`spark_somas.training.diagnostics`:

* ‖∂L/∂x_t‖ for every step t of a trial with a ``--delay`` ms delay — how
  far back the gradient reaches (figure: against ms before the recall);
* ‖∂L/∂W_cue‖, the gradient on the input weights of the two cue
  populations (silent after the cue period), at each of ``--delays``.

Writes ``--out`` (JSON) and ``--figure`` (PNG, for the docs)::

    python benchmarks/gradient_paths.py
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from spark_somas.training.diagnostics import (input_gradient_by_step,  # noqa: E402
                                              input_weight_gradients)
from spark_somas.training.runs import RunConfig  # noqa: E402

SWITCHES = {f"reset {'cut' if r else 'kept'}, adaptation {'cut' if a else 'kept'}": (r, a)
            for r, a in itertools.product((False, True), repeat=2)}


def network_and_trials(soma: str, delay_ms: float, switches: tuple[bool, bool], trials: int):
    """The recipe's untrained network and ``trials`` test trials, time-major."""
    run = RunConfig(soma=soma, task="cues", detach_reset=switches[0],
                    detach_adaptation=switches[1],
                    data_option=(("delay_ms", delay_ms), ("n_samples", 5 * trials)))
    built = run.build()
    x = np.swapaxes(built.data.x_test[:trials], 0, 1)
    return built.model, x, jnp.asarray(built.data.y_test[:trials]), run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--somas", nargs="+", default=["simplified", "adex", "expif"])
    parser.add_argument("--delay", type=float, default=2000.0)
    parser.add_argument("--delays", nargs="+", type=float, default=[0, 250, 500, 1000, 2000])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--out", default=str(_common.HERE / "gradient_paths.json"))
    parser.add_argument("--figure", default=str(_common.HERE.parent / "docs"
                                                / "training-gradient-paths.png"))
    args = parser.parse_args()
    info = _common.machine()
    by_step, cue = {}, []
    for soma in args.somas:
        for label, switches in SWITCHES.items():
            model, x, y, run = network_and_trials(soma, args.delay, switches, args.trials)
            task = run.cue_task()
            g = np.asarray(input_gradient_by_step(model, x, y))
            by_step[f"{soma}: {label}"] = g.tolist()
            for delay in args.delays:
                model, x, y, _ = network_and_trials(soma, delay, switches, args.trials)
                per_channel = input_weight_gradients(model, x, y)
                norm = float(jnp.linalg.norm(per_channel[:2 * task.population]))
                cue.append({"soma": soma, "switches": label, "delay_ms": delay,
                            "cue_weight_gradient": norm})
                print(f"{soma:<11} {label:<34} delay {delay:6.0f} ms: |dL/dW_cue| = {norm:.3g}",
                      flush=True)
    _common.write_json(args.out, {"machine": info, "settings": vars(args),
                                  "recall_start_step": task.recall_start,
                                  "cue_period_steps": task.cue_period_steps,
                                  "input_gradient_by_step": by_step, "cue_weight_gradient": cue})
    plot(by_step, task, args)


def plot(by_step: dict[str, list[float]], task, args: argparse.Namespace) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    somas = args.somas
    fig, axes = plt.subplots(1, len(somas), figsize=(4.2 * len(somas), 3.4), sharey=True)
    before = task.recall_start - np.arange(task.steps)  # ms before the recall starts
    for ax, soma in zip(np.atleast_1d(axes), somas):
        for label in SWITCHES:
            g = np.maximum(np.asarray(by_step[f"{soma}: {label}"]), 1e-30)
            ax.semilogy(before, g, lw=1, label=label)
        ax.axvspan(before[task.cue_period_steps - 1], before[0], color="0.9", zorder=0)
        ax.set_xlim(before[0], before[-1])
        ax.set_ylim(1e-14, None)
        ax.set_title(f"{soma}, delay {args.delay:g} ms")
        ax.set_xlabel("ms before the recall (shaded: the cues)")
    np.atleast_1d(axes)[0].set_ylabel("‖∂L/∂x_t‖")
    fig.legend(*np.atleast_1d(axes)[0].get_legend_handles_labels(), loc="lower center", ncol=4,
               frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(args.figure, dpi=110)
    print(f"wrote {args.out} and {args.figure}")


if __name__ == "__main__":
    main()
