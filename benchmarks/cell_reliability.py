"""How tightly the detailed cell's stimulus fixes its spike times: the cell against itself.

The ceiling of any fit's held-out Γ on ``benchmarks/cells.py``'s recordings
is set by how much the cell's spike times move when the cell itself changes
a little. Each row simulates the regular-spiking cell on the test sweeps
with one small change — a conductance a few percent off, the kinetics'
threshold shifted by half a millivolt, the current scaled by 2 %, or a
weak independent noise current added — and scores its spikes against the
unchanged cell's with the fitting's Γ (Δ = 4 and 2 ms, the mean over the
sweeps) and the fraction of the cell's spikes within ±2 ms. A reduced model
is further from the cell than any of these changes, so a Γ well below 1
here bounds what a fit can reach on the same stimulus.

Two stimuli: the benchmark's own test sweeps (mean 95–200 pA, σ 40–70 pA:
the cell fires tonically and its adaptation sets the intervals), and
fluctuation-driven sweeps (mean near rheobase, σ twice as large), where a
spike follows a fast upswing of the current.

    .venv/bin/python benchmarks/cell_reliability.py

Writes benchmarks/cell_reliability.json and .md.
"""

from __future__ import annotations

import numpy as np

from spark_somas import fitting

import cells
from _common import HERE, machine, table, write_json

SECONDS = 2.0
STIMULI = {
    "benchmark test sweeps": cells.LEVELS["test"],
    "fluctuation-driven": cells.FLUCTUATING["test"],
}
CELL = cells.CELLS["rs"]
NOISE_SEED = 77
CHANGES = {
    "g_M +5 %": dict(g_M=CELL["g_M"] * 1.05),
    "g_Na +2 %": dict(g_Na=CELL["g_Na"] * 1.02),
    "g_leak +5 %": dict(g_leak=CELL["g_leak"] * 1.05),
    "kinetics' V_T +0.5 mV": dict(V_T=CELL["V_T"] + 0.5),
    "current ×1.02": dict(scale=1.02),
    "noise current σ 10 pA": dict(noise=10.0),
}


def run(currents: np.ndarray, change: dict) -> list[np.ndarray]:
    change = dict(change)
    currents = currents * change.pop("scale", 1.0)
    noise = change.pop("noise", 0.0)
    if noise:
        currents = currents + noise * np.random.default_rng(NOISE_SEED).standard_normal(
            currents.shape)
    return cells.simulate_cell("rs", currents, **change)[1]


def rate_hz(trains: list[np.ndarray]) -> float:
    """The mean rate of the sweeps' spike trains (Hz)."""
    return sum(map(len, trains)) / len(trains) / SECONDS


def score(model: list[np.ndarray], data: list[np.ndarray], duration: float) -> dict:
    g4 = [fitting.coincidence_factor(m, d, duration) for m, d in zip(model, data)]
    g2 = [fitting.coincidence_factor(m, d, duration, delta=2.0) for m, d in zip(model, data)]
    hit = [fitting.predicted_fraction(m, d) for m, d in zip(model, data)]
    return {"gamma_4ms": round(float(np.nanmean(g4)), 3),
            "gamma_2ms": round(float(np.nanmean(g2)), 3),
            "predicted_2ms": round(float(np.nanmean(hit)), 3),
            "rate_hz": round(rate_hz(model), 1)}


def main() -> None:
    steps = int(round(SECONDS * 1000.0 / cells.DT))
    rows, results = [], {}
    for stimulus, levels in STIMULI.items():
        currents = np.stack([cells.ou_current(s, m, sd, steps) for s, m, sd in levels])
        reference = run(currents, {})
        rate = rate_hz(reference)
        results[stimulus] = {"cell_rate_hz": round(rate, 1), "changes": {}}
        for name, change in CHANGES.items():
            r = score(run(currents, change), reference, SECONDS * 1000.0)
            results[stimulus]["changes"][name] = r
            rows.append({"stimulus": stimulus, "cell rate (Hz)": f"{rate:.1f}",
                         "the cell changed by": name, "Γ(4 ms)": r["gamma_4ms"],
                         "Γ(2 ms)": r["gamma_2ms"],
                         "predicted ±2 ms": f"{100 * r['predicted_2ms']:.0f}%",
                         "rate (Hz)": r["rate_hz"]})
            print(rows[-1], flush=True)
    write_json(HERE / "cell_reliability.json", {"machine": machine(), "results": results})
    (HERE / "cell_reliability.md").write_text(table(rows, list(rows[0])) + "\n")


if __name__ == "__main__":
    main()
