"""The package's layout holds: every import of the package's own modules runs
down the layers (errors → dynamics → models → simulation → data,
persistence, plotting → training → fitting → cli), none back up or sideways
into a sibling of the same layer, and no module reads another module's
private names. Checked on the source (every import statement, those inside
functions too), so a lazy import cannot hide a circle."""

from __future__ import annotations

import ast
import re
import importlib
import pathlib

import pytest

import spark_somas as ss

PACKAGE = pathlib.Path(ss.__file__).resolve().parent

#: Layer of each top-level module or subpackage; a module may import its own
#: subpackage and any layer with a smaller number.
LAYERS = {"errors": 0, "dynamics": 1, "models": 2, "simulation": 3, "data": 4, "persistence": 4,
          "plotting": 4, "training": 5, "fitting": 6, "cli": 7}
#: The package root and ``python -m spark_somas`` are no layer's modules.
ROOTS = {"__init__.py", "__main__.py"}
#: A name of the root itself (``from spark_somas import __version__``) is as
#: high as what the root imports: the somas and ``simulate``.
ROOT_LAYER = 3.5


def sources() -> list[pathlib.Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).as_posix() not in ROOTS)


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(("spark_somas",) + (parts[:-1] if parts[-1] == "__init__" else parts))


def unit(module: str) -> str:
    """The layer unit of ``spark_somas.a.b``: ``a`` after short names are resolved."""
    rest = module.split(".")[1:]
    if not rest:
        return ""
    return ss.MODULES.get(rest[0], rest[0]).split(".")[0]


def imports(path: pathlib.Path) -> list[tuple[int, str, list[str]]]:
    """(line, module imported, names taken from it) for every import of the package."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.startswith("spark_somas")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.startswith("spark_somas"):
            found.append((node.lineno, node.module, [a.name for a in node.names]))
    return found


@pytest.mark.parametrize("path", sources(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_imports_run_down_the_layers(path):
    own = unit(module_name(path))
    bad = []
    for line, module, names in imports(path):
        targets = [module] if module != "spark_somas" else [f"spark_somas.{n}" for n in names]
        for target in targets:
            other = unit(target)
            layer = LAYERS.get(other, ROOT_LAYER)
            if other != own and not layer < LAYERS[own]:
                bad.append(f"line {line}: {target} (layer {layer}) from {own} (layer {LAYERS[own]})")
    assert not bad, "imports that run up or sideways:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", sources(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_private_name_crosses_a_module_border(path):
    tree = ast.parse(path.read_text())
    modules: set[str] = set()  # local names bound to a module of the package
    bad = []
    for line, module, names in imports(path):
        bad += [f"line {line}: from {module} import {n}" for n in names
                if n.startswith("_") and not n.startswith("__")]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("spark_somas"):
            for a in node.names:
                target = f"{node.module}.{a.name}"
                try:
                    is_module = importlib.util.find_spec(target) is not None
                except ModuleNotFoundError:
                    is_module = False
                if is_module:
                    modules.add(a.asname or a.name)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            bad.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_every_subpackage_says_what_lives_in_it():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init.parent.name}/__init__.py has no docstring"
        for module in sorted(init.parent.glob("*.py")):
            if module.name != "__init__.py":
                assert f"{init.parent.name}.{module.stem}" in doc, (
                    f"{init.parent.name}/__init__.py does not name {module.stem}")


def test_every_layer_unit_is_known():
    units = {p.name if p.is_dir() else p.stem for p in PACKAGE.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.name not in ROOTS)}
    assert units == set(LAYERS)


def test_the_package_points_at_nothing_the_wheel_lacks():
    """The installed wheel holds the package alone: its docstrings and comments
    must not send a reader to the repository's tests or benchmarks."""
    bad = [f"{p.relative_to(PACKAGE)}:{n}" for p in sorted(PACKAGE.rglob("*.py"))
           for n, line in enumerate(p.read_text().splitlines(), 1)
           if re.search(r"\b(tests|benchmarks)/|\btest_\w+\.py\b", line)]
    assert not bad, bad
