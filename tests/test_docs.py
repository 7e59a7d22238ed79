"""The documentation site's code runs as written, and its API reference is complete.

Every ```python block and every ```{code-cell} block of every page in docs/
runs, in order, in one namespace per page, in a temporary working directory
(what a page writes lands there). Only blocks in another language (``bash``,
``text``) are not run: shell commands and output. docs/sharding.md needs
several devices: its blocks run in a subprocess with 8 simulated CPU devices,
and its multi-host script as the two-process rehearsal the page gives.

The site itself (``make docs``) is built by CI with warnings as errors; this
file keeps the pages' code honest without building it.
"""

import os
import pathlib
import pkgutil
import re
import subprocess
import sys

import matplotlib
import pytest

import spark_somas

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
SEVERAL_DEVICES = {"sharding.md"}
FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.S | re.M)
RUN = {"python", "{code-cell} ipython3", "{code-cell} python", "{code-cell}"}
NOT_RUN = {"bash", "text", "console", "json"}


def code_blocks(path: pathlib.Path) -> list[str]:
    """The page's executable blocks, in order (a code cell's ``:option:`` lines dropped)."""
    blocks = []
    for match in FENCE.finditer(path.read_text()):
        info = match["info"].strip()
        if info in RUN:
            lines = match["body"].splitlines(keepends=True)
            while lines and info.startswith("{") and lines[0].startswith(":"):
                lines.pop(0)
            blocks.append("".join(lines))
        else:
            # Directives ({toctree}, {include}, ...) and shell/output blocks are not code.
            assert info.startswith("{") or info in NOT_RUN, (
                f"{path.name}: a ```{info} block is neither run nor marked as not code; "
                f"write Python as ```python, shell commands as ```bash")
    return blocks


def test_the_pages_are_there():
    names = {p.name for p in PAGES}
    assert {"index.md", "models.md", "training.md", "checkpointing.md", "sharding.md",
            "numerics.md", "cli.md", "notebooks.md", "guarantees.md"} <= names


@pytest.mark.parametrize("path", [p for p in PAGES if p.name not in SEVERAL_DEVICES],
                         ids=lambda p: p.stem)
def test_page_code_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    for block in code_blocks(path):
        exec(compile(block, str(path), "exec"), namespace)
    plt.close("all")


def _run(args, env, cwd, timeout=900):
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("name", sorted(SEVERAL_DEVICES))
def test_page_code_runs_on_several_devices(name, tmp_path):
    blocks = code_blocks(DOCS / name)
    scripts = {b.splitlines()[0][2:].strip(): b for b in blocks if re.match(r"# \w+\.py\n", b)}
    inline = [b for b in blocks if b not in scripts.values()]
    (tmp_path / "page.py").write_text("\n".join(inline))
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    _run([sys.executable, "page.py"], env, tmp_path)

    # Scripts meant for several hosts: the page's rehearsal, two processes of 4 devices,
    # without the compilation cache (both compile the same programs at once).
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    for filename, script in scripts.items():
        (tmp_path / filename).write_text(script)
        outputs = _rehearse(filename, env, tmp_path)
        for code, (out, err) in outputs:
            assert code == 0, out[-2000:] + err[-3000:]
        assert "on 8 devices" in outputs[0][1][0], outputs[0]


def _rehearse(filename, env, cwd) -> list[tuple[int, tuple[str, str]]]:
    """Runs ``filename`` as processes 0 and 1 of 2: each one's exit code and
    output. Neither outlives the test, even when the other failed."""
    procs = [subprocess.Popen([sys.executable, filename, str(i), "2"], env=env, cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        outputs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [(p.returncode, output) for p, output in zip(procs, outputs)]


def test_api_reference_lists_every_public_name_and_module():
    api = (DOCS / "api.rst").read_text()
    for name in spark_somas.__all__:
        obj = getattr(spark_somas, name)
        if name == "SOMAS":
            assert ".. py:data:: spark_somas.SOMAS" in api
            continue
        target = obj.__name__ if isinstance(obj, type(spark_somas)) else f"{obj.__module__}.{name}"
        assert re.search(rf"^\s+~?{re.escape(target)}$", api, re.M), f"{target} missing from api.rst"
    modules = {m.name for m in pkgutil.walk_packages(spark_somas.__path__, "spark_somas.")
               if not m.name.rpartition(".")[2].startswith("_")}
    for module in modules:
        assert re.search(rf"^\s+{re.escape(module)}$", api, re.M), (
            f"{module} missing from the module list of docs/api.rst")


def test_benchmark_figures_show_the_recorded_numbers(tmp_path):
    """benchmarks/plots.py draws the pages' figures from the JSON records alone:
    the series it plots are the recorded values, and the committed PNGs exist."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("plots", ROOT / "benchmarks" / "plots.py")
    plots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plots)
    series = plots.main(["--out", str(tmp_path)])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["benchmarks-bptt-memory.png", "benchmarks-epochs.png",
                     "benchmarks-throughput.png", "training-adjoint.png"]
    assert all((DOCS / n).is_file() for n in names)
    peers = json.loads((ROOT / "benchmarks" / "peers.json").read_text())["rows"]
    assert series["throughput"]["N"] == [r["N"] for r in peers]
    assert series["throughput"]["spark_somas (simulate)"] == [
        r["spark_somas_neuron_steps_per_s"] for r in peers]
    epochs = json.loads((ROOT / "benchmarks" / "epochs_cpu.json").read_text())["rows"]
    assert series["epochs"]["samples_per_s"] == [r["samples_per_s"] for r in epochs]
    adjoint = json.loads((ROOT / "benchmarks" / "gradients_adjoint.json").read_text())
    assert series["adjoint"] == adjoint["curves"]
    plt.close("all")
