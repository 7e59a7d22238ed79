"""AdEx neuron-steps/s: spark_somas against its peers, in one run.

Same workload for everyone: N AdEx neurons, Brette & Gerstner's (2005)
parameters (E_L = V_r = -70.6 mV, V_T = -50.4 mV, Δ_T = 2 mV, V_th = -40.4 mV,
τ_m = 9.37 ms, R = 1/30 GΩ, a = 4 nS, b = 80.5 pA, τ_w = 144 ms), dt = 0.1 ms,
T steps, the same time-varying input I[t, n] = 600 + 400·u_n + 100·ξ[t, n] pA
(float32 array, as in throughput.py), and each run records the spikes and the
potential of every neuron at every step. Where a peer's model or integrator
differs, the row says so:

* ``spark_somas`` — ``ss.simulate`` (``backend="scan"``), float32.
* ``brainpy`` — ``brainpy.dyn.AdExIF`` (BrainPy 2.x), ``method="euler"``,
  ``bm.for_loop`` under ``bm.jit``, float32. Spikes at V ≥ V_th.
* ``brainpy.state`` — ``brainpy.state.AdExIF`` (brainstate, physical units),
  ``brainstate.transform.for_loop`` under ``jit``, float32: its only
  integrator is exponential Euler (a JVP per step) and it resets at the start
  of the next step.
* ``norse`` — ``norse.torch.LIFAdEx`` (PyTorch, CPU, float32, no grad), with
  recorded states: its exponential is pivoted at its threshold (set to
  V_T = -50.4 mV, the spike cut-off then being V_T) and it has a synaptic
  current, here made instantaneous (τ_syn = dt); input R·I in mV.
* ``brian2-numpy`` / ``brian2-cython`` — a ``NeuronGroup`` with the package's
  equations, ``method="euler"``, input through a 2-D ``TimedArray``,
  ``StateMonitor`` + ``SpikeMonitor``; float64 (Brian2's only choice). Cython
  code is compiled on the warm-up run and cached; timed runs reuse it.

Every library is timed in the same process, interleaved round by round
(least wall and CPU time of the rounds); "speedup" is the peer's time over
spark_somas's. Peers come from the optional ``bench`` extra; a missing one is
reported as such. Run from the bench venv (benchmarks/README.md):

    .venv-bench/bin/python benchmarks/peers.py [--sizes 1e3 1e4 1e5] [--steps 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import spark_somas as ss  # noqa: E402

DT = 0.1  # ms
P = dict(E_L=-70.6, V_r=-70.6, V_T=-50.4, delta_T=2.0, V_th=-40.4, tau_m=9.37, R=1.0 / 30.0,
         a=4.0, b=80.5, tau_w=144.0)


def make_currents(n: int, steps: int) -> jax.Array:
    k1, k2 = jax.random.split(jax.random.key(0))
    return (600.0 + 400.0 * jax.random.uniform(k1, (n,))
            + 100.0 * jax.random.normal(k2, (steps, n))).astype(jnp.float32)


def spark(currents: jax.Array) -> Callable[[], int]:
    soma = ss.AdaptiveExponentialSoma(units=currents.shape[1], dt=DT)

    def run():
        soma.reset()
        rec = ss.simulate(soma, currents, backend="scan")
        return rec.spikes.sum(), rec.potential

    return run


def brainpy_dyn(currents: jax.Array) -> Callable[[], int]:
    import brainpy as bp
    import brainpy.math as bm

    bm.set_dt(DT)
    steps, n = currents.shape
    neurons = bp.dyn.AdExIF(n, V_rest=P["E_L"], V_reset=P["V_r"], V_th=P["V_th"], V_T=P["V_T"],
                            delta_T=P["delta_T"], a=P["a"], b=P["b"], tau=P["tau_m"],
                            tau_w=P["tau_w"], R=P["R"], method="euler",
                            V_initializer=bp.init.Constant(P["E_L"]))

    def body(i, x):
        neurons.step_run(i, x)
        return neurons.spike.value, neurons.V.value

    loop = bm.jit(lambda c: bm.for_loop(body, (jnp.arange(steps), c)))

    def run():
        neurons.reset_state()
        spikes, potential = loop(currents)
        return spikes.sum(), potential

    return run


def brainpy_state(currents: jax.Array) -> Callable[[], int]:
    import brainstate
    import braintools
    import brainunit as u
    import brainpy.state as bps

    brainstate.environ.set(dt=DT * u.ms)
    neurons = bps.AdExIF(
        currents.shape[1], R=P["R"] * u.Gohm, tau=P["tau_m"] * u.ms, tau_w=P["tau_w"] * u.ms,
        V_th=P["V_th"] * u.mV, V_reset=P["V_r"] * u.mV, V_rest=P["E_L"] * u.mV,
        V_T=P["V_T"] * u.mV, delta_T=P["delta_T"] * u.mV, a=P["a"] * u.nS, b=P["b"] * u.pA,
        V_initializer=braintools.init.Constant(P["E_L"] * u.mV),
        w_initializer=braintools.init.Constant(0.0 * u.pA), spk_reset="hard")
    brainstate.nn.init_all_states(neurons)

    @brainstate.transform.jit
    def loop(c):
        def step(x):
            spikes = neurons.update(x * u.pA)
            return spikes > 0, neurons.V.value.to_decimal(u.mV)

        return brainstate.transform.for_loop(step, c)

    def run():
        brainstate.nn.reset_all_states(neurons)
        spikes, potential = loop(currents)
        return spikes.sum(), potential

    return run


def norse(currents: jax.Array) -> Callable[[], int]:
    import torch
    import norse.torch as nt

    torch.set_num_threads(os.cpu_count() or 1)
    p = nt.LIFAdExParameters(
        adaptation_current=torch.as_tensor(P["a"] * P["R"]),  # a·R: w in mV, as R·w
        adaptation_spike=torch.as_tensor(P["b"] * P["R"]), delta_T=torch.as_tensor(P["delta_T"]),
        tau_ada_inv=torch.as_tensor(1.0 / P["tau_w"]), tau_syn_inv=torch.as_tensor(1.0 / DT),
        tau_mem_inv=torch.as_tensor(1.0 / P["tau_m"]), v_leak=torch.as_tensor(P["E_L"]),
        v_th=torch.as_tensor(P["V_T"]), v_reset=torch.as_tensor(P["V_r"]))
    layer = nt.LIFAdEx(p, dt=DT, record_states=True)
    drive = torch.from_numpy(np.asarray(currents) * P["R"])
    n = drive.shape[1]
    state0 = nt.LIFAdExFeedForwardState(v=torch.full((n,), P["E_L"]), i=torch.zeros(n),
                                        a=torch.zeros(n))

    def run():
        with torch.no_grad():
            spikes, states = layer(drive, state0)
        return spikes.sum(), states.v

    return run


def brian2(currents: jax.Array, target: str) -> Callable[[], int]:
    import brian2 as b2

    b2.prefs.codegen.target = target
    b2.prefs.logging.console_log_level = "ERROR"
    steps, n = currents.shape
    drive = b2.TimedArray(np.asarray(currents, np.float64) * b2.pA, dt=DT * b2.ms)
    eqs = """
    dv/dt = (-(v - E_L) + DeltaT*exp((v - VT)/DeltaT) - R*w + R*I)/tau_m : volt
    dw/dt = (a*(v - E_L) - w)/tau_w : amp
    I = drive(t, i) : amp
    """
    ns = dict(E_L=P["E_L"] * b2.mV, VT=P["V_T"] * b2.mV, DeltaT=P["delta_T"] * b2.mV,
              R=P["R"] * b2.Gohm, tau_m=P["tau_m"] * b2.ms, a=P["a"] * b2.nS,
              tau_w=P["tau_w"] * b2.ms, Vth=P["V_th"] * b2.mV, Vr=P["V_r"] * b2.mV,
              b=P["b"] * b2.pA, drive=drive)

    def run():
        b2.start_scope()
        b2.defaultclock.dt = DT * b2.ms
        group = b2.NeuronGroup(n, eqs, threshold="v > Vth", reset="v = Vr; w += b",
                               method="euler", namespace=ns)
        group.v = P["E_L"] * b2.mV
        spikes, trace = b2.SpikeMonitor(group), b2.StateMonitor(group, "v", record=True)
        net = b2.Network(group, spikes, trace)
        net.run(steps * DT * b2.ms, namespace=ns)
        return spikes.num_spikes, trace.v

    return run


PEERS: dict[str, Callable] = {
    "brainpy": brainpy_dyn,
    "brainpy.state": brainpy_state,
    "norse": norse,
    "brian2-numpy": lambda c: brian2(c, "numpy"),
    "brian2-cython": lambda c: brian2(c, "cython"),
}


def measure(n: int, steps: int, repeats: int, peers: list[str]) -> dict:
    currents = make_currents(n, steps)
    fns, row = {"spark_somas": spark(currents)}, {"N": n, "T": steps}
    for name in peers:
        try:
            fns[name] = PEERS[name](currents)
        except ImportError as e:
            row[name] = f"not installed ({e.name})"
    for name, fn in list(fns.items()):  # warm-up: compile, check it fires
        try:
            count, _ = fn()
            row[f"{name}_spikes"] = int(count)
        except Exception as e:  # a peer that fails is reported, not fatal
            row[name] = f"failed: {type(e).__name__}: {e}"[:200]
            del fns[name]
    times = _common.best_times(fns, repeats)
    base = times["spark_somas"]["wall_s"]
    for name, t in times.items():
        row[f"{name}_neuron_steps_per_s"] = n * steps / t["wall_s"]
        row[f"{name}_cpu_s"] = t["cpu_s"]
        if name != "spark_somas":
            row[f"{name}_speedup"] = t["wall_s"] / base
            row[f"{name}_speedup_cpu"] = t["cpu_s"] / times["spark_somas"]["cpu_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e3, 1e4, 1e5])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS))
    parser.add_argument("--out", default=str(_common.HERE / "peers.json"))
    args = parser.parse_args()
    info = _common.machine()
    print(info)
    rows = []
    for n in (int(s) for s in args.sizes):
        rows.append(measure(n, args.steps, args.repeats, args.peers))
        print({k: v for k, v in rows[-1].items()}, flush=True)
    info["load_average_end"] = _common.machine()["load_average"]
    columns = ["N"] + [f"{p}_speedup" for p in args.peers]
    print("spark_somas speedup over each peer (peer time / spark_somas time):")
    print(_common.table(rows, columns))
    _common.write_json(args.out, {"machine": info, "rows": rows})


if __name__ == "__main__":
    main()
