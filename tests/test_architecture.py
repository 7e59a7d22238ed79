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
          "plotting": 4, "training": 5, "fitting": 6, "testing": 6, "cli": 7}
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


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def foreign_private_reads(source: str) -> list[str]:
    """Every read of another module's private name in ``source``: ``from m
    import _x``, ``m._x``, and an attribute chain through a name imported
    from the package (``m.Class._x``, ``Class._x``, ``m.obj.attr._x``)."""
    tree = ast.parse(source)
    imported: set[str] = set()  # local names bound by an import of the package
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {(a.asname or a.name).split(".")[0] for a in node.names
                         if a.name.startswith("spark_somas")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.startswith("spark_somas"):
            bad += [f"line {node.lineno}: from {node.module} import {a.name}"
                    for a in node.names if private(a.name)]
            imported |= {a.asname or a.name for a in node.names}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and private(node.attr)):
            continue
        chain, base = [node.attr], node.value
        while isinstance(base, ast.Attribute):
            chain.append(base.attr)
            base = base.value
        if isinstance(base, ast.Name) and base.id in imported:
            bad.append(f"line {node.lineno}: {'.'.join([base.id, *reversed(chain)])}")
    return bad


@pytest.mark.parametrize("path", sources(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_private_name_crosses_a_module_border(path):
    bad = foreign_private_reads(path.read_text())
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


@pytest.mark.parametrize("source, found", [
    ("from spark_somas.models import surrogates\nsurrogates._x", ["line 2: surrogates._x"]),
    ("from spark_somas.models import surrogates as s\ns.Surrogate._registry",
     ["line 2: s.Surrogate._registry"]),
    ("from spark_somas.models.surrogates import Surrogate\nSurrogate._registry",
     ["line 2: Surrogate._registry"]),
    ("import spark_somas.models.surrogates\nspark_somas.models.surrogates.Surrogate._registry",
     ["line 2: spark_somas.models.surrogates.Surrogate._registry"]),
    ("from spark_somas.models.surrogates import _SMALLEST", [
        "line 1: from spark_somas.models.surrogates import _SMALLEST"]),
    ("from spark_somas.models import surrogates\nsurrogates.names()\nself._own\nsurrogates.__doc__", []),
])
def test_the_private_name_check_sees_each_form(source, found):
    assert foreign_private_reads(source) == found


def test_every_subpackage_says_what_lives_in_it():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init.parent.name}/__init__.py has no docstring"
        for module in sorted(init.parent.glob("*.py")):
            if module.name != "__init__.py":
                assert f"{init.parent.name}.{module.stem}" in doc, (
                    f"{init.parent.name}/__init__.py does not name {module.stem}")


def test_every_layer_unit_is_known():
    """Every top-level module is a layer, but the modules that keep a name of
    release 0.1.0 (``ss.REEXPORTS``), which belong to their home's layer."""
    units = {p.name if p.is_dir() else p.stem for p in PACKAGE.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.name not in ROOTS)}
    assert units - set(ss.REEXPORTS) == set(LAYERS)
    assert all(ss.MODULES[name].split(".")[0] in LAYERS for name in ss.REEXPORTS)


def test_the_package_points_at_nothing_the_wheel_lacks():
    """The installed wheel holds the package alone: its docstrings and comments
    must not send a reader to the repository's tests or benchmarks."""
    bad = [f"{p.relative_to(PACKAGE)}:{n}" for p in sorted(PACKAGE.rglob("*.py"))
           for n, line in enumerate(p.read_text().splitlines(), 1)
           if re.search(r"\b(tests|benchmarks)/|\btest_\w+\.py\b", line)]
    assert not bad, bad
