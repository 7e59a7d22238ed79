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

HEAVY = ("matplotlib", "spark_somas.simulation.kernels", "jax.experimental.pallas")


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
    assert "spark_somas.simulation.kernels" in loaded_after(
        "import jax.numpy as jnp, spark_somas as ss\n"
        "ss.simulate(ss.ExponentialSoma(units=2), jnp.ones((2, 1, 2)), backend='fused')")


@pytest.mark.parametrize("name", ss.SUBMODULES)
def test_every_submodule_is_an_attribute(name):
    """``ss.<short name>`` is the module where it lives, or for the names
    kept as modules of their own (``spark_somas/checkpointing.py``) that
    module, which re-exports its home's public names
    (``tests/test_old_names.py``)."""
    import importlib

    home = importlib.import_module(f"spark_somas.{ss.MODULES[name]}")
    expected = importlib.import_module(f"spark_somas.{name}") if name in ss.REEXPORTS else home
    assert getattr(ss, name) is expected
    assert name in dir(ss)


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'trainig'"):
        ss.trainig


def test_fit_without_a_progress_bar_does_not_import_tqdm_auto():
    """tqdm.auto warns (TqdmWarning, with the path of tqdm's own file) when
    imported in a Jupyter kernel without ipywidgets: a fit that draws no bar
    must not import it, or every executed notebook page shows the warning."""
    code = ("import spark_somas as ss\nfrom flax import nnx\n"
            "data = ss.datasets.load_digits().limit(32)\n"
            "net = ss.training.SpikingNetwork(64, 4, 10, rngs=nnx.Rngs(0))\n"
            "ss.training.fit(net, ss.training.make_optimizer(net), data,\n"
            "                encoder=ss.training.Encoder('current', 3), epochs=1,\n"
            "                batch_size=16, progress=False)\n"
            "assert 'tqdm.auto' not in sys.modules and 'tqdm.autonotebook' not in sys.modules")
    loaded_after(code)
