"""The training defaults of the gradient switches, chosen by measurement.

Every documented recipe is trained with the reset's and the adaptation
jumps' gradient switches (``--detach-reset``, ``--detach-adaptation``) in
each setting asked for, with the same seeds, and reports the final-epoch
test accuracy, the wall time and the gradient-health record (skipped
updates, mean and largest gradient norm) of every run; the table gives the
mean (min–max) over seeds. Each run is the ``spark-somas train`` command in
its row. Writes ``--out`` (JSON) and the table beside it (``.md``); rows
already in ``--out`` are kept, so recipes and seeds can be added run by run::

    python benchmarks/defaults.py --recipes digits digits-2 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from spark_somas.training.runs import RunConfig, train  # noqa: E402

#: The documented recipes, as RunConfig fields (the cue task's is its memory curve,
#: benchmarks/adaptation.py).
RECIPES = {
    "digits": {"task": "digits"},
    "digits-2": {"task": "digits", "depth": 2, "recurrent": True},
    "randman-2": {"task": "randman", "data_option": (("manifold_dim", 2),), "depth": 2,
                  "recurrent": True},
    "cues-1000": {"task": "cues", "data_option": (("delay_ms", 1000.0),)},
}
#: Switch settings: (detach_reset, detach_adaptation).
SWITCHES = {"both kept": (False, False), "reset cut": (True, False),
            "both cut": (True, True)}


def run_one(run: RunConfig) -> dict:
    with tempfile.TemporaryDirectory() as out:
        result = train(run, out, progress=False)
    h = result.history
    return {"command": run.command(), "test_accuracy": h["test_accuracy"][-1],
            "train_accuracy": h["train_accuracy"][-1], "rate_hz": h["test_rate_hz"][-1],
            "wall_s": result.wall_seconds, "skipped_batches": int(np.nansum(h["skipped_batches"])),
            "grad_norm_mean": float(np.nanmean(h["grad_norm"])),
            "grad_norm_max": float(np.nanmax(h["grad_norm_max"])), "history": h}


def table(rows: list[dict]) -> list[dict]:
    out = []
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        for switches in SWITCHES:
            mine = [r for r in rows if r["recipe"] == recipe and r["switches"] == switches]
            if not mine:
                continue
            acc = [100 * r["test_accuracy"] for r in mine]
            out.append({"recipe": recipe, "switches": switches,
                        "test accuracy": f"{np.mean(acc):.2f} % ({min(acc):.2f}–{max(acc):.2f}, "
                                         f"n={len(acc)})",
                        "wall s": f"{np.mean([r['wall_s'] for r in mine]):.0f}",
                        "skipped": sum(r["skipped_batches"] for r in mine),
                        "grad norm mean / max": f"{np.mean([r['grad_norm_mean'] for r in mine]):.3g}"
                                                f" / {max(r['grad_norm_max'] for r in mine):.3g}"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--switches", nargs="+", default=list(SWITCHES), choices=list(SWITCHES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--soma", default="adex")
    parser.add_argument("--out", default=str(_common.HERE / "defaults_cpu.json"))
    args = parser.parse_args()
    info = _common.machine()
    print(info, flush=True)
    rows = json.loads(Path(args.out).read_text())["rows"] if Path(args.out).exists() else []
    for recipe in args.recipes:
        for seed in args.seeds:
            for switches in args.switches:
                reset, adaptation = SWITCHES[switches]
                run = RunConfig(soma=args.soma, seed=seed, detach_reset=reset,
                                detach_adaptation=adaptation, **RECIPES[recipe])
                if any(r["command"] == run.command() for r in rows):
                    continue
                row = {"recipe": recipe, "switches": switches, "seed": seed,
                       "load_average_start": _common.machine()["load_average"], **run_one(run)}
                rows.append(row)
                print(f"{recipe:<10} {switches:<10} seed {seed}: test "
                      f"{100 * row['test_accuracy']:.2f} %, {row['wall_s']:.0f} s, "
                      f"{row['skipped_batches']} skipped, grad norm {row['grad_norm_mean']:.3g} "
                      f"(max {row['grad_norm_max']:.3g}), load {row['load_average_start']}  "
                      f"[{row['command']}]", flush=True)
                _common.write_json(args.out, {"machine": info, "rows": rows,
                                              "table": table(rows)})
    text = _common.table(table(rows), ["recipe", "switches", "test accuracy", "wall s", "skipped",
                                       "grad norm mean / max"])
    Path(args.out).with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
