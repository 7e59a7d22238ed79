"""Recordings of detailed cells the package did not make, for fitting reduced models.

The single-compartment cortical cells of Pospischil et al. (2008), Biol.
Cybern. 99:427 — Hodgkin–Huxley fast Na⁺ (I_Na = g_Na m³h (V − E_Na)),
delayed-rectifier K⁺ (I_Kd = g_Kd n⁴ (V − E_K)) and the slow M-type K⁺
current (I_M = g_M p (V − E_K), τ_p up to τ_max) — simulated in Brian2
(Cython target, exponential Euler, dt = 0.025 ms):

    C dV/dt = g_L (E_L − V) − I_Na − I_Kd − I_M + I(t)

with C = 1 µF/cm² and the membrane area π·d·L of the cell's soma. Cells:
``rs`` (regular spiking, the parameters fitted to a rat somatosensory
pyramidal cell) and ``fs`` (fast spiking).

The injected current I(t) (pA) is an Ornstein–Uhlenbeck process, τ = 5 ms,
mean μ and standard deviation σ, drawn exactly on the 0.1 ms grid and held
constant over each 0.1 ms step (the same current the fitted model sees).
Each sweep has its own seed and (μ, σ) level. Recorded: V at the end of
each 0.1 ms step plus Gaussian noise of 0.5 mV (mV), the spike times
(upward crossings of 0 mV, ms, interpolated on the 0.025 ms grid) and the
current.

Splits (2 s sweeps): ``train`` 4 sweeps, ``validation`` 2 (to choose among
starts), ``test`` 4 (to judge; other seeds and levels). Deterministic:
the same arguments write the same file.

    .venv/bin/python benchmarks/cells.py --cell rs --out benchmarks/cells_rs.npz
    .venv/bin/python benchmarks/cells.py --cell rs --seconds 1 --small \
        --out spark_somas/fitting/data/pospischil_rs.npz

``--regime fluctuating``: the mean current near the cell's rheobase and σ
twice as large (30–60 pA, σ 100–160 pA, about 7 Hz), where a spike follows a
fast upswing of the current; the default ``tonic`` levels (95–200 pA,
σ 35–70 pA, about 17 Hz) drive the cell far above rheobase, where its
adaptation sets the intervals.

``--small``: float32 arrays and a 0.5 s quiet sweep less — the shipped file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DT_SIM = 0.025  # ms, Brian2's step
DT = 0.1  # ms, the recording's
TAU_OU = 5.0  # ms
NOISE_MV = 0.5
SETTLE = 2000  # steps of 0.1 ms at rest before each sweep

CELLS = {
    # d = L (µm), g in S/cm², E in mV, τ_max ms, V_T mV (Pospischil et al. 2008, Table 1)
    "rs": dict(d=61.4, g_leak=2.05e-5, E_leak=-70.3, g_Na=0.056, g_Kd=0.006, g_M=7.5e-5,
               tau_max=608.0, V_T=-56.2),
    "fs": dict(d=56.9, g_leak=3.8e-5, E_leak=-70.4, g_Na=0.058, g_Kd=0.0039, g_M=7.87e-5,
               tau_max=502.0, V_T=-57.9),
}

# (seed, μ pA, σ pA) per sweep; the test levels differ from the training ones.
LEVELS = {
    "train": [(1, 100, 60), (2, 130, 40), (3, 160, 70), (4, 190, 35)],
    "validation": [(11, 115, 50), (12, 175, 55)],
    "test": [(21, 95, 70), (22, 140, 50), (23, 170, 40), (24, 200, 60)],
}
# Fluctuation-driven: the mean near the cell's rheobase and σ twice as large,
# so that a spike follows a fast upswing of the current (about 7 Hz).
FLUCTUATING = {
    "train": [(41, 40, 120), (42, 55, 100), (43, 30, 150), (44, 50, 130)],
    "validation": [(51, 45, 110), (52, 35, 140)],
    "test": [(31, 40, 120), (32, 50, 140), (33, 60, 100), (34, 30, 160)],
}
REGIMES = {"tonic": LEVELS, "fluctuating": FLUCTUATING}


def ou_current(seed: int, mean: float, sigma: float, steps: int) -> np.ndarray:
    """An Ornstein–Uhlenbeck current (pA) on the 0.1 ms grid, exact update:
    I ← μ + (I − μ)·e^{−dt/τ} + σ·√(1 − e^{−2dt/τ})·ξ, started at μ."""
    rng = np.random.default_rng(seed)
    decay = np.exp(-DT / TAU_OU)
    kick = sigma * np.sqrt(1 - decay**2) * rng.standard_normal(steps)
    out = np.empty(steps)
    x = 0.0
    for k in range(steps):
        x = x * decay + kick[k]
        out[k] = mean + x
    return out


def simulate_cell(cell: str, currents: np.ndarray, **changes: float
                  ) -> tuple[np.ndarray, list[np.ndarray]]:
    """The cell's potential (mV) at the end of each 0.1 ms step and its spike
    times (ms), for currents (S, T) in pA on the 0.1 ms grid; ``changes``
    replace entries of the cell's parameters (``CELLS``)."""
    import brian2 as b2

    b2.prefs.codegen.target = "cython"
    b2.start_scope()
    b2.defaultclock.dt = DT_SIM * b2.ms
    p = {**CELLS[cell], **changes}
    area = np.pi * (p["d"] * b2.um) ** 2
    ns = dict(
        C=1 * b2.uF / b2.cm**2 * area, g_L=p["g_leak"] * b2.siemens / b2.cm**2 * area,
        g_Na=p["g_Na"] * b2.siemens / b2.cm**2 * area,
        g_Kd=p["g_Kd"] * b2.siemens / b2.cm**2 * area,
        g_M=p["g_M"] * b2.siemens / b2.cm**2 * area, E_L=p["E_leak"] * b2.mV,
        E_Na=50 * b2.mV, E_K=-90 * b2.mV, V_T=p["V_T"] * b2.mV, tau_max=p["tau_max"] * b2.ms,
        # 200 ms at rest first, then the sweep's current.
        drive=b2.TimedArray(np.concatenate([np.zeros((SETTLE, len(currents))), currents.T])
                            * b2.pA, dt=DT * b2.ms),
    )
    eqs = """
    dv/dt = (g_L*(E_L - v) - g_Na*m**3*h*(v - E_Na) - g_Kd*n**4*(v - E_K)
             - g_M*p*(v - E_K) + drive(t, i)) / C : volt
    dm/dt = alpha_m*(1 - m) - beta_m*m : 1
    dh/dt = alpha_h*(1 - h) - beta_h*h : 1
    dn/dt = alpha_n*(1 - n) - beta_n*n : 1
    dp/dt = (p_inf - p)/tau_p : 1
    alpha_m = 0.32/mV*4*mV/exprel(-(v - V_T - 13*mV)/(4*mV))/ms : Hz
    beta_m = 0.28/mV*5*mV/exprel((v - V_T - 40*mV)/(5*mV))/ms : Hz
    alpha_h = 0.128*exp(-(v - V_T - 17*mV)/(18*mV))/ms : Hz
    beta_h = 4/(1 + exp(-(v - V_T - 40*mV)/(5*mV)))/ms : Hz
    alpha_n = 0.032/mV*5*mV/exprel(-(v - V_T - 15*mV)/(5*mV))/ms : Hz
    beta_n = 0.5*exp(-(v - V_T - 10*mV)/(40*mV))/ms : Hz
    p_inf = 1/(1 + exp(-(v + 35*mV)/(10*mV))) : 1
    tau_p = tau_max/(3.3*exp((v + 35*mV)/(20*mV)) + exp(-(v + 35*mV)/(20*mV))) : second
    """
    group = b2.NeuronGroup(len(currents), eqs, method="exponential_euler", namespace=ns)
    group.v = p["E_leak"] * b2.mV
    group.m, group.h, group.n, group.p = 0.0, 1.0, 0.0, 0.0
    monitor = b2.StateMonitor(group, "v", record=True)
    b2.run((SETTLE + currents.shape[1]) * DT * b2.ms, namespace=ns)
    fine = (monitor.v / b2.mV)[:, 4 * SETTLE:]  # (S, 4T), at the start of each fine step
    end = np.concatenate([fine[:, 1:], fine[:, -1:]], axis=1)  # at its end
    potential = end[:, 3::4]
    times = []
    for v in end:
        up = np.nonzero((v[:-1] < 0) & (v[1:] >= 0))[0]
        frac = -v[up] / (v[up + 1] - v[up])
        times.append((up + 1 + frac) * DT_SIM)  # fine step k ends at (k + 1)·dt
    return potential, times


def make(cell: str, seconds: float, regime: str = "tonic") -> dict[str, np.ndarray]:
    """Every split of ``cell`` under the currents of ``regime``: currents
    (S, T) pA, potential (S, T) mV with noise, and spike times per sweep, as
    arrays for :func:`numpy.savez`."""
    steps = int(round(seconds * 1000.0 / DT))
    out: dict[str, np.ndarray] = {"dt": np.float64(DT), "cell": np.array(cell)}
    for split, levels in REGIMES[regime].items():
        currents = np.stack([ou_current(s, m, sd, steps) for s, m, sd in levels])
        potential, times = simulate_cell(cell, currents)
        rng = np.random.default_rng(1000 + len(split))
        out[f"{split}_currents"] = currents
        out[f"{split}_potential"] = potential + NOISE_MV * rng.standard_normal(potential.shape)
        out[f"{split}_spike_counts"] = np.array([len(t) for t in times])
        out[f"{split}_spike_times"] = np.concatenate(times)
    return out


def load(path: str | Path, split: str, dtype=np.float64):
    """(currents, potential, spike_times) of one split of a file written
    by :func:`make`: lists of per-sweep arrays."""
    with np.load(path) as f:
        currents = list(f[f"{split}_currents"].astype(dtype))
        potential = list(f[f"{split}_potential"].astype(dtype))
        counts = f[f"{split}_spike_counts"]
        flat = f[f"{split}_spike_times"].astype(np.float64)
    times = np.split(flat, np.cumsum(counts)[:-1])
    return currents, potential, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", choices=sorted(CELLS), default="rs")
    parser.add_argument("--seconds", type=float, default=2.0, help="per sweep")
    parser.add_argument("--regime", choices=sorted(REGIMES), default="tonic",
                        help="tonic: the mean well above rheobase; fluctuating: near it")
    parser.add_argument("--small", action="store_true", help="float32 arrays")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    data = make(args.cell, args.seconds, args.regime)
    if args.small:
        data = {k: (v.astype(np.float32) if k.endswith(("_currents", "_potential")) else v)
                for k, v in data.items()}
    np.savez_compressed(args.out, **data)
    for split in LEVELS:
        counts = data[f"{split}_spike_counts"]
        print(f"{split}: spikes {counts.tolist()} in {args.seconds:g} s sweeps "
              f"({np.mean(counts) / args.seconds:.1f} Hz mean)")


if __name__ == "__main__":
    main()
