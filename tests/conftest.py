"""Shared test setup: JAX on the CPU unless the caller chose a platform.

The suite's time budget and its float32 expectations are CPU ones; set
JAX_PLATFORMS yourself to run it elsewhere.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def registry_as_found():
    """A test module that registers models of its own (the own-soma page,
    the protocol tests) leaves the registry as it found it: later modules in
    the same worker draw from the package's somas alone."""
    from spark_somas import registry

    types, somas = dict(registry._TYPES), dict(registry.SOMAS)
    yield
    registry._TYPES.clear()
    registry._TYPES.update(types)
    registry.SOMAS.clear()
    registry.SOMAS.update(somas)
