"""brian2modelfitting's fit of an AdEx to a recording of benchmarks/cells.py.

Runs in its own environment (brian2modelfitting needs an old stack; see
benchmarks/README.md): ``python fitting_cells_b2mf.py DATA.npz OUT.json
SECONDS``. SpikeFitter (Brian2, exponential Euler, dt = 0.1 ms) with
Nevergrad's differential evolution (30 samples a round) on the Γ factor
(Δ = 4 ms) of the training sweeps, the same fields and bounds as
benchmarks/fitting_cells.py, for up to SECONDS of wall time. Writes each
round's elapsed time, best error and best parameters.
"""

import json
import sys
import time

import numpy as np
from brian2 import Gohm, ms, mV, nS, pA, prefs, second
from brian2modelfitting import GammaFactor, NevergradOptimizer, SpikeFitter

EQUATIONS = """
dv/dt = (E_L - v + Delta_T*exp((v - V_T)/Delta_T) - R*w + R*I)/tau_m : volt
dw/dt = (a*(v - E_L) - w)/tau_w : amp
E_L : volt (constant)
R : ohm (constant)
tau_m : second (constant)
V_T : volt (constant)
Delta_T : volt (constant)
a : siemens (constant)
tau_w : second (constant)
b : amp (constant)
V_r : volt (constant)
"""
# name: (low, high, unit), the bounds of benchmarks/fitting_cells.py
BOUNDS = {"E_L": (-85, -50, mV), "R": (0.02, 3.0, Gohm), "tau_m": (1, 200, ms),
          "V_T": (-70, -30, mV), "Delta_T": (0.2, 10.0, mV), "a": (-2, 20, nS),
          "tau_w": (5, 2000, ms), "b": (0, 300, pA), "V_r": (-85, -40, mV)}


def main() -> None:
    data_path, out_path, budget = sys.argv[1], sys.argv[2], float(sys.argv[3])
    prefs.codegen.target = "cython"
    with np.load(data_path) as f:
        currents = f["train_currents"]
        counts = f["train_spike_counts"]
        times = np.split(f["train_spike_times"], np.cumsum(counts)[:-1])
        dt = float(f["dt"])
    duration = currents.shape[1] * dt
    fitter = SpikeFitter(model=EQUATIONS, input=currents * pA, input_var="I",
                         output=[t * ms for t in times], dt=dt * ms, n_samples=30,
                         threshold="v > 0*mV", reset="v = V_r; w += b",
                         method="exponential_euler", param_init={"v": -70 * mV, "w": 0 * pA})
    rounds = []
    t0 = time.perf_counter()

    def callback(params, errors, best_params, best_error, index):
        rounds.append({"round": int(index), "elapsed_s": time.perf_counter() - t0,
                       "best_error": float(best_error),
                       "best": {k: float(v / BOUNDS[k][2]) for k, v in best_params.items()}})
        return rounds[-1]["elapsed_s"] > budget

    fitter.fit(n_rounds=100000, optimizer=NevergradOptimizer("DE"),
               metric=GammaFactor(delta=4 * ms, time=duration * ms), callback=callback,
               **{k: [lo * u, hi * u] for k, (lo, hi, u) in BOUNDS.items()})
    with open(out_path, "w") as f:
        json.dump({"rounds": rounds, "samples_per_round": 30}, f)


if __name__ == "__main__":
    main()
