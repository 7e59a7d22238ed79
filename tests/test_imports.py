"""``import spark_somas as ss`` stays light and reaches every submodule:
``ss.training``, ``ss.plotting``, ``ss.checkpointing``, … load on first use
(PEP 562), and neither the import nor the training modules load matplotlib,
the package's Pallas/Triton kernels or Pallas' public API. Checked in fresh
interpreters, since this test process has imported everything already."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import spark_somas as ss

HEAVY = ("matplotlib", "spark_somas.kernels", "jax.experimental.pallas")


def loaded_after(code: str) -> list[str]:
    """The HEAVY modules (or their submodules) loaded once ``code`` has run."""
    probe = (f"import sys\n{code}\nimport json\n"
             f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_loads_neither_matplotlib_nor_the_kernels():
    assert loaded_after("import spark_somas as ss") == []


def test_training_and_checkpointing_load_neither():
    assert loaded_after("import spark_somas as ss\nss.training.SpikingNetwork\n"
                        "ss.checkpointing.Checkpointer\nss.datasets.load_digits") == []


def test_plotting_loads_matplotlib_and_a_fused_run_the_kernels():
    assert "matplotlib" in loaded_after("import spark_somas as ss\nss.plotting.raster")
    assert "spark_somas.kernels" in loaded_after(
        "import jax.numpy as jnp, spark_somas as ss\n"
        "ss.simulate(ss.ExponentialSoma(units=2), jnp.ones((2, 1, 2)), backend='fused')")


@pytest.mark.parametrize("name", ss.SUBMODULES)
def test_every_submodule_is_an_attribute(name):
    import importlib

    assert getattr(ss, name) is importlib.import_module(f"spark_somas.{name}")
    assert name in dir(ss)


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'trainig'"):
        ss.trainig
