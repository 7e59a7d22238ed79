"""The module names of release 0.1.0's flat layout keep working, and
``import spark_somas`` imports nothing but the package root.

Every short name is an attribute of the package (PEP 562); the five the
documentation imports from (``from spark_somas.checkpointing import load``)
are modules of their own that re-export their home's public names. Each
import of a short name that the docs, README, notebooks, benchmarks and the
fixture writer show is resolved here, name by name. Fresh interpreters check
what the root and the command line's ``--version`` and ``--help`` import."""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

import spark_somas as ss

ROOT = pathlib.Path(__file__).resolve().parent.parent
HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "numpy", "matplotlib")
IMPORT = re.compile(r"from spark_somas\.(\w+) import (\([^)]*\)|[\w, ]+)|import spark_somas\.(\w+)")


def shown_imports() -> list[tuple[str, str, tuple[str, ...]]]:
    """(file, short name, names imported) for each import of a short name
    in the docs, README, notebooks, benchmarks and the fixture writer."""
    files = [ROOT / "README.md", ROOT / "tests" / "fixtures" / "make_fixtures.py",
             *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "benchmarks").glob("*.py")),
             *sorted((ROOT / "notebooks").glob("*.ipynb"))]
    found = []
    for path in files:
        text = path.read_text()
        if path.suffix == ".ipynb":
            text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"]
                             if c["cell_type"] == "code")
        for match in IMPORT.finditer(text):
            short = match.group(1) or match.group(3)
            if short in ss.MODULES and ss.MODULES[short] != short:
                names = tuple(n.split(" as ")[0].strip()
                              for n in (match.group(2) or "").strip("()").split(",") if n.strip())
                found.append((path.relative_to(ROOT).as_posix(), short, names))
    return found


def test_the_shown_imports_are_found():
    """The scan sees the imports the checkpoint page and README show."""
    shown = {(f, s) for f, s, _ in shown_imports()}
    assert {("README.md", "checkpointing"), ("docs/checkpointing.md", "checkpointing"),
            ("tests/fixtures/make_fixtures.py", "checkpointing")} <= shown


@pytest.mark.parametrize("where, short, names", shown_imports(),
                         ids=lambda v: v if isinstance(v, str) else ",".join(v))
def test_every_shown_import_of_a_short_name_resolves(where, short, names):
    module = importlib.import_module(f"spark_somas.{short}")
    home = importlib.import_module(f"spark_somas.{ss.MODULES[short]}")
    for name in names:
        assert getattr(module, name) is getattr(home, name), f"{where}: {short}.{name}"


@pytest.mark.parametrize("short", ss.REEXPORTS)
def test_a_kept_module_re_exports_its_home(short):
    module = importlib.import_module(f"spark_somas.{short}")
    home = importlib.import_module(f"spark_somas.{ss.MODULES[short]}")
    assert set(home.__all__) <= set(module.__all__)
    for name in module.__all__:
        assert getattr(module, name) is getattr(home, name)
    assert getattr(ss, short) is module
    # from-import reaches the same module, whichever form came first
    namespace: dict = {}
    exec(f"from spark_somas import {short} as m", namespace)
    assert namespace["m"] is module


@pytest.mark.parametrize("short", sorted(set(ss.SUBMODULES) - set(ss.REEXPORTS)))
def test_any_other_short_name_is_its_home(short):
    namespace: dict = {}
    exec(f"from spark_somas import {short} as m", namespace)
    assert namespace["m"] is importlib.import_module(f"spark_somas.{ss.MODULES[short]}")


def test_dir_lists_every_public_name_and_short_name():
    assert set(ss.__all__) | set(ss.SUBMODULES) | {"__version__"} <= set(dir(ss))
    for name in ss.__all__:
        assert getattr(ss, name) is not None


def modules_after(code: str) -> list[str]:
    """The HEAVY modules loaded once ``code`` has run in a fresh interpreter."""
    probe = (f"import sys\ntry:\n    {code}\nexcept SystemExit:\n    pass\n"
             f"print('\\n' + ' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & "
             f"set({HEAVY!r}))))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()[-1].split()


@pytest.mark.parametrize("code", [
    "import spark_somas",
    "from spark_somas import __version__",
    "from spark_somas import cli; cli.main(['--version'])",
    "from spark_somas import cli; cli.main(['--help'])",
    "from spark_somas import cli; cli.main([])",
])
def test_the_root_and_the_command_lines_version_and_help_import_nothing_heavy(code):
    assert modules_after(code) == []


def test_a_lazy_name_loads_its_module():
    assert "jax" in modules_after("import spark_somas as ss; ss.AdaptiveExponentialSoma")
