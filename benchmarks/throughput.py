"""Neuron-steps/s of ``ss.simulate`` for AdEx against a plain ``lax.scan`` floor.

The floor is the same forward-Euler AdEx update (docs/models.md, "Equations") written
inline below with the default parameters as Python constants, in a jitted
``lax.scan`` that records the same outputs (spikes and potential per step),
without any of the library's guards (capped exponential, saturating casts,
surrogate spike, Variables). The ratio library/floor time is the library's
cost over the plainest compiled loop; the target is ≤ 1.25 at
N ≥ 10^4. Both wall and process-CPU times are reported (least of the
interleaved repeats): on a CPU shared with other jobs, the CPU-time ratio is
the steadier one.

Input: I[t, n] = 600 + 400·u_n + 100·ξ[t, n] pA (u uniform per neuron,
ξ standard normal per step and neuron; rheobase is ≈ 546 pA, so most
neurons fire). It is one (T_c, N) float32 array with T_c = min(T,
⌊10^8/N⌋): at N ≤ 10^5 the whole run; at N = 10^6, 100 steps fed 10 times
(the state carries over, exactly as one long call), so that input and
recorded outputs stay under 1.2 GB per side instead of 12 GB. Both sides
get the same arrays in the same chunks.

    python benchmarks/throughput.py [--sizes 1e3 1e4 1e5 1e6] [--steps 1000]
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

CHUNK_ELEMENTS = 10**8


def plain_adex(p: dict[str, float], dt: float):
    """The documented AdEx Euler step, plain jnp, constants folded."""

    def step(carry, current):
        v, w = carry
        exp_term = p["spike_slope"] * jnp.exp((v - p["rheobase_threshold"]) / p["spike_slope"])
        v_new = v + dt / p["potential_tau"] * (
            -(v - p["potential_rest"]) + exp_term - p["resistance"] * w + p["resistance"] * current)
        w_new = w + dt / p["adaptation_tau"] * (p["adaptation_subthreshold"] * (v - p["potential_rest"]) - w)
        spiked = v_new > p["threshold"]
        v_new = jnp.where(spiked, p["potential_reset"], v_new)
        w_new = jnp.where(spiked, w_new + p["adaptation_delta"], w_new)
        return (v_new, w_new), (spiked.astype(v.dtype), v_new)

    @jax.jit
    def run(state, currents):
        return jax.lax.scan(step, state, currents)

    return run


def measure(n: int, steps: int, repeats: int) -> dict:
    chunk = max(1, min(steps, CHUNK_ELEMENTS // n))
    if steps % chunk:
        raise ValueError(f"steps = {steps} must be a multiple of the chunk {chunk} at N = {n}")
    k1, k2 = jax.random.split(jax.random.key(0))
    currents = (600.0 + 400.0 * jax.random.uniform(k1, (n,))
                + 100.0 * jax.random.normal(k2, (chunk, n))).astype(jnp.float32)
    soma = ss.AdaptiveExponentialSoma(units=n)
    params = {k: float(v) for k, v in soma.parameters().items()}
    floor = plain_adex(params, soma.dt)
    rest = (jnp.full((n,), params["potential_rest"], jnp.float32), jnp.zeros((n,), jnp.float32))

    def library():
        for _ in range(steps // chunk):
            rec = ss.simulate(soma, currents)
        return rec, soma.potential[...]

    def plain():
        state = rest
        for _ in range(steps // chunk):
            state, rec = floor(state, currents)
        return rec, state

    # One run of each from rest: agreement check (and compilation).
    soma.reset()
    lib_rec, _ = library()
    (floor_spikes, _), _ = plain()
    lib_spikes = np.asarray(lib_rec.spikes)
    floor_spikes = np.asarray(floor_spikes)
    agree = float(np.mean(lib_spikes == floor_spikes))
    counts = (int(lib_spikes.sum()), int(floor_spikes.sum()))
    del lib_rec, lib_spikes, floor_spikes

    t = _common.best_times({"library": library, "floor": plain}, repeats)
    work = n * steps
    return {
        "N": n, "T": steps, "chunk": chunk, "repeats": repeats,
        **{f"{side}_{k}": v for side in t for k, v in t[side].items()},
        "library_neuron_steps_per_s": work / t["library"]["wall_s"],
        "floor_neuron_steps_per_s": work / t["floor"]["wall_s"],
        "ratio_wall": t["library"]["wall_s"] / t["floor"]["wall_s"],
        "ratio_cpu": t["library"]["cpu_s"] / t["floor"]["cpu_s"],
        "spikes_library_last_chunk": counts[0], "spikes_floor_last_chunk": counts[1],
        "spike_entries_equal": agree,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e3, 1e4, 1e5, 1e6])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=str(_common.HERE / "throughput.json"))
    args = parser.parse_args()
    info = _common.machine()
    print(info)
    rows = []
    for n in (int(s) for s in args.sizes):
        repeats = args.repeats if n * args.steps <= 10**8 else max(2, args.repeats // 3)
        row = measure(n, args.steps, repeats)
        print(_common.table([row], COLUMNS), flush=True)
        rows.append(row)
    info["load_average_end"] = _common.machine()["load_average"]
    print(_common.table(rows, COLUMNS))
    _common.write_json(args.out, {"machine": info, "rows": rows})


COLUMNS = ["N", "T", "library_neuron_steps_per_s", "floor_neuron_steps_per_s", "ratio_wall",
           "ratio_cpu", "spike_entries_equal"]

if __name__ == "__main__":
    main()
