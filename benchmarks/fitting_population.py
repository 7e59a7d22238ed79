"""Many cells at once: the wall time of fitting N cells with one call of
:func:`spark_somas.fitting.fit_cells` for N = 1, 2, 8 and 64.

* data: N AdEx cells (the package's AdEx, float32) whose τ_m and b are
  drawn uniformly (τ_m in [8, 16] ms, b in [30, 120] pA; a = 4 nS,
  τ_w = 144 ms as Brette & Gerstner's cell), each recorded on two 200 ms
  sweeps (a step of 300 and 800 pA from 20 ms to 170 ms; dt = 0.1 ms),
  potential + 0.5 mV Gaussian noise, spike times;
* the fit: τ_m and b from 11 ms and 60 pA by the default recipe for a
  recording with spike times (:func:`~spark_somas.fitting.forced_recipe`:
  40 L-BFGS iterations), one start per cell;
* timed: the first call (compilation included) and a second call of the
  same shapes (compiled program reused), and, for comparison, N times the
  second call's time for one cell (N separate fits, each compiled already).
  N = 2 is measured too: one cell with one start is a single lane, which
  XLA on a CPU runs several times faster per loss evaluation than any
  batch of lanes (two starts of one cell cost what two cells do), so the
  growth with N is read from N = 2 on.

Writes benchmarks/fitting_population.json (with the machine and its load:
on a shared CPU the load changes the wall times, not their ratios much)
and prints a Markdown table. ``--cells 1 8`` measures fewer sizes.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import spark_somas as ss
from spark_somas import fitting
from spark_somas.fitting import Recording

from _common import HERE, machine, table, write_json

DT = 0.1
NOISE_MV = 0.5
FIELDS = ("potential_tau", "adaptation_delta")
FIXED = dict(adaptation_subthreshold=4.0, adaptation_tau=144.0)
START = dict(potential_tau=11.0, adaptation_delta=60.0)


def population(n: int, seed: int = 0) -> tuple[list[Recording], list[dict[str, float]]]:
    """N cells' recordings and their true fields, simulated as one soma of N neurons."""
    rng = np.random.default_rng(seed)
    truth = {"potential_tau": rng.uniform(8.0, 16.0, n),
             "adaptation_delta": rng.uniform(30.0, 120.0, n)}
    soma = ss.AdaptiveExponentialSoma(units=n, dt=DT, **FIXED, **truth)
    t = np.arange(2000) * DT
    step = ((t >= 20.0) & (t < 170.0)).astype(np.float32)
    currents = step[:, None, None] * np.array([300.0, 800.0], np.float32)[None, :, None]
    currents = np.broadcast_to(currents, (len(t), 2, n))
    out = ss.simulate(soma, currents)
    potential = np.asarray(out.potential, np.float64)
    potential += NOISE_MV * rng.normal(size=potential.shape)
    spikes = np.asarray(out.spikes)
    recordings = [Recording(currents[:, :, i], DT, potential=potential[:, :, i],
                            spike_times=[np.nonzero(spikes[:, k, i])[0] * DT for k in range(2)])
                  for i in range(n)]
    return recordings, [{f: float(v[i]) for f, v in truth.items()} for i in range(n)]


def timed_fit(recordings: list[Recording]) -> tuple[float, tuple[fitting.FitResult, ...]]:
    start = time.perf_counter()
    results = fitting.fit_cells(ss.AdaptiveExponentialSoma(units=1, dt=DT, **FIXED, **START),
                                recordings, FIELDS)
    return time.perf_counter() - start, results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[1, 2, 8, 64])
    parser.add_argument("--out", default=str(HERE / "fitting_population.json"))
    args = parser.parse_args(argv)
    recordings, truths = population(max(args.cells))
    rows = []
    for n in args.cells:
        first, _ = timed_fit(recordings[:n])
        second, results = timed_fit(recordings[:n])
        errors = [abs(e) for r, t in zip(results, truths) for e in
                  fitting.relative_errors(r.params, t).values()]
        rows.append({"cells": n, "wall_s_with_compile": first, "wall_s_compiled": second,
                     "compiled_s_per_cell": second / n,
                     "median_abs_relative_error": float(np.median(errors)),
                     "max_abs_relative_error": float(np.max(errors)),
                     "evaluations_per_cell": int(np.median([r.evaluations for r in results]))})
        print(rows[-1], flush=True)
    one = next((r["wall_s_compiled"] for r in rows if r["cells"] == 1), None)
    for row in rows:
        if one is not None:
            row["separate_fits_s"] = one * row["cells"]
            row["speedup_vs_separate"] = row["separate_fits_s"] / row["wall_s_compiled"]
    payload = {"machine": machine(), "device": str(jax.devices()[0]), "fields": list(FIELDS),
               "recipe": "forced_recipe (40 L-BFGS iterations), 1 start",
               "sweeps": "2 x 200 ms, dt 0.1 ms", "rows": rows}
    write_json(args.out, payload)
    print(table(rows, ["cells", "wall_s_with_compile", "wall_s_compiled", "compiled_s_per_cell",
                       "separate_fits_s", "speedup_vs_separate", "median_abs_relative_error",
                       "max_abs_relative_error"]))
    return payload


if __name__ == "__main__":
    main()
