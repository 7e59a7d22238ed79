"""Shared test setup: JAX on the CPU unless the caller chose a platform, and
a persistent compilation cache.

The suite's time budget and its float32 expectations are CPU ones; set
JAX_PLATFORMS yourself to run it elsewhere.
"""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiled programs are shared through JAX's persistent cache between the two
# test workers and the command-line and checkpoint subprocesses the tests
# start, which compile many of the same small programs; most of the suite's
# time is compilation.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"spark-somas-tests-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def registry_as_found():
    """A test module that registers models of its own (the own-soma page,
    the protocol tests) leaves the registry as it found it: later modules in
    the same worker draw from the package's somas alone."""
    from spark_somas import registry

    types, somas = dict(registry._TYPES), dict(registry.SOMAS)
    yield
    # What the package registered meanwhile stays: a deferred type (the
    # training network) registers when its module is first imported, once.
    for table, before in ((registry._TYPES, types), (registry.SOMAS, somas)):
        for name in set(table) - set(before):
            cls = getattr(table[name], "cls", table[name])
            if not cls.__module__.startswith("spark_somas."):
                del table[name]
        table.update(before)


@pytest.fixture
def full_disk_env():
    """The environment for a subprocess run under a file-size limit: CPU, and
    no compilation cache, since the limit holds for every file it writes."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["JAX_PLATFORMS"] = "cpu"
    return env
