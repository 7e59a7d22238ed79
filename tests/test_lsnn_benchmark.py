"""The plain-JAX LSNN of benchmarks/lsnn.py: its spikes, pseudo-derivative and one update."""

import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spark_somas.data.tasks import EvidenceAccumulation

SPEC = importlib.util.spec_from_file_location(
    "lsnn_benchmark", Path(__file__).resolve().parents[1] / "benchmarks" / "lsnn.py")
lsnn = sys.modules[SPEC.name] = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(lsnn)


@pytest.mark.parametrize("x", [-1.5, -0.6, -0.2, 0.0, 0.3, 0.9, 2.0])
def test_pseudo_derivative_is_bellecs(x):
    """dH/dx of the scaled distance is γ max(0, 1 − |x|); dz/dv through the
    threshold crossing is (γ/v_th) max(0, 1 − |v − A|/v_th), γ = 0.3."""
    cfg = lsnn.LSNN(v_th=0.6)
    assert jax.grad(lsnn.spike)(x, 0.3) == pytest.approx(0.3 * max(0.0, 1.0 - abs(x)))
    v, threshold = 0.6 + 0.6 * x, 0.6
    assert jax.grad(lsnn.crossing)(v, threshold, cfg) == pytest.approx(
        0.3 / 0.6 * max(0.0, 1.0 - abs(v - threshold) / 0.6), rel=1e-5)


def test_one_update_on_cue_trials():
    """Four trials of a 50 ms delay: 0/1 spikes forward, one BPTT update with
    finite gradients that move every weight."""
    task = EvidenceAccumulation(cue_ms=50.0, gap_ms=25.0, delay_ms=50.0)
    x, labels, _ = task.trials(4)
    cfg = lsnn.LSNN(n_in=task.n_inputs, n_rec=16)
    params = lsnn.init_params(jax.random.key(0), cfg)
    logits, z = jax.jit(lsnn.run_network, static_argnums=(2, 3))(params, x, cfg,
                                                                task.recall_steps)
    assert logits.shape == (4, 2) and z.shape == (task.steps, 4, 16)
    assert set(np.unique(np.asarray(z))) <= {0.0, 1.0} and float(z.sum()) > 0
    tx = lsnn.optimizer(1e-2, 10)
    new, _, metrics = lsnn.make_update(cfg, tx, task.recall_steps, 10.0, 0.5)(
        params, tx.init(params), x, labels)
    assert np.isfinite(float(metrics["loss"]))
    for name in params:  # a NaN anywhere in the gradient would make every clipped update NaN
        assert np.isfinite(np.asarray(new[name])).all(), name
        assert not np.allclose(new[name], params[name]), name
