"""Shared test setup: JAX on the CPU unless the caller chose a platform.

The suite's time budget and its float32 expectations are CPU ones; set
JAX_PLATFORMS yourself to run it elsewhere.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
