"""The dependency floors: constraints-lowest.txt pins every direct dependency
(of the package and of the test extra) at its lower bound in pyproject.toml,
so the two cannot drift apart; the installed versions are inside the ranges;
and every pinned distribution imports (an extension built against another
NumPy, or a module using an attribute NumPy 2 removed, fails here by name).
make test-floor runs this file, with a fast subset of the others, in
.venv-floor, installed at those pins."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints-lowest.txt"

# What to import to know a pinned distribution works (its module, or the part
# of it the package and its tests use).
MODULES = {
    "jax": "jax",
    "jaxlib": "jaxlib",
    "flax": "flax.nnx",
    "optax": "optax",
    "chex": "chex",
    "orbax-checkpoint": "orbax.checkpoint",
    "numpy": "numpy",
    "matplotlib": "matplotlib.pyplot",
    "tqdm": "tqdm.auto",
    "scikit-learn": "sklearn.datasets",
    "h5py": "h5py",
    "pytest": "pytest",
    "pytest-xdist": "xdist",
    "pytest-timeout": "pytest_timeout",
    "hypothesis": "hypothesis",
    "brian2": "brian2",
    "nbclient": "nbclient",
    "nbformat": "nbformat",
    "ipykernel": "ipykernel",
    "tensorboardx": "tensorboardX",
    "tensorboard": "tensorboard.backend.event_processing.event_accumulator",
    "nevergrad": "nevergrad",
    "jupyter-cache": "jupyter_cache",
}


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def _lower_bounds() -> dict[str, Version]:
    """Each direct dependency's lower bound (>= or ==), by canonical name."""
    bounds: dict[str, Version] = {}
    for req in _requirements():
        for spec in req.specifier:
            if spec.operator in (">=", "=="):
                name = canonicalize_name(req.name)
                bounds[name] = max(bounds.get(name, Version(spec.version)), Version(spec.version))
    return bounds


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{line!r} in {CONSTRAINTS.name} is not a name==version pin"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_every_direct_dependency_has_a_lower_bound():
    bounds = _lower_bounds()
    missing = sorted({canonicalize_name(r.name) for r in _requirements()} - set(bounds))
    assert not missing, f"no lower bound in pyproject.toml for {missing}"


def test_the_constraints_pin_each_direct_dependency_at_its_lower_bound():
    pins, bounds = _pins(), _lower_bounds()
    assert pins.pop("jaxlib") == pins["jax"], "jaxlib is pinned at jax's version"
    assert pins == bounds


def test_installed_versions_are_inside_the_declared_ranges():
    outside = []
    for req in _requirements():
        if req.marker is not None and not req.marker.evaluate():
            continue
        installed = metadata.version(req.name)
        if not req.specifier.contains(installed, prereleases=True):
            outside.append(f"{req.name} {installed} (pyproject.toml: {req})")
    assert not outside, outside


def test_every_pinned_distribution_imports():
    assert set(MODULES) == set(_pins())
    script = (
        "import importlib, json, sys\n"
        "failed = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as err:\n"
        "        failed[name] = f'{type(err).__name__}: {err}'\n"
        "print(json.dumps(failed))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, *MODULES.values()], capture_output=True,
                         text=True, timeout=300, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}
