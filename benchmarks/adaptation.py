"""The memory curve: the four somas on the evidence-accumulation cue task.

A recurrent network of each soma kind is trained with the same budget and
seeds on the cue task of Bellec et al. (2018, 2020) (:mod:`spark_somas.data.tasks`)
at several delays between the last cue and the recall signal; the
final-epoch test accuracy at each delay is the soma's memory curve, with
the mean hidden rate beside it (a control that does not fire proves
nothing). A run whose loss turns non-finite (``fit`` stops) is recorded as
chance, marked "diverged".

Every run is ``spark-somas train --task cues --soma S --data-option
delay_ms=D --seed K``: the command line's recipe for the task
(``training.RECIPES["cues"]``: 40 inputs → 64 recurrent somas → 2, read over
the 150 ms recall; cues of 50 ms 25 ms apart; new trials every epoch;
τ_w = τ_θ = 2 s; a 10 Hz rate regulariser; Adam 10⁻², 12 epochs of 12
updates; the whole network trained end to end, both gradient switches
kept). This script's options replace the recipe's where given (the
command stored with each row says which).

Writes ``--out`` (JSON: settings, machine, every run's history) and the
table beside it (the same name, ``.md``). Rows already in ``--out`` (same
settings) are kept, so seeds can be added run by run, and ``--merge``
gathers the rows of runs made in parallel into one table::

    python benchmarks/adaptation.py [--somas adex expif] [--delays 0 1000] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from spark_somas import training as tr  # noqa: E402
from spark_somas.training.runs import FROZEN, RunConfig  # noqa: E402

SOMAS = ("adex", "simplified", "expif", "refractory")
#: RunConfig fields this script's options may set; the others keep the recipe's.
RUN_FIELDS = ("epochs", "hidden", "batch_size", "lr", "input_gain", "rate_strength", "rate_hz",
              "adaptive_fraction", "detach_reset", "detach_adaptation", "fresh_data", "frozen")


def run_config(soma: str, delay_ms: float, seed: int, args: argparse.Namespace) -> RunConfig:
    """The cue task's ``spark-somas train`` run: the recipe's defaults, the
    delay and seed, and only the options given on this script's command line."""
    given = {k: v for k, v in vars(args).items() if k in RUN_FIELDS and v is not None}
    return RunConfig(soma=soma, task="cues", seed=seed, **given,
                     data_option=(("delay_ms", delay_ms),) + tuple(args.data_option),
                     soma_option=tuple(args.soma_option))


def train_one(run: RunConfig) -> dict:
    built = run.build()
    t0 = time.perf_counter()
    kept: dict = {}
    diverged = None
    try:
        history = tr.fit(built.model, built.optimizer, built.data, encoder=built.encoder,
                         epochs=run.epochs, batch_size=run.batch_size, seed=run.seed,
                         progress=False, on_epoch_end=lambda fit, e, h: kept.update(h),
                         fresh_data=run.fresh_data, objective=run.objective())
    except tr.NonFiniteLossError:  # counted as chance: the run ends here, recorded as such
        history = kept or {"test_accuracy": [0.5], "train_accuracy": [0.5],
                           "test_rate_hz": [0.0], "skipped_batches": [0]}
        diverged = len(kept.get("epoch", [])) + 1
    return {"soma": run.soma, "delay_ms": dict(run.data_option)["delay_ms"], "seed": run.seed,
            "command": run.command(), "steps": built.encoder.steps,
            "diverged_at_epoch": diverged,
            "test_accuracy": 0.5 if diverged else history["test_accuracy"][-1],
            "train_accuracy": history["train_accuracy"][-1],
            "rate_hz": history["test_rate_hz"][-1],
            "skipped_batches": int(np.nansum(history["skipped_batches"])),
            "wall_s": time.perf_counter() - t0, "history": history}


def curve_table(rows: list[dict], somas, delays) -> list[dict]:
    """Mean and spread (min–max) of the final test accuracy per soma and
    delay, with the mean hidden rate on the test trials."""
    table = []
    for soma in somas:
        entry = {"soma": soma}
        for d in delays:
            mine = [r for r in rows if r["soma"] == soma and r["delay_ms"] == d]
            if mine:
                acc = [r["test_accuracy"] for r in mine]
                rate = np.mean([r["rate_hz"] for r in mine])
                entry[f"{d:g} ms"] = (f"{100 * np.mean(acc):.1f} % ({100 * min(acc):.0f}–"
                                      f"{100 * max(acc):.0f}, n={len(acc)}; {rate:.0f} Hz)")
        table.append(entry)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--somas", nargs="+", default=list(SOMAS))
    parser.add_argument("--delays", nargs="+", type=float,
                        default=[0.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    for name, kind in (("epochs", int), ("hidden", int), ("batch_size", int), ("lr", float),
                       ("input_gain", float), ("rate_strength", float), ("rate_hz", float),
                       ("adaptive_fraction", float)):
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                            help="as spark-somas train's option (default: the cue recipe's)")
    for name in ("detach_reset", "detach_adaptation", "fresh_data"):
        parser.add_argument("--" + name.replace("_", "-"), action=argparse.BooleanOptionalAction,
                            default=None, help="as spark-somas train's option")
    parser.add_argument("--frozen", default=None, choices=tuple(FROZEN))
    for name in ("data_option", "soma_option"):
        parser.add_argument("--" + name.replace("_", "-"), action="append", default=[],
                            type=lambda t: (t.split("=")[0], float(t.split("=")[1])),
                            metavar="KEY=VALUE", help="as spark-somas train's option")
    parser.add_argument("--out", default=str(_common.HERE / "adaptation_cpu.json"))
    parser.add_argument("--merge", nargs="+", default=[], metavar="FILE",
                        help="add the rows of these result files (same settings) to --out and "
                        "write its table; trains nothing")
    args = parser.parse_args()
    settings = {k: v for k, v in vars(args).items()
                if k not in ("somas", "delays", "seeds", "out", "merge")}
    info = _common.machine()
    print(info, flush=True)
    rows = []
    if Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        if old.get("settings") == settings:
            rows = old["rows"]
    for path in args.merge:
        other = json.loads(Path(path).read_text())
        if other["settings"] != settings:
            raise SystemExit(f"{path} was run with other settings: {other['settings']}")
        known = {r["command"] for r in rows}
        rows += [r for r in other["rows"] if r["command"] not in known]
        info.setdefault("merged", []).append({"file": path, "machine": other["machine"]})
    for seed in args.seeds if not args.merge else ():
        for soma in args.somas:
            for delay in args.delays:
                run = run_config(soma, delay, seed, args)
                if any(r["command"] == run.command() for r in rows):
                    continue
                rows.append(train_one(run))
                r = rows[-1]
                print(f"{soma:<11} delay {delay:6.0f} ms seed {seed}: test "
                      f"{100 * r['test_accuracy']:.1f} % (train {100 * r['train_accuracy']:.1f} %, "
                      f"{r['rate_hz']:.1f} Hz, {r['skipped_batches']} skipped, {r['wall_s']:.0f} s, "
                      f"diverged at epoch {r['diverged_at_epoch']})  [{r['command']}]", flush=True)
                info["load_average_end"] = _common.machine()["load_average"]
                table = curve_table(rows, args.somas, args.delays)
                _common.write_json(args.out, {"machine": info, "settings": settings,
                                              "table": table, "rows": rows})
    _common.write_json(args.out, {"machine": info, "settings": settings,
                                  "table": curve_table(rows, args.somas, args.delays), "rows": rows})
    text = _common.table(curve_table(rows, args.somas, args.delays), ["soma"] + [
        f"{d:g} ms" for d in args.delays])
    Path(args.out).with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
