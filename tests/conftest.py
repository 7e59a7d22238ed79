"""Shared test setup: JAX on the CPU unless the caller chose a platform, and
a persistent compilation cache per run, shared by its test workers.

The suite's time budget and its float32 expectations are CPU ones; set
JAX_PLATFORMS yourself to run it elsewhere.
"""

import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiled programs are shared through JAX's persistent cache by the test
# workers and the command-line, notebook and checkpoint subprocesses their
# tests start, which compile many of the same small programs. JAX writes an
# entry in place, without a lock: a process may read an entry another is
# still writing. That read fails its zlib checksum, and JAX then warns and
# compiles the program itself (the warning is filtered in pyproject.toml).
# One directory per run, removed at its end: a run killed while writing
# leaves no truncated entry behind for the next.
CACHE_PREFIX = "spark-somas-tests-jax-cache-"
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix=CACHE_PREFIX)
_cache = os.environ["JAX_COMPILATION_CACHE_DIR"]
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import gc  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402


def pytest_sessionfinish(session):
    """The run's own cache goes with it (in the process that made it: the
    controller of the workers, or a run without them)."""
    if "PYTEST_XDIST_WORKER" not in os.environ and os.path.basename(_cache).startswith(CACHE_PREFIX):
        shutil.rmtree(_cache, ignore_errors=True)


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


@pytest.fixture(autouse=True, scope="module")
def compiled_programs_released():
    """Each test module's compiled programs are released when it ends. XLA
    maps every CPU executable into memory in a few regions of its own and
    keeps them while JAX's caches hold the program. The modules a worker
    runs add up to as many as 80,000 mappings, past Linux's limit of 65,530
    per process, where XLA crashes (a segmentation fault) compiling or
    loading the next program. A later module that needs a program again reads it from the
    persistent cache."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture
def full_disk_env():
    """The environment for a subprocess run under a file-size limit: CPU, and
    no compilation cache, since the limit holds for every file it writes."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["JAX_PLATFORMS"] = "cpu"
    return env
