"""Which integration method at which dt: cost per step and spike-time error.

For each method (``euler``, ``rk2``, ``rk4``, ``exponential_euler``):

* **cost**: forward ``simulate`` of an AdEx population of N = 10^4 neurons,
  T = 1000 steps (spikes and potential recorded), least wall time over
  interleaved repeats, in ns per neuron-step, and as a ratio to Euler's.
* **error**: 32 AdEx neurons (Brette & Gerstner 2005 defaults) under constant
  currents from 600 to 2150 pA for 500 ms, at dt ∈ {0.01, 0.03, 0.1, 0.3,
  1} ms, in float64, against ``rk4`` at dt = 0.001 ms. Per neuron the first
  k spikes are paired with the reference's (k the smaller count); reported:
  the mean |t − t_ref| over all pairs (ms) and the mean |count − count_ref|.

    python benchmarks/methods.py [--out benchmarks/methods.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import spark_somas as ss  # noqa: E402
from spark_somas import integrators  # noqa: E402

DURATION_MS = 500.0
CURRENTS = np.linspace(600.0, 2150.0, 32)
DTS = (0.01, 0.03, 0.1, 0.3, 1.0)


def spike_times(method: str, dt: float) -> list[np.ndarray]:
    steps = int(round(DURATION_MS / dt))
    with jax.enable_x64(True):
        soma = ss.AdaptiveExponentialSoma(units=len(CURRENTS), dt=dt, method=method,
                                          dtype=jnp.float64, param_dtype=jnp.float64)
        x = jnp.broadcast_to(jnp.asarray(CURRENTS), (steps, len(CURRENTS)))
        spikes = np.asarray(ss.simulate(soma, x, record=("spikes",)).spikes)
    return [(np.flatnonzero(column) + 1) * dt for column in spikes.T]


def error(times: list[np.ndarray], reference: list[np.ndarray]) -> tuple[float, float]:
    gaps, counts = [], []
    for mine, ref in zip(times, reference):
        k = min(len(mine), len(ref))
        gaps.extend(np.abs(mine[:k] - ref[:k]))
        counts.append(abs(len(mine) - len(ref)))
    return float(np.mean(gaps)), float(np.mean(counts))


def cost(repeats: int) -> dict[str, float]:
    n, steps = 10_000, 1000
    x = (600.0 + 900.0 * jax.random.uniform(jax.random.key(0), (steps, n))).astype(jnp.float32)
    fns = {}
    for method in integrators.METHODS:
        soma = ss.AdaptiveExponentialSoma(units=n, method=method)
        fns[method] = lambda soma=soma: ss.simulate(soma, x).potential
        jax.block_until_ready(fns[method]())
    best = _common.best_times(fns, repeats)
    return {m: best[m]["wall_s"] / (n * steps) * 1e9 for m in fns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(_common.HERE / "methods.json"))
    args = parser.parse_args()
    info = _common.machine()
    print(info)
    ns = cost(args.repeats)
    reference = spike_times("rk4", 0.001)
    rows = []
    for method in integrators.METHODS:
        row = {"method": method, "ns_per_neuron_step": ns[method],
               "cost_vs_euler": ns[method] / ns["euler"]}
        for dt in DTS:
            gap, count = error(spike_times(method, dt), reference)
            row[f"dt={dt} |Δt| ms"] = gap
            row[f"dt={dt} |Δn|"] = count
        rows.append(row)
        print(_common.table([row], list(row)), flush=True)
    info["load_average_end"] = _common.machine()["load_average"]
    columns = ["method", "ns_per_neuron_step", "cost_vs_euler"] + [
        f"dt={dt} |Δt| ms" for dt in DTS]
    print(_common.table(rows, columns))
    print(_common.table(rows, ["method"] + [f"dt={dt} |Δn|" for dt in DTS]))
    _common.write_json(args.out, {"machine": info, "reference": "rk4, dt = 0.001 ms, float64",
                                  "spikes_in_reference": int(sum(len(t) for t in reference)),
                                  "rows": rows})


if __name__ == "__main__":
    main()
