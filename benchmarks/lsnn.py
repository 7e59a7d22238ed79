"""The package against Bellec et al.'s LSNN, written in plain JAX, on the same cue trials.

Reference: the long short-term memory spiking network (LSNN) of Bellec et
al. (2018), "Long short-term memory and learning-to-learn in networks of
spiking neurons", NeurIPS, as trained by BPTT on the evidence-accumulation
task in Bellec et al. (2020), "A solution to the learning dilemma for
recurrent networks of spiking neurons", Nat. Commun. 11:3625 (their
published code: thresholds, β heuristic, refractoriness, readout). Written
here with ``jax`` and ``optax`` only; nothing of the package's model,
network, loss or optimizer code runs in it. Units: dt = 1 ms, voltages in
units of the threshold's scale (dimensionless), rates in Hz.

    40 inputs → N recurrent neurons (a share LIF, the rest ALIF) → 2 leaky readouts

(the ALIF share: ``--adaptive-fraction``, default ½ as in Bellec et al.;
the package's somas all adapt).

Per step t, for neuron j (the 2020 form of the equations), with
α = exp(−dt/τ_m), τ_m = 20 ms; ρ = exp(−dt/τ_a), τ_a = 2000 ms;
κ = exp(−dt/τ_out), τ_out = 20 ms; v_th = 0.6::

    v_t = α v_{t−1} + W_in x_t + W_rec z_{t−1} − v_th z_{t−1}
    a_t = ρ a_{t−1} + z_{t−1}
    A_t = v_th + β_j a_t                      (β_j = 0 for a LIF neuron)
    z_t = H((v_t − A_t)/v_th)                 (0 at steps t + 1 … t + n_ref − 1
                                               after a spike at t; n_ref = 5)
    ȳ_t = κ ȳ_{t−1} + (1 − κ) z_t,   y_t = W_out ȳ_t

The reset subtracts v_th; W_rec has no autapses (its diagonal is held at
0). The backward pass replaces dz_t/dv_t by Bellec's pseudo-derivative

    ψ_t = (γ/v_th) max(0, 1 − |v_t − A_t|/v_th),   γ = 0.3,

and stops no gradient anywhere (BPTT, not e-prop).

β: the 2018 form of the same model scales the input by (1 − α) and the
adaptation by (1 − ρ): v' = αv' + (1 − α)I − v'_th z, b = ρb + (1 − ρ)z,
A' = v'_th + β b. With v = v'/(1 − α) and a = b/(1 − ρ) it is the form
above with v_th = v'_th/(1 − α) (their 0.03 → 0.615) and β_j =
β (1 − ρ)/(1 − α), which is how Bellec et al.'s 2020 code sets it (β = 1.7
there; ``--beta``, default 1.8, as in their 2018 tasks): each spike raises
the threshold, summed over time, by β times the membrane's summed response
to a unit input.

Initial weights: W_in ~ N(0, 1/40), W_rec ~ N(0, 1/N), W_out Glorot
uniform, as in their code. Loss: cross-entropy of the readout y averaged
over the recall period (the package's readout window), plus the package's
rate regulariser s · mean_j ((r_j − r*)/r*)², r_j neuron j's rate (Hz)
over the trial and batch (s = 0.5, r* = 10 Hz: the cue recipe's); Adam
with the package's peak rate and cosine decay over all updates,
global-norm clipping at 1.

The package side is ``spark-somas train --task cues --data-option
delay_ms=D`` (the cue recipe: 64 recurrent AdEx somas, 12 epochs of 12
updates, batch 64, new trials every epoch;
:class:`~spark_somas.training.runs.RunConfig`). The reference has as many
neurons and trains on the very same trials: epoch e's
``data.draw_train(e, n)`` in the order ``epoch_order(seed, e, n)``, the
same batches, updates and test set.

Measured, per (delay, seed) and side: the final test accuracy; the first
epoch whose test accuracy reaches 90 % and the updates done by then (the
test set is scored after every epoch, so the count is a multiple of the
updates per epoch: that is its resolution); the wall time per update
after compilation (each update blocked on; the updates of an epoch after
its first, so neither compilation nor the epoch's data draw and test
count); the mean hidden rate on the test set after the last epoch; and
the ratios package/reference of updates to 90 % and time per update. The
package trains from a Python loop over its compiled update (``fit`` with
``epoch_on_device=False``: the same updates as the epoch scan) so that
both sides are timed alike.

    python benchmarks/lsnn.py [--delays 1000] [--seeds 0] [--epochs E] [--samples N]

writes ``--out`` (default ``benchmarks/lsnn_cpu.json``: machine, settings,
every run's row and history, the ratios).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from spark_somas.training import callbacks as cb  # noqa: E402
from spark_somas.training import loop  # noqa: E402
from spark_somas.training.runs import RunConfig  # noqa: E402

TARGET = 0.9


@dataclasses.dataclass(frozen=True)
class LSNN:
    """Bellec et al.'s LSNN (module docstring): sizes, time constants (ms),
    threshold v_th, adaptation strength β (2018 units), pseudo-derivative
    damping γ and refractory steps. The first ``n_rec − n_adaptive``
    neurons are LIF, the others ALIF."""

    n_in: int = 40
    n_rec: int = 64
    n_out: int = 2
    adaptive_fraction: float = 0.5
    tau_m: float = 20.0
    tau_a: float = 2000.0
    tau_out: float = 20.0
    v_th: float = 0.6
    beta: float = 1.8
    gamma: float = 0.3
    refractory_steps: int = 5
    dt: float = 1.0

    @property
    def alpha(self) -> float:
        """Membrane decay per step, exp(−dt/τ_m)."""
        return float(np.exp(-self.dt / self.tau_m))

    @property
    def rho(self) -> float:
        """Adaptation decay per step, exp(−dt/τ_a)."""
        return float(np.exp(-self.dt / self.tau_a))

    @property
    def kappa(self) -> float:
        """Readout decay per step, exp(−dt/τ_out)."""
        return float(np.exp(-self.dt / self.tau_out))

    @property
    def n_adaptive(self) -> int:
        return round(self.adaptive_fraction * self.n_rec)

    def betas(self) -> np.ndarray:
        """β_j per unit of a (2020 units): β (1 − ρ)/(1 − α) for ALIF, 0 for LIF."""
        beta = self.beta * (1.0 - self.rho) / (1.0 - self.alpha)
        return np.where(np.arange(self.n_rec) >= self.n_rec - self.n_adaptive, beta,
                        0.0).astype(np.float32)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def spike(x: jax.Array, gamma: float) -> jax.Array:
    """H(x) of the scaled distance to threshold x = (v − A)/v_th (1 where
    x > 0), with the pseudo-derivative γ max(0, 1 − |x|) (Bellec et al.
    2018) in place of dH/dx."""
    return jnp.heaviside(x, 0.0)


@spike.defjvp
def _spike_jvp(gamma, primals, tangents):
    (x,), (dx,) = primals, tangents
    return spike(x, gamma), gamma * jnp.maximum(0.0, 1.0 - jnp.abs(x)) * dx


def crossing(v: jax.Array, threshold: jax.Array, cfg: LSNN) -> jax.Array:
    """z = H(v − A), with dz/dv = ψ = (γ/v_th) max(0, 1 − |v − A|/v_th)."""
    return spike((v - threshold) / cfg.v_th, cfg.gamma)


def init_params(key: jax.Array, cfg: LSNN) -> dict[str, jax.Array]:
    """W_in ~ N(0, 1/n_in), W_rec ~ N(0, 1/N) (Bellec et al.'s code), W_out Glorot uniform."""
    k_in, k_rec, k_out = jax.random.split(key, 3)
    return {
        "w_in": jax.random.normal(k_in, (cfg.n_in, cfg.n_rec)) / np.sqrt(cfg.n_in),
        "w_rec": jax.random.normal(k_rec, (cfg.n_rec, cfg.n_rec)) / np.sqrt(cfg.n_rec),
        "w_out": jax.nn.initializers.glorot_uniform()(k_out, (cfg.n_rec, cfg.n_out)),
    }


def _step(cfg: LSNN, w_rec: jax.Array, carry: tuple, i_in: jax.Array) -> tuple:
    """One step of dt: the equations of the module docstring. The refractory
    counter r (steps left) only gates z, so it carries no gradient."""
    v, a, z, r, zbar = carry
    a = cfg.rho * a + z
    v = cfg.alpha * v + i_in + z @ w_rec - cfg.v_th * z
    z = jnp.where(r > 0, 0.0, crossing(v, cfg.v_th + jnp.asarray(cfg.betas()) * a, cfg))
    r = jnp.clip(r + cfg.refractory_steps * z - 1.0, 0.0, cfg.refractory_steps)
    zbar = cfg.kappa * zbar + (1.0 - cfg.kappa) * z
    return (v, a, z, r, zbar), (z, zbar)


def run_network(params: dict, x: jax.Array, cfg: LSNN, window: int) -> tuple[jax.Array, jax.Array]:
    """From rest on spikes ``x`` (B, T, n_in): the logits (B, n_out), the
    readout y_t = W_out ȳ_t averaged over the last ``window`` steps, and the
    hidden spikes z (T, B, N)."""
    w_rec = params["w_rec"] * (1.0 - jnp.eye(cfg.n_rec))
    i_in = jnp.einsum("btf,fn->tbn", x, params["w_in"])
    zeros = jnp.zeros(i_in.shape[1:], i_in.dtype)
    _, (z, zbar) = jax.lax.scan(functools.partial(_step, cfg, w_rec),
                                (zeros, zeros, zeros, zeros, zeros), i_in)
    return jnp.mean(zbar[-window:], axis=0) @ params["w_out"], z


def rate_hz(z: jax.Array, cfg: LSNN, axis: Any = None) -> jax.Array:
    """Mean firing rate (Hz) of spikes z (T, B, N) over ``axis``."""
    return jnp.mean(z, axis=axis) * 1000.0 / cfg.dt


def loss_fn(params: dict, x: jax.Array, labels: jax.Array, cfg: LSNN, window: int,
            target_hz: float, strength: float) -> tuple[jax.Array, dict]:
    """Cross-entropy of the logits + ``strength`` · mean_j ((r_j − r*)/r*)²,
    r_j neuron j's rate (Hz) over time and batch, r* = ``target_hz``."""
    logits, z = run_network(params, x, cfg, window)
    rates = rate_hz(z, cfg, axis=(0, 1))
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    loss = ce + strength * jnp.mean(jnp.square(rates / target_hz - 1.0))
    return loss, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
                  "rate_hz": jnp.mean(rates)}


def optimizer(lr: float, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping at 1, then Adam with peak ``lr`` decayed to 0 by a
    cosine over ``total_steps``."""
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adam(optax.cosine_decay_schedule(lr, total_steps)))


def make_update(cfg: LSNN, tx: optax.GradientTransformation, window: int, target_hz: float,
                strength: float) -> Callable:
    """A compiled BPTT update: (params, opt_state, x, labels) → (params,
    opt_state, metrics of the batch before the update)."""
    grad = jax.grad(loss_fn, has_aux=True)

    @jax.jit
    def update(params, opt_state, x, labels):
        grads, metrics = grad(params, x, labels, cfg, window, target_hz, strength)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    return update


def make_evaluate(cfg: LSNN, window: int) -> Callable:
    """Compiled test scoring: (params, x, labels) → (accuracy, mean rate in Hz)."""
    @jax.jit
    def evaluate(params, x, labels):
        logits, z = run_network(params, x, cfg, window)
        return jnp.mean(jnp.argmax(logits, -1) == labels), rate_hz(z, cfg)

    return evaluate


def training_split(run: RunConfig, data: Any, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Epoch ``epoch``'s training trials, as ``fit`` draws them."""
    n = len(data.x_train)
    return data.draw_train(epoch, n) if run.fresh_data else (data.x_train, data.y_train)


def batches(run: RunConfig, n: int, epoch: int) -> np.ndarray:
    """The sample indices of the epoch's batches (K, B), as ``fit`` orders them."""
    b = min(run.batch_size, n)
    k = n // b
    return loop.epoch_order(run.seed, epoch, n)[:k * b].reshape(k, b)


def update_times(stamps: dict[int, list[float]]) -> list[float]:
    """Seconds per update from the times each update of an epoch finished:
    the gaps between an epoch's updates (its first is left out)."""
    return [float(d) for s in stamps.values() for d in np.diff(s)]


def train_reference(run: RunConfig, data: Any, cfg: LSNN) -> dict:
    """Trains the LSNN on ``run``'s trials, batches, updates and test set; its
    history (test accuracy and rate after every epoch) and update times."""
    window = run.cue_task().recall_steps
    n = len(data.x_train)
    per_epoch = len(batches(run, n, 0))
    tx = optimizer(run.lr, run.epochs * per_epoch)
    params = init_params(jax.random.key(run.seed), cfg)
    opt_state = tx.init(params)
    update = make_update(cfg, tx, window, run.rate_hz, run.rate_strength)
    evaluate = make_evaluate(cfg, window)
    history: dict[str, list] = {"epoch": [], "train_loss": [], "train_accuracy": [],
                                "test_accuracy": [], "test_rate_hz": []}
    stamps: dict[int, list[float]] = {}
    for epoch in range(run.epochs):
        x, y = training_split(run, data, epoch)
        metrics = []
        for idx in batches(run, n, epoch):
            params, opt_state, m = update(params, opt_state, x[idx], y[idx])
            metrics.append(jax.block_until_ready(m))
            stamps.setdefault(epoch, []).append(time.perf_counter())
        accuracy, rate = evaluate(params, data.x_test, data.y_test)
        for key, value in (("epoch", epoch + 1),
                           ("train_loss", np.mean([m["loss"] for m in metrics])),
                           ("train_accuracy", np.mean([m["accuracy"] for m in metrics])),
                           ("test_accuracy", accuracy), ("test_rate_hz", rate)):
            history[key].append(float(value))
    return {"history": history, "update_s": update_times(stamps), "updates_per_epoch": per_epoch}


class UpdateClock(cb.Callback):
    """Notes when each of ``fit``'s updates finished (blocked on), per epoch."""

    def __init__(self):
        self.stamps: dict[int, list[float]] = {}

    def on_batch_end(self, fit, epoch, index, metrics):
        jax.block_until_ready(metrics)
        self.stamps.setdefault(epoch, []).append(time.perf_counter())


def train_package(run: RunConfig, built: Any) -> dict:
    """Trains ``run`` (``built``: its ``run.build()``) as ``spark-somas
    train`` does, from the Python loop over its compiled update; its history
    and update times. A run whose loss turns non-finite keeps the epochs it
    finished."""
    clock, kept = UpdateClock(), {}
    try:
        history = loop.fit(built.model, built.optimizer, built.data, encoder=built.encoder,
                           epochs=run.epochs, batch_size=run.batch_size, seed=run.seed,
                           progress=False, fresh_data=run.fresh_data, objective=run.objective(),
                           epoch_on_device=False, callbacks=[clock],
                           on_epoch_end=lambda fit, e, h: kept.update(h))
    except loop.NonFiniteLossError:
        history = kept
    return {"history": history, "update_s": update_times(clock.stamps),
            "updates_per_epoch": len(batches(run, len(built.data.x_train), 0))}


def summary(result: dict) -> dict:
    """Final test accuracy, first epoch (1-based) and update count at ≥ 90 %
    test accuracy (None: never), mean and median ms per update, final rate."""
    h, times = result["history"], np.asarray(result["update_s"]) * 1e3
    acc = h.get("test_accuracy", [])
    first = next((i + 1 for i, a in enumerate(acc) if a >= TARGET), None)
    return {"epochs_done": len(acc), "test_accuracy": acc[-1] if acc else None,
            "first_epoch_90": first,
            "updates_to_90": first * result["updates_per_epoch"] if first else None,
            "updates_per_epoch": result["updates_per_epoch"],
            "ms_per_update": float(np.mean(times)) if len(times) else None,
            "ms_per_update_median": float(np.median(times)) if len(times) else None,
            "timed_updates": len(times),
            "rate_hz": h["test_rate_hz"][-1] if acc else None}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def timed(name: str, train: Callable[[], dict], run: RunConfig) -> dict:
    """One side's row: ``train()``'s :func:`summary`, wall time and history;
    ``trials_of``: the ``spark-somas train`` command whose trials both sides use."""
    load = _common.machine()["load_average"]
    t0 = time.perf_counter()
    result = train()
    row = {"model": name, "delay_ms": dict(run.data_option)["delay_ms"], "seed": run.seed,
           "trials_of": run.command(), "wall_s": time.perf_counter() - t0, "load_average": load,
           **summary(result), "history": result["history"]}
    print_row(row)
    return row


def compare(delay: float, seed: int, args: argparse.Namespace) -> tuple[dict, dict]:
    """The package run and the reference on its trials, one after the other."""
    samples = (("n_samples", args.samples),) if args.samples else ()
    run = RunConfig(soma="adex", task="cues", seed=seed, epochs=args.epochs,
                    data_option=(("delay_ms", delay),) + samples)
    cfg = LSNN(n_in=run.cue_task().n_inputs, n_rec=run.hidden,
               adaptive_fraction=args.adaptive_fraction, beta=args.beta,
               refractory_steps=args.refractory_steps)
    built = run.build()
    package = timed("spark_somas", lambda: train_package(run, built), run)
    reference = timed("reference", lambda: train_reference(run, built.data, cfg), run)
    reference["lsnn"] = dataclasses.asdict(cfg)
    return package, reference


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_row(r: dict) -> None:
    reached = (f"epoch {r['first_epoch_90']} ({r['updates_to_90']} updates)"
               if r["first_epoch_90"] else "never")
    accuracy = None if r["test_accuracy"] is None else 100 * r["test_accuracy"]
    print(f"{r['model']:<11} delay {r['delay_ms']:6.0f} ms seed {r['seed']}: test "
          f"{fmt(accuracy, '.1f')} % after {r['epochs_done']} epochs, >= 90 % at {reached}, "
          f"{fmt(r['ms_per_update'], '.0f')} ms/update, {fmt(r['rate_hz'], '.1f')} Hz, "
          f"{r['wall_s']:.0f} s", flush=True)


def ratios(package: dict, reference: dict) -> dict:
    """package/reference of updates to 90 % and of time per update."""
    out = {"delay_ms": package["delay_ms"], "seed": package["seed"],
           "updates_to_90": ratio(package["updates_to_90"], reference["updates_to_90"]),
           "ms_per_update": ratio(package["ms_per_update"], reference["ms_per_update"])}
    print(f"{'ratio':<11} delay {out['delay_ms']:6.0f} ms seed {out['seed']}: package/reference "
          f"updates to 90 % {fmt(out['updates_to_90'], '.2f')}, time per update "
          f"{fmt(out['ms_per_update'], '.2f')}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--delays", nargs="+", type=float, default=[1000.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of both (default: the cue recipe's, 12)")
    parser.add_argument("--samples", type=int, default=None,
                        help="trials per epoch and test set, 20 %% held out (default: the "
                        "task's, 1000)")
    parser.add_argument("--adaptive-fraction", type=float, default=0.5,
                        help="the reference's share of ALIF neurons (Bellec et al.: 0.5)")
    parser.add_argument("--beta", type=float, default=1.8,
                        help="the reference's adaptation strength β, 2018 units")
    parser.add_argument("--refractory-steps", type=int, default=5,
                        help="the reference's refractory period in steps of 1 ms")
    parser.add_argument("--out", default=str(_common.HERE / "lsnn_cpu.json"))
    args = parser.parse_args()
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    info = _common.machine()
    print(info, flush=True)
    rows, table = [], []
    for seed in args.seeds:
        for delay in args.delays:
            package, reference = compare(delay, seed, args)
            rows += [package, reference]
            table.append(ratios(package, reference))
            info["load_average_end"] = _common.machine()["load_average"]
            _common.write_json(args.out, {"machine": info, "settings": settings,
                                          "ratios": table, "rows": rows})


if __name__ == "__main__":
    main()
