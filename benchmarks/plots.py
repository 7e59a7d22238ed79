"""The benchmark pages' figures, drawn from the recorded JSON (runs nothing).

    python benchmarks/plots.py            # writes docs/benchmarks-*.png, docs/training-adjoint.png

Each figure reads only the JSON files named in its title, so it shows what
the tables of benchmarks/README.md and benchmarks/TRAINING.md show.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
DOCS = HERE.parent / "docs"

PEERS = {  # JSON key prefix -> legend label
    "spark_somas": "spark_somas (simulate)",
    "brainpy": "BrainPy dyn.AdExIF",
    "brainpy.state": "brainpy.state.AdExIF",
    "brian2-cython": "Brian2, cython",
    "brian2-numpy": "Brian2, numpy",
    "norse": "Norse LIFAdEx",
}


def load(name: str) -> dict:
    return json.loads((HERE / name).read_text())


def note(fig, record: dict) -> None:
    """The machine and load of the run, under the axes."""
    fig.get_layout_engine().set(rect=(0, 0.05, 1, 0.95))
    fig.text(0.01, 0.01, machine_note(record), fontsize=7, color="0.4")


def machine_note(record: dict) -> str:
    m = record["machine"]
    return (f"{m['cores']}-core {m['cpu']}, {m['device']}, jax {m['jax']}, "
            f"load {m['load_average'][0]:.1f}, {m['date'][:10]}")


def throughput(out: pathlib.Path) -> dict[str, list[float]]:
    """Neuron-steps/s against N for every simulator of peers.json."""
    record = load("peers.json")
    rows = record["rows"]
    n = [r["N"] for r in rows]
    series = {label: [r[f"{key}_neuron_steps_per_s"] for r in rows]
              for key, label in PEERS.items()}
    fig, ax = plt.subplots(figsize=(8.0, 4.0), layout="constrained")
    for (label, values), marker in zip(series.items(), "o^vsDx"):
        ax.plot(n, values, marker=marker, lw=2.5 if label.startswith("spark") else 1.2,
                label=label)
    ax.set(xscale="log", yscale="log", xlabel="neurons N (T = 1000 steps of 0.1 ms)",
           ylabel="neuron-steps per second",
           title="AdEx forward, spikes and V recorded (peers.json)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    note(fig, record)
    fig.savefig(out / "benchmarks-throughput.png", dpi=110)
    plt.close(fig)
    return {"N": n, **series}


def bptt_memory(out: pathlib.Path) -> dict[str, list[float]]:
    """BPTT peak memory per configuration: a lone population at T = 10^4,
    and a recurrent network at T = 500 (with its time)."""
    lone = [r for r in load("fused_memory_train_cpu.json")["memory"] if "peak_MB" in r]
    net_record = load("fused_network_cpu.json")
    net = net_record["network"]
    remat = {"False": "", "True": ", √T", "100": ", K=100"}
    label = lambda r: r["backend"] + remat[r["remat"]]  # noqa: E731
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(11, 3.6), layout="constrained")
    a1.bar([label(r) for r in lone], [r["bytes_per_neuron_step"] for r in lone], color="C0")
    a1.set(ylabel="bytes per neuron-step", title="AdEx, N = 4096, T = 10⁴\n(fused_memory_train_cpu.json)")
    a2.bar([label(r) for r in net], [r["peak_MB"] for r in net], color="C1")
    a2.set(ylabel="peak MB", title="recurrent network, batch 64, T = 500\n(fused_network_cpu.json)")
    a3.bar([label(r) for r in net], [r["ms"] for r in net], color="C2")
    a3.set(ylabel="ms per forward + backward", title="same network: time\n(fused interpreted on CPU)")
    for ax in (a1, a2, a3):
        ax.tick_params(axis="x", labelsize=8, rotation=20)
        ax.grid(alpha=0.3, axis="y")
    note(fig, net_record)
    fig.savefig(out / "benchmarks-bptt-memory.png", dpi=110)
    plt.close(fig)
    return {"lone_bytes_per_neuron_step": [r["bytes_per_neuron_step"] for r in lone],
            "network_peak_MB": [r["peak_MB"] for r in net], "network_ms": [r["ms"] for r in net]}


def epochs(out: pathlib.Path) -> dict[str, list[float]]:
    """Samples/s of the three ways to run a training epoch (epochs_cpu.json)."""
    record = load("epochs_cpu.json")
    rows = record["rows"]
    names = {"scanned": "fit: epoch scanned\non the device", "python_loop":
             "fit: Python loop\nover train_step", "plain": "plain JAX + optax\n(same network)"}
    fig, ax = plt.subplots(figsize=(7.0, 3.4), layout="constrained")
    values = [r["samples_per_s"] for r in rows]
    bars = ax.barh([names[r["path"]] for r in rows], values, color=["C0", "C0", "0.6"])
    for bar, r in zip(bars, rows):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                f"  {r['ratio_to_plain']:.2f}× plain's time", va="center", fontsize=8)
    ax.set(xlabel="training samples per second (higher is faster)", xlim=(0, max(values) * 1.35),
           title="SHD-shaped epoch, 700 → 256 rec. AdEx → 20, T = 100\n(epochs_cpu.json)")
    ax.invert_yaxis()
    note(fig, record)
    fig.savefig(out / "benchmarks-epochs.png", dpi=110)
    plt.close(fig)
    return {"samples_per_s": values}


def adjoint_figure(curves: dict[str, list], path: pathlib.Path | str) -> None:
    """‖∂L/∂x_t‖ against steps back, one panel per soma (the key's part
    before ": "), one curve per variant; "inf" entries leave a gap. The
    legend sits under the panels, clear of the curves."""
    somas = list(dict.fromkeys(name.split(": ", 1)[0] for name in curves))
    fig, axes = plt.subplots(1, len(somas), figsize=(10, 4.6), layout="constrained",
                             sharey=True, squeeze=False)
    for ax, soma in zip(axes[0], somas):
        for name, values in curves.items():
            if name.split(": ", 1)[0] == soma:
                shown = [float("nan") if v == "inf" else v for v in values]
                ax.semilogy(range(len(shown)), shown, label=name.split(": ", 1)[1], lw=1.2)
        ax.set_title(f"{soma}: ‖∂L/∂x_t‖, loss on the last step")
        ax.set_xlabel("steps back from the end (dt = 1 ms)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("adjoint norm (a gap: inf or NaN)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=7, frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def adjoint(out: pathlib.Path) -> dict[str, list[float | str]]:
    """The adjoint against steps back of benchmarks/gradients.py (gradients_adjoint.json)."""
    curves = load("gradients_adjoint.json")["curves"]
    adjoint_figure(curves, out / "training-adjoint.png")
    return curves


def main(argv: list[str] | None = None) -> dict[str, dict[str, list]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DOCS), help="directory for the PNG files")
    out = pathlib.Path(parser.parse_args(argv).out)
    out.mkdir(parents=True, exist_ok=True)
    return {"throughput": throughput(out), "bptt_memory": bptt_memory(out),
            "epochs": epochs(out), "adjoint": adjoint(out)}


if __name__ == "__main__":
    main()
