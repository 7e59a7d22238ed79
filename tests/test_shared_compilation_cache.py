"""The premise of the suite's shared compilation cache (tests/conftest.py):
a process that reads an entry another is still writing (here: every entry
cut to half its length) gets a warning and compiles the program itself,
with the right result, instead of loading a broken program."""

import os
import subprocess
import sys

PROGRAM = """
import warnings
import jax, jax.numpy as jnp
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    print(float(jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.float32(0.5))))
print("warned:", any("Error reading persistent compilation cache entry" in str(w.message)
                     for w in caught))
"""


def run(cache):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    done = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    value, warned = done.stdout.split("\n")[:2]
    return float(value), warned == "warned: True"


def test_a_half_written_entry_is_compiled_again_with_a_warning(tmp_path):
    expected, warned = run(tmp_path)
    assert not warned
    entries = [p for p in tmp_path.rglob("*") if p.is_file() and p.stat().st_size > 64]
    assert entries, "nothing was written to the cache"
    for entry in entries:
        data = entry.read_bytes()
        entry.write_bytes(data[:len(data) // 2])
    value, warned = run(tmp_path)
    assert value == expected and warned
