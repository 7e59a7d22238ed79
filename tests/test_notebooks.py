"""Every notebook in notebooks/ runs top to bottom, and is committed without outputs.

The notebooks run in a kernel of this very interpreter: the test installs a
kernel spec pointing at ``sys.executable`` into a temporary JUPYTER_PATH
(searched before any user or system kernel), and the first cell, added here,
reports the kernel's ``sys.prefix``. Matplotlib draws with Agg; the working
directory is a temporary one, so nothing is written into the repository.

A notebook that ran is handed to the docs build's cache
(``docs/_build/.jupyter_cache``, a build output git ignores, when jupyter-cache
is installed), so that ``make docs`` after ``make test`` shows these very
outputs instead of running each notebook a second time; the cache matches a
notebook by its code, so an edited notebook still runs at build time.
"""

import json
import pathlib
import re
import sys
import time

import nbformat
import pytest
from ipykernel.kernelspec import install as install_kernel_spec
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
DOCS_CACHE = ROOT / "docs" / "_build" / ".jupyter_cache"
KERNEL = "spark-somas-test"
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("kernel")
    install_kernel_spec(kernel_name=KERNEL, prefix=str(prefix))
    return {"JUPYTER_PATH": str(prefix / "share" / "jupyter"), "MPLBACKEND": "Agg"}


def test_the_files_sort_in_the_order_of_the_path():
    """JupyterLab lists notebooks by file name: that order is the docs' path."""
    path = re.findall(r"<notebooks/(\w+)>", (ROOT / "docs" / "notebooks.md").read_text())
    assert len(path) == 7 and path == [p.stem for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} cell {i}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, kernel_env, monkeypatch, tmp_path):
    for key, value in kernel_env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL,
                            resources={"metadata": {"path": str(tmp_path)}})
    started = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first cell that fails
    seconds = time.perf_counter() - started
    assert nb.cells[0].outputs[0]["text"].strip() == sys.prefix
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o["output_type"] == "error"]
    assert errors == []
    if path.name == "01_neuron_dynamics.ipynb":
        # A soma and a config render as HTML tables with units, not raw arrays.
        html = [o["data"]["text/html"] for c in nb.cells if c.cell_type == "code"
                for o in c.outputs if "text/html" in o.get("data", {})]
        assert len(html) >= 2 and all("<table>" in h and "mV" in h for h in html)
        assert not any("Array(" in h for h in html), json.dumps(html)[:500]
    hand_to_docs_cache(path, nb.cells[1:], seconds)


def hand_to_docs_cache(path: pathlib.Path, ran: list, seconds: float) -> None:
    """Store the outputs of ``ran`` (the notebook's cells, executed after one added cell)."""
    try:
        from jupyter_cache import get_cache
        from jupyter_cache.base import CacheBundleIn
    except ImportError:  # the docs extra is not installed: the build runs the notebook
        return
    nb = nbformat.read(path, as_version=4)  # the file's own metadata, which the cache hashes
    for cell, done in zip(nb.cells, ran, strict=True):
        if cell.cell_type == "code":
            cell.outputs = done.outputs
            cell.execution_count = done.execution_count and done.execution_count - 1
    DOCS_CACHE.parent.mkdir(parents=True, exist_ok=True)
    get_cache(str(DOCS_CACHE)).cache_notebook_bundle(
        CacheBundleIn(nb, str(ROOT / "docs" / "notebooks" / path.name),
                      data={"execution_seconds": seconds}),
        check_validity=False, overwrite=True)
