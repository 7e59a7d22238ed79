"""Where adaptation matters: the four somas on the evidence-accumulation cue task.

A recurrent network of each soma kind is trained with the same budget on the
cue task of Bellec et al. (2018, 2020) (:mod:`spark_somas.tasks`) at
several delays between the last cue and the recall signal; the final-epoch
test accuracy at each delay is the soma's memory curve, and its memory span
is the longest delay at which the accuracy stays at or above ``--span-at``
(default 75 %). A run whose loss turns non-finite (``fit`` stops) is
recorded as chance, marked "diverged".

Network: 40 inputs → ``--hidden`` recurrent somas (input gain 3 × the
rheobase current, 5 ms exponential synapses, dt = 1 ms) → 2 outputs, leaky
readout averaged over the 150 ms recall period only, cross-entropy; Adam
with cosine decay, global-norm clipping 1. Somas: their default configs
(Brette & Gerstner 2005), except that the adaptive ones get a slow
adaptation, τ_w = τ_θ = ``--adaptation-tau`` ms (Bellec et al.'s adaptive
neurons use time constants of seconds), and AdEx keeps b = 80.5 pA > 0.

Task: 7 cues of ``--cue-ms`` ms with gaps of half that, 40 Hz cue
populations of 10 neurons, 10 Hz background, 150 ms recall. The train and
test trials are the same seeded trials at every delay (only the delay
changes), ``--samples`` in all, 20 % held out.

    python benchmarks/adaptation.py [--delays 0 250 500 1000] [--epochs 20] \\
        [--hidden 48] [--samples 640] [--out benchmarks/adaptation_cpu.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from spark_somas import tasks, training as tr  # noqa: E402

SOMAS = ("adex", "simplified", "expif", "refractory")


def soma_kwargs(soma: str, adaptation_tau: float) -> dict[str, float]:
    return {"adex": {"adaptation_tau": adaptation_tau},
            "simplified": {"threshold_tau": adaptation_tau}}.get(soma, {})


def train_one(soma: str, delay_ms: float, args: argparse.Namespace) -> dict:
    task = tasks.EvidenceAccumulation(delay_ms=delay_ms, cue_ms=args.cue_ms,
                                      gap_ms=args.cue_ms / 2)
    data = task.dataset(args.samples, seed=args.data_seed)
    net = tr.SpikingNetwork(data.n_features, args.hidden, 2, soma=soma, recurrent=True,
                            input_gain=3.0, synapse_tau=5.0,
                            readout_window=(-task.recall_steps, None),
                            soma_kwargs=soma_kwargs(soma, args.adaptation_tau),
                            rngs=nnx.Rngs(args.seed))
    per_epoch = len(data.x_train) // args.batch_size
    optimizer = tr.make_optimizer(net, args.lr, total_steps=args.epochs * per_epoch)
    t0 = time.perf_counter()
    kept: dict = {}
    diverged = None
    try:
        history = tr.fit(net, optimizer, data, encoder=tr.Encoder("spikes", task.steps),
                         epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                         progress=False, on_epoch_end=lambda e, m, o, h: kept.update(h))
    except tr.NonFiniteLossError:  # counted as chance: the run ends here, recorded as such
        history = kept or {"test_accuracy": [0.5], "train_accuracy": [0.5], "test_rate_hz": [0]}
        diverged = len(kept.get("epoch", [])) + 1
    return {"soma": soma, "delay_ms": delay_ms, "steps": task.steps, "diverged_at_epoch": diverged,
            "test_accuracy": history["test_accuracy"][-1] if diverged is None else 0.5,
            "train_accuracy": history["train_accuracy"][-1],
            "best_test_accuracy": max(history["test_accuracy"]),
            "rate_hz": history["test_rate_hz"][-1], "wall_s": time.perf_counter() - t0,
            "history": history}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--somas", nargs="+", default=list(SOMAS))
    parser.add_argument("--delays", nargs="+", type=float, default=[0.0, 250.0, 500.0, 1000.0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=48)
    parser.add_argument("--samples", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--cue-ms", type=float, default=100.0)
    parser.add_argument("--adaptation-tau", type=float, default=1000.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--span-at", type=float, default=0.75)
    parser.add_argument("--out", default=str(_common.HERE / "adaptation_cpu.json"))
    args = parser.parse_args()
    info = _common.machine()
    print(info, flush=True)
    rows = []
    for soma in args.somas:
        for delay in args.delays:
            rows.append(train_one(soma, delay, args))
            r = rows[-1]
            print(f"{soma:<11} delay {delay:6.0f} ms: test {100 * r['test_accuracy']:.1f} % "
                  f"(train {100 * r['train_accuracy']:.1f} %, {r['rate_hz']:.1f} Hz, "
                  f"{r['wall_s']:.0f} s, diverged at epoch {r['diverged_at_epoch']})", flush=True)
    table = []
    for soma in args.somas:
        curve = {r["delay_ms"]: r["test_accuracy"] for r in rows if r["soma"] == soma}
        held = [d for d in sorted(curve) if all(curve[e] >= args.span_at for e in curve if e <= d)]
        marks = {r["delay_ms"]: " (diverged)" if r["diverged_at_epoch"] else "" for r in rows
                 if r["soma"] == soma}
        table.append({"soma": soma, **{f"{d:g} ms": f"{100 * a:.1f} %{marks[d]}"
                                       for d, a in curve.items()},
                      "memory span": f"{max(held):g} ms" if held else f"< {min(curve):g} ms"})
    print(_common.table(table, list(table[0])))
    info["load_average_end"] = _common.machine()["load_average"]
    _common.write_json(args.out, {"machine": info, "settings": vars(args), "table": table,
                                  "rows": rows})


if __name__ == "__main__":
    main()
