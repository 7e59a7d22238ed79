"""Fitting an AdEx to a detailed cell: the package's default against the field's tools.

Data (benchmarks/cells.py, written if missing): Pospischil et al.'s (2008)
regular-spiking Hodgkin–Huxley cell in Brian2 under Ornstein–Uhlenbeck
currents, 2 s sweeps: 4 to fit, 2 to choose among starts, 4 to judge (other
seeds and levels); potential every 0.1 ms with 0.5 mV of noise, NaN from
1 ms before to 3 ms after each spike; spikes at 0 mV.

Fitted: the nine AdEx fields E_L, R, τ_m, V_T, Δ_T, a, τ_w, b, V_r within
the same bounds for every method (V_th = 0 mV fixed), from the same generic
start. Every method's result is judged the same way: the package's
simulator (exponential Euler, dt = 0.1 ms) runs the fitted AdEx free on
the test sweeps — Γ at 4 and 2 ms, the fraction of the cell's spikes
predicted within ±2 ms, the model's and the cell's rates, the subthreshold
explained variance.

* ``package``: :func:`spark_somas.fitting.fit_soma` with its default recipe
  (teacher-forced L-BFGS with the escape error), K starts chosen on the
  validation sweeps; also with 15 L-BFGS iterations instead of 40,
  for the time it needs to reach a given Γ.
* ``nevergrad-de``: Nevergrad's differential evolution (as brian2modelfitting
  uses it, 30 candidates a round) on 1 − Γ of the training sweeps, each
  round's candidates one batch of neurons in the package's simulator.
* ``brian2modelfitting``: its SpikeFitter (Brian2, Cython) with the same
  optimizer and metric, run in its own environment
  (benchmarks/fitting_cells_b2mf.py; benchmarks/README.md says how to make
  it); skipped when that environment is missing.

For the gradient-free methods the best candidate so far is judged after
each round where it changed, giving the time each needs to reach its best
test Γ. Writes benchmarks/fitting_cells.json and fitting_cells.md.

    .venv/bin/python benchmarks/fitting_cells.py --seconds 180
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax.numpy as jnp
import nevergrad as ng
import numpy as np

import spark_somas as ss
from spark_somas import fitting
from spark_somas.fitting import Recording

import cells
from _common import HERE, machine, table, write_json

FIELDS = ("potential_rest", "resistance", "potential_tau", "rheobase_threshold", "spike_slope",
          "adaptation_subthreshold", "adaptation_tau", "adaptation_delta", "potential_reset")
SHORT = dict(zip(FIELDS, ("E_L", "R", "tau_m", "V_T", "Delta_T", "a", "tau_w", "b", "V_r")))
BOUNDS = {"potential_rest": (-85, -50), "resistance": (0.02, 3.0), "potential_tau": (1, 200),
          "rheobase_threshold": (-70, -30), "spike_slope": (0.2, 10.0),
          "adaptation_subthreshold": (-2, 20), "adaptation_tau": (5, 2000),
          "adaptation_delta": (0, 300), "potential_reset": (-85, -40)}
START = dict(potential_rest=-70.0, resistance=0.3, potential_tau=20.0, rheobase_threshold=-50.0,
             spike_slope=2.0, adaptation_subthreshold=1.0, adaptation_tau=100.0,
             adaptation_delta=20.0, potential_reset=-65.0)
CUTOFF = 0.0  # mV, V_th
POPULATION = 30
B2MF_PYTHON = HERE / ".venv-b2mf" / "bin" / "python"


def recording(path: Path, split: str) -> Recording:
    currents, potential, times = cells.load(path, split)
    t = np.arange(len(potential[0])) * cells.DT
    for v, spikes in zip(potential, times):
        for s in spikes:
            v[(t >= s - 1.0) & (t <= s + 3.0)] = np.nan
    return Recording(currents, cells.DT, potential=potential, spike_times=times)


def batch_spikes(params: dict[str, np.ndarray], rec: Recording) -> list[list[np.ndarray]]:
    """Spike times (ms) per candidate and sweep: the candidates (field ->
    (n,)) as n neurons of one AdEx run on every sweep of ``rec``."""
    n = len(next(iter(params.values())))
    soma = ss.AdaptiveExponentialSoma(units=n, threshold=CUTOFF,
                                      **{k: np.asarray(v, np.float32) for k, v in params.items()})
    currents = rec.arrays()["currents"]
    out = ss.simulate(soma, jnp.asarray(np.broadcast_to(currents[..., None],
                                                        currents.shape + (n,))))
    spikes = np.asarray(out.spikes)
    return [[np.nonzero(spikes[: rec.lengths[k], k, j])[0] * rec.dt
             for k in range(rec.n_sweeps)] for j in range(n)]


def mean_gamma(times: list[np.ndarray], rec: Recording) -> float:
    g = [fitting.coincidence_factor(t, d, n * rec.dt)
         for t, d, n in zip(times, rec.spike_times, rec.lengths)]
    return float(np.nanmean(g)) if np.isfinite(g).any() else 0.0


def judge(params: dict[str, float], test: Recording) -> dict[str, float]:
    """The free-running prediction of the test sweeps by the AdEx ``params``."""
    soma = ss.AdaptiveExponentialSoma(units=1, threshold=CUTOFF, **params)
    result = fitting.FitResult(params=dict(params), starts={}, initial={}, best=0,
                               held_out_loss=np.zeros(1), history=(), evaluations=0, stages=(),
                               wall_s=0.0, soma=soma)
    return {k: round(float(v), 4) for k, v in result.evaluate(test).items()}


def run_package(train: Recording, validation: Recording, test: Recording, starts: int,
                steps: int) -> dict:
    soma = ss.AdaptiveExponentialSoma(units=1, threshold=CUTOFF, **START)
    stages = fitting.forced_recipe(FIELDS, steps=steps, cutoff=CUTOFF)
    t0 = time.perf_counter()
    result = fitting.fit_soma(soma, train, FIELDS, bounds=BOUNDS, starts=starts,
                              held_out=validation, stages=stages)
    wall = time.perf_counter() - t0
    return {"method": f"package ({steps} L-BFGS iterations, {starts} starts)",
            "wall_s": round(wall, 1), "time_to_best_s": round(wall, 1),
            "params": result.params, "test": judge(result.params, test)}


def run_de(train: Recording, test: Recording, seconds: float) -> dict:
    names = list(FIELDS)
    space = ng.p.Instrumentation(**{n: ng.p.Scalar(init=START[n], lower=BOUNDS[n][0],
                                                   upper=BOUNDS[n][1]) for n in names})
    opt = ng.optimizers.DE(parametrization=space, budget=10**7, num_workers=POPULATION)
    best, best_loss, trace = None, np.inf, []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        cands = [opt.ask() for _ in range(POPULATION)]
        params = {n: np.array([c.kwargs[n] for c in cands]) for n in names}
        losses = [1.0 - mean_gamma(t, train) for t in batch_spikes(params, train)]
        for c, loss in zip(cands, losses):
            opt.tell(c, loss)
        j = int(np.argmin(losses))
        if losses[j] < best_loss:
            best_loss, best = losses[j], {n: float(params[n][j]) for n in names}
            trace.append((time.perf_counter() - t0, best))
    wall = time.perf_counter() - t0
    return judged_trace("nevergrad-de (package simulator)", trace, wall, test)


def judged_trace(name: str, trace: list[tuple[float, dict]], wall: float, test: Recording) -> dict:
    """The best-so-far candidates judged on the test sweeps (the last
    twelve improvements): when each method first reached its best test Γ."""
    curve = [(round(t, 1), judge(p, test)["gamma"]) for t, p in trace[-12:]]
    best_t, best_g = max(curve, key=lambda x: (x[1], -x[0]))
    return {"method": name, "wall_s": round(wall, 1), "time_to_best_s": best_t,
            "params": trace[-1][1], "test": judge(trace[-1][1], test), "curve": curve,
            "best_test_gamma_seen": best_g}


def run_b2mf(path: Path, test: Recording, seconds: float) -> dict | None:
    if not B2MF_PYTHON.exists():
        print(f"brian2modelfitting skipped: no {B2MF_PYTHON}", file=sys.stderr)
        return None
    names = {v: k for k, v in SHORT.items()}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "b2mf.json"
        t0 = time.perf_counter()
        subprocess.run([str(B2MF_PYTHON), str(HERE / "fitting_cells_b2mf.py"), str(path),
                        str(out), str(seconds)], check=True)
        wall = time.perf_counter() - t0
        rounds = json.loads(out.read_text())["rounds"]
    trace, last = [], None
    for r in rounds:
        if r["best_error"] != last:
            last = r["best_error"]
            trace.append((r["elapsed_s"], {names[k]: v for k, v in r["best"].items()}))
    return judged_trace("brian2modelfitting 0.4 (Brian2 2.5, DE, GammaFactor)", trace, wall,
                        test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", choices=sorted(cells.REGIMES), default="tonic",
                        help="the currents of benchmarks/cells.py; results of 'fluctuating' "
                             "go to fitting_cells_fluctuating.json and .md")
    parser.add_argument("--data", type=Path, help="default: cells_rs.npz, or "
                        "cells_rs_fluctuating.npz for --regime fluctuating")
    parser.add_argument("--package-only", action="store_true",
                        help="skip the gradient-free methods")
    parser.add_argument("--seconds", type=float, default=180.0,
                        help="wall-time budget of each gradient-free method")
    parser.add_argument("--starts", type=int, default=4)
    args = parser.parse_args()
    suffix = "" if args.regime == "tonic" else f"_{args.regime}"
    args.data = args.data or HERE / f"cells_rs{suffix}.npz"
    if not args.data.exists():
        np.savez_compressed(args.data, **cells.make("rs", 2.0, args.regime))
    train, validation, test = (recording(args.data, s) for s in ("train", "validation", "test"))
    load_before = machine()["load_average"]
    rows = [run_package(train, validation, test, args.starts, steps) for steps in (40, 15)]
    if not args.package_only:
        rows.append(run_de(train, test, args.seconds))
        b2mf = run_b2mf(args.data, test, args.seconds)
        if b2mf is not None:
            rows.append(b2mf)
    ours = [r for r in rows if r["method"].startswith("package")]
    for r in rows:
        if r["method"].startswith("package"):
            continue
        reach = [o["wall_s"] for o in ours if o["test"]["gamma"] >= r["best_test_gamma_seen"]]
        r["package_time_to_this_gamma_s"] = min(reach) if reach else None
        r["speedup_to_this_gamma"] = (round(r["time_to_best_s"] / min(reach), 1)
                                      if reach else None)
    record = {"machine": machine(), "load_average_before": load_before,
              "data": str(args.data.name), "fields": FIELDS, "bounds": BOUNDS, "start": START,
              "rows": rows}
    write_json(HERE / f"fitting_cells{suffix}.json", record)
    head = ["method", "test Γ(4 ms)", "Γ(2 ms)", "predicted ±2 ms", "rate model/cell (Hz)",
            "EV", "wall (s)", "to its best Γ (s)", "package to this Γ (s)"]
    body = [dict(zip(head, [
        r["method"], f"{r['test']['gamma']:.2f}", f"{r['test']['gamma_2ms']:.2f}",
        f"{r['test']['predicted']:.0%}",
        f"{r['test']['rate_model_hz']:.1f}/{r['test']['rate_data_hz']:.1f}",
        f"{r['test']['explained_variance']:.2f}", f"{r['wall_s']:.0f}",
        f"{r['time_to_best_s']:.0f}", str(r.get("package_time_to_this_gamma_s", ""))]))
        for r in rows]
    text = table(body, head)
    (HERE / f"fitting_cells{suffix}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
