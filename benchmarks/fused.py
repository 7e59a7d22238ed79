"""Scan vs fused kernels: throughput, BPTT memory, training step.

Modes (``--mode``, default all):

* ``throughput`` — AdEx, float32, T = 1000, N = 2^10 … 2^20 neurons:
  forward (records spikes and potential) and forward+backward (gradient of a
  loss on both with respect to the input current and the trained τ_m, V_th)
  in neuron-steps/s, for ``backend="scan"`` and ``backend="fused"``, with
  the device's copy bandwidth measured in the same run (a jitted
  ``x + 1`` over the same (T, N) array: the roofline of a kernel that reads
  the current and writes spikes and potential, 12 bytes per neuron-step).
  Off a GPU the fused kernels run in Pallas interpret mode (XLA while loops,
  not a kernel): those rows say nothing about GPU speed. A configuration
  whose compiled buffers exceed ``--max-gb`` is skipped and says so.
* ``memory`` — BPTT through T = 10^4 steps: peak memory of the compiled
  forward+backward (``Compiled.memory_analysis()``: arguments + outputs +
  temporaries) for the scan with remat off, ⌈√T⌉ segments and 100-step
  segments, and for the fused kernels with checkpoints every step and every
  ⌈√T⌉ steps; then runs the √T-segment scan once to show it completes.
* ``network`` — BPTT (the gradient with respect to every Param) through a
  recurrent AdEx network with synapses (64 inputs, 128 somas, 16 classes),
  batch 64, T = ``--network-steps``: peak memory of the compiled program
  and its time, for the scan and the fused kernels, each with remat off and
  ⌈√T⌉ segments, as ratios to the plain scan.
* ``train`` — one jitted Optax train step of the ready network
  (``spark_somas.training``: 64 inputs, 128 recurrent AdEx somas with
  synapses, 16 classes), batch 128, T = 100, with each backend of
  ``--train-backends`` (default: scan and fused on a GPU, the scan
  elsewhere, where the kernels are interpreted), and the ratio to the scan.

    python benchmarks/fused.py [--mode throughput memory network train] [--max-gb 6]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import spark_somas as ss  # noqa: E402

TRAINED = ("potential_tau", "threshold")


def _currents(steps: int, n: int) -> jax.Array:
    k1, k2 = jax.random.split(jax.random.key(0))
    return (600.0 + 400.0 * jax.random.uniform(k1, (n,))
            + 100.0 * jax.random.normal(k2, (steps, n))).astype(jnp.float32)


def _programs(n: int, backend: str, remat):
    """Pure jitted forward and forward+backward over (soma state, currents),
    and that state: an AdEx soma of n neurons training τ_m and V_th."""
    graphdef, state = nnx.split(ss.AdaptiveExponentialSoma(units=n, trainable=TRAINED))

    def simulate(soma, currents):
        rec = ss.simulate(soma, currents, backend=backend, remat=remat)
        return rec.spikes, rec.potential

    def loss(soma, currents):
        spikes, potential = simulate(soma, currents)
        return jnp.mean(spikes) + 1e-3 * jnp.mean(potential)

    def run(state, currents):
        return simulate(nnx.merge(graphdef, state), currents)

    def backward(state, currents):
        return nnx.grad(loss, argnums=(0, 1))(nnx.merge(graphdef, state), currents)

    return jax.jit(run), jax.jit(backward), state


def _peak_bytes(program, *args) -> int:
    """Arguments + outputs + temporaries of the compiled program (bytes)."""
    m = program.lower(*args).compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def throughput(args) -> list[dict]:
    rows = []
    for log_n in args.log2_sizes:
        n = 1 << log_n
        currents = _currents(args.steps, n)
        copy = jax.jit(lambda x: x + 1.0)
        t_copy = _common.best_times({"copy": lambda: copy(currents)}, args.repeats)["copy"]["wall_s"]
        bandwidth = 2 * currents.size * 4 / t_copy
        for mode in ("forward", "forward+backward"):
            row = {"N": n, "T": args.steps, "mode": mode, "copy_GBps": bandwidth / 1e9,
                   "roofline_neuron_steps_per_s": bandwidth / 12}
            fns = {}
            for backend in ("scan", "fused"):
                if backend == "fused" and args.fused_max_n and n > args.fused_max_n:
                    row["fused"] = f"skipped (N > --fused-max-n {args.fused_max_n})"
                    continue
                forward, backward, state = _programs(n, backend, False)
                program = forward if mode == "forward" else backward
                need = _peak_bytes(program, state, currents)
                row[f"{backend}_GB"] = need / 1e9
                if need > args.max_gb * 1e9:
                    row[backend] = f"skipped (needs {need / 1e9:.1f} GB > --max-gb)"
                    continue
                jax.block_until_ready(program(state, currents))  # compile
                fns[backend] = lambda p=program, s=state: p(s, currents)
            times = _common.best_times(fns, args.repeats if n < (1 << 18) else max(2, args.repeats // 2))
            for backend, t in times.items():
                row[f"{backend}_neuron_steps_per_s"] = n * args.steps / t["wall_s"]
                row[f"{backend}_cpu_s"] = t["cpu_s"]
            if len(times) == 2:
                row["fused_over_scan"] = times["scan"]["wall_s"] / times["fused"]["wall_s"]
            print(_common.table([row], THROUGHPUT_COLUMNS), flush=True)
            rows.append(row)
        del currents
    return rows


def memory(args) -> list[dict]:
    steps, n = args.memory_steps, args.memory_n
    currents = _currents(steps, n)
    rows = []
    sqrt_t = math.isqrt(steps - 1) + 1
    for backend, remat in (("scan", False), ("scan", True), ("scan", 100),
                           ("fused", False), ("fused", True)):
        _, backward, state = _programs(n, backend, remat)
        peak = _peak_bytes(backward, state, currents)
        rows.append({"backend": backend, "remat": str(remat), "T": steps, "N": n,
                     "segment": {False: 1, True: sqrt_t}.get(remat, remat),
                     "peak_MB": peak / 2**20, "bytes_per_neuron_step": peak / (n * steps)})
        print(_common.table(rows[-1:], MEMORY_COLUMNS), flush=True)
    _, backward, state = _programs(n, "scan", True)
    t = _common.best_times({"run": lambda: backward(state, currents)}, 1)["run"]
    rows.append({"backend": "scan", "remat": "True", "T": steps, "N": n, "ran_s": t["wall_s"]})
    return rows


def network(args) -> list[dict]:
    """BPTT through a recurrent network: peak memory and time per backend and remat."""
    from spark_somas import training

    batch, steps, features, hidden, classes = 64, args.network_steps, 64, 128, 16
    x = jax.random.uniform(jax.random.key(0), (steps, batch, features))
    rows, base = [], None
    for backend, remat in (("scan", False), ("scan", True), ("fused", False), ("fused", True)):
        graphdef, params, rest = nnx.split(
            training.SpikingNetwork(features, hidden, classes, soma="adex", recurrent=True,
                                    synapse_tau=5.0, rngs=nnx.Rngs(0)), nnx.Param, ...)

        def loss(model, x, backend=backend, remat=remat):
            out = model(x, backend=backend, remat=remat)
            return jnp.mean(out.logits ** 2) + jnp.mean(out.hidden_spikes)

        @jax.jit
        def program(params, rest, x):
            return nnx.grad(loss)(nnx.merge(graphdef, params, rest), x)

        peak = _peak_bytes(program, params, rest, x)
        jax.block_until_ready(program(params, rest, x))
        t = _common.best_times({"run": lambda: program(params, rest, x)},
                               args.repeats)["run"]["wall_s"]
        base = base or (t, peak)
        rows.append({"backend": backend, "remat": str(remat), "T": steps, "batch": batch,
                     "peak_MB": peak / 2**20, "memory_over_scan": peak / base[1],
                     "ms": 1e3 * t, "time_over_scan": t / base[0]})
        print(_common.table(rows[-1:], list(rows[-1])), flush=True)
    return rows


def train(args) -> list[dict]:
    from spark_somas import training

    rows = []
    batch, steps, features, hidden, classes = 128, 100, 64, 128, 16  # powers of two (Triton)
    x = jax.random.uniform(jax.random.key(0), (batch, features))
    labels = jax.random.randint(jax.random.key(1), (batch,), 0, classes)
    backends = args.train_backends or (["scan", "fused"] if jax.default_backend() == "gpu"
                                       else ["scan"])
    times = {}
    for backend in backends:
        model = training.SpikingNetwork(features, hidden, classes, soma="adex", recurrent=True,
                                        synapse_tau=5.0, backend=backend, rngs=nnx.Rngs(0))
        optimizer = training.make_optimizer(model)
        encoder, objective = training.Encoder("current", steps), training.Objective()
        key = jax.random.key(2)

        def step():
            return training.train_step(model, optimizer, x, labels, key, encoder=encoder,
                                       objective=objective)

        jax.block_until_ready(step())
        times[backend] = _common.best_times({"step": step}, args.repeats)["step"]["wall_s"]
        rows.append({"network": f"{features}-{hidden}(adex, recurrent, synapse)-{classes}",
                     "backend": backend, "batch": batch, "T": steps,
                     "step_ms": 1e3 * times[backend],
                     "over_scan": times[backend] / times["scan"] if "scan" in times else None})
        print(_common.table(rows[-1:], list(rows[-1])), flush=True)
    return rows


THROUGHPUT_COLUMNS = ["N", "mode", "scan_neuron_steps_per_s", "fused_neuron_steps_per_s",
                      "fused_over_scan", "roofline_neuron_steps_per_s"]
MEMORY_COLUMNS = ["backend", "remat", "segment", "T", "N", "peak_MB", "bytes_per_neuron_step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", nargs="+", default=["throughput", "memory", "network", "train"],
                        choices=["throughput", "memory", "network", "train"])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--log2-sizes", type=int, nargs="+", default=[10, 12, 14, 16, 18, 20])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-gb", type=float, default=6.0)
    parser.add_argument("--fused-max-n", type=int, default=0,
                        help="largest N for the fused backend (0: no limit)")
    parser.add_argument("--network-steps", type=int, default=500)
    parser.add_argument("--train-backends", nargs="+", choices=["scan", "fused"], default=None)
    parser.add_argument("--memory-steps", type=int, default=10_000)
    parser.add_argument("--memory-n", type=int, default=4096)
    parser.add_argument("--out", default=str(_common.HERE / "fused.json"))
    args = parser.parse_args()
    info = _common.machine()
    print(info)
    results = {"machine": info}
    for mode in args.mode:
        results[mode] = {"throughput": throughput, "memory": memory, "network": network,
                         "train": train}[mode](args)
    results["machine"]["load_average_end"] = _common.machine()["load_average"]
    _common.write_json(args.out, results)


if __name__ == "__main__":
    main()
