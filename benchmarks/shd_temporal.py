"""An SHD-format task that only temporal integration solves, and its training run.

Writes ``shd_train.h5`` and ``shd_test.h5`` in the official Spiking
Heidelberg Digits layout (``spikes/times`` in s and ``spikes/units`` as
variable-length arrays, ``labels`` uint8; 700 channels) and trains the
native-resolution recipe on them through the command line::

    spark-somas train --task shd --data-dir DIR --data-option bin_ms=4 --steps 250 \\
        --hidden 256 --depth 2 --recurrent --epochs 20

Each of the 20 classes is an order of the same five channel bands (70
channels each), each band active for 150 ms at 40 Hz per channel over 1 s,
with 2 Hz background and ±20 ms jitter per sample: every class has the same
expected spike count in every channel, so a count or rate readout is at
chance (checked here with logistic regression on the per-channel counts);
only the order in time tells the classes apart. 250 bins of 4 ms = the
1 s trial at 4 ms resolution (the official files' 1.4 s window at 14 ms in
100 bins is the CLI's default; this task is 250 steps of the network).

    python benchmarks/shd_temporal.py [--seeds 0 1 2] [--out benchmarks/shd_temporal_cpu.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

CHANNELS, BANDS, CLASSES = 700, 5, 20
BAND = 70


def class_orders(n_classes: int = CLASSES, seed: int = 0) -> list[tuple[int, ...]]:
    """n distinct orders of the bands 0 … 4 (of the 120), seeded."""
    orders = list(itertools.permutations(range(BANDS)))
    pick = np.random.default_rng(seed).choice(len(orders), n_classes, replace=False)
    return [orders[i] for i in pick]


def sample(rng: np.random.Generator, order: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """One trial: spike times (s) and channel units."""
    times, units = [], []
    for slot, band in enumerate(order):
        start = 0.1 + 0.17 * slot + rng.uniform(-0.02, 0.02)
        for ch in range(band * BAND, (band + 1) * BAND):
            k = rng.poisson(40.0 * 0.15)
            times.append(rng.uniform(start, start + 0.15, k)), units.append(np.full(k, ch))
    k = rng.poisson(2.0 * CHANNELS)
    times.append(rng.uniform(0.0, 1.0, k)), units.append(rng.integers(0, CHANNELS, k))
    t, u = np.concatenate(times), np.concatenate(units)
    keep = t < 1.0
    idx = np.argsort(t[keep])
    return t[keep][idx], u[keep][idx]


def write(directory: Path, n_train: int = 800, n_test: int = 200, seed: int = 0) -> None:
    """The two files, ``n_train`` and ``n_test`` trials, classes balanced."""
    orders = class_orders(seed=seed)
    rng = np.random.default_rng(seed + 1)
    for name, n in (("shd_train.h5", n_train), ("shd_test.h5", n_test)):
        labels = np.arange(n) % CLASSES
        with h5py.File(directory / name, "w") as f:
            spikes = f.create_group("spikes")
            t_ds = spikes.create_dataset("times", (n,), dtype=h5py.vlen_dtype(np.float32))
            u_ds = spikes.create_dataset("units", (n,), dtype=h5py.vlen_dtype(np.uint16))
            for i, label in enumerate(labels):
                t, u = sample(rng, orders[label])
                t_ds[i], u_ds[i] = t.astype(np.float32), u.astype(np.uint16)
            f.create_dataset("labels", data=labels.astype(np.uint8))


def count_baseline(directory: Path) -> float:
    """Test accuracy of logistic regression on per-channel spike counts."""
    from sklearn.linear_model import LogisticRegression

    def counts(name):
        with h5py.File(directory / name, "r") as f:
            x = np.stack([np.bincount(u, minlength=CHANNELS) for u in f["spikes/units"]])
            return x, np.asarray(f["labels"])

    (xtr, ytr), (xte, yte) = counts("shd_train.h5"), counts("shd_test.h5")
    model = LogisticRegression(max_iter=2000).fit(xtr, ytr)
    return float(model.score(xte, yte))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", default=str(_common.HERE / "shd_temporal_cpu.json"))
    args = parser.parse_args()
    info = _common.machine()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        write(data)
        baseline = count_baseline(data)
        print(f"count baseline (logistic regression on channel counts): {100 * baseline:.1f} %",
              flush=True)
        for seed in args.seeds:
            out = Path(tmp) / f"out{seed}"
            cmd = ["spark-somas", "train", "--task", "shd", "--data-dir", "DIR", "--data-option",
                   "bin_ms=4", "--steps", "250", "--hidden", "256", "--depth", "2", "--recurrent",
                   "--epochs", str(args.epochs), "--seed", str(seed),
                   "--no-progress"]
            exe = str(Path(sys.executable).parent / "spark-somas")
            t0 = time.perf_counter()
            subprocess.run([exe, *[str(data) if c == "DIR" else c for c in cmd[1:]],
                            "--out", str(out)], check=True)
            wall = time.perf_counter() - t0
            result = json.loads(next(out.glob("*.json")).read_text())
            h = result["history"]
            rows.append({"seed": seed, "command": " ".join(cmd), "test_accuracy":
                         h["test_accuracy"][-1], "train_accuracy": h["train_accuracy"][-1],
                         "skipped_batches": int(np.nansum(h["skipped_batches"])),
                         "rate_hz": h["test_rate_hz"][-1], "wall_s": wall, "history": h})
            print(f"seed {seed}: test {100 * rows[-1]['test_accuracy']:.1f} %, skipped "
                  f"{rows[-1]['skipped_batches']}, {wall:.0f} s", flush=True)
            info["load_average_end"] = _common.machine()["load_average"]
            _common.write_json(args.out, {"machine": info, "count_baseline": baseline,
                                          "rows": rows})


if __name__ == "__main__":
    main()
