"""A checkpoint survives the process and the disk it is written with: kill -9
at any point of a save or of a retention deletion, a file system that
refuses a write, and the asyncio reports such a write leaves behind. The
killed processes run tests/_checkpoint_worker.py or a script given here."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import _checkpoint_worker as worker
from spark_somas.persistence import checkpointing as ck


@pytest.mark.parametrize("point", list(worker.CRASH_POINTS))
def test_save_killed_at_any_point_keeps_every_committed_step(tmp_path, point):
    """kill -9 at several points of an asynchronous save: the previous step
    always restores, the killed step exists only if its final rename ran,
    and the next writer cleans up and saves again."""
    proc = worker.run_worker("crash", str(tmp_path), point, background=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "blocked").exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, f"the worker never reached {point!r}"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    directory = tmp_path / "ckpt"
    committed = point == "after the final rename"
    if not committed:
        assert glob.glob(str(directory / "2.orbax-checkpoint-tmp*")), os.listdir(directory)
    expected_steps = [1, 2] if committed else [1]
    assert [i.step for i in ck.describe(directory)] == expected_steps
    assert ck.Checkpointer(directory, read_only=True).all_steps() == expected_steps
    worker.assert_states_equal(dict(np.load(tmp_path / "step1.npz")),
                        worker.flat_state("model", ck.load(directory, step=1)))
    if committed:
        worker.assert_states_equal(dict(np.load(tmp_path / "step2.npz")),
                            worker.flat_state("model", ck.load(directory, step=2)))
    # A new writer clears what the killed save left and saves the next step.
    soma = ck.load(directory, step=1)
    with ck.Checkpointer(directory) as writer:
        writer.save(3, soma)
    assert not glob.glob(str(directory / "*tmp*"))
    assert ck.Checkpointer(directory, read_only=True).all_steps() == expected_steps + [3]
    worker.assert_states_equal(dict(np.load(tmp_path / "step1.npz")),
                        worker.flat_state("model", ck.load(directory)))


RETENTION_CUT_SHORT = """
import os, sys
import spark_somas as ss
from spark_somas.persistence import checkpointing as ck

unlink = os.unlink
def unlink_then_die(path, *args, **kwargs):  # killed right after a step's metadata file goes
    unlink(path, *args, **kwargs)
    if os.path.basename(os.fsdecode(path)) == "metadata":
        os._exit(3)
with ck.Checkpointer(sys.argv[1], async_save=False) as ckpt:
    ckpt.save(1, ss.ExponentialSoma(units=2))
os.unlink = unlink_then_die
with ck.Checkpointer(sys.argv[1], max_to_keep=1, async_save=False) as ckpt:
    ckpt.save(2, ss.ExponentialSoma(units=2))
"""


def test_a_retention_deletion_cut_short_leaves_no_listed_step_without_metadata(tmp_path):
    """Retention moves a step away by one rename before removing its files:
    a process killed while they are removed leaves only complete steps listed,
    and the next writer removes the rest."""
    import warnings

    proc = subprocess.run([sys.executable, "-c", RETENTION_CUT_SHORT, str(tmp_path)],
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 3, proc.stderr  # killed inside the deletion
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [info.step for info in ck.describe(tmp_path)] == [2]
    ck.load(tmp_path)
    with ck.Checkpointer(tmp_path, max_to_keep=1):
        pass
    assert os.listdir(tmp_path) == ["2"]


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
import jax
import spark_somas as ss
from spark_somas.persistence import checkpointing as ck
big = ss.ExponentialSoma(units=200_000)
big.potential[...] = jax.random.normal(jax.random.key(0), (200_000,))  # incompressible
ckpt = ck.Checkpointer(sys.argv[1], async_save=sys.argv[2] == "async")
ckpt.save(0, ss.ExponentialSoma(units=2))
ckpt.wait()
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))  # the disk is now full
try:
    ckpt.save(1, big)
    ckpt.close()
except ck.CheckpointNotWritableError as err:
    print("refused:", err)
"""


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_a_write_that_fails_on_the_file_system_is_not_writable_and_keeps_earlier_steps(
        tmp_path, mode, full_disk_env):
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path), mode], env=full_disk_env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("refused: a save to ") and "not committed" in proc.stdout
    assert "File too large" in proc.stdout  # the file system's reason, in one line
    assert len(proc.stdout.splitlines()) == 1
    assert ck.describe(tmp_path)[-1].step == 0
    assert ck.load(tmp_path).units == (2,)


@pytest.mark.parametrize("kind", ["Task", "Future", "_GatheringFuture"])
def test_asyncio_copies_of_a_failed_write_into_the_directory_are_dropped(tmp_path, caplog, kind):
    import logging

    ck.Checkpointer(tmp_path / "run")
    here = str(tmp_path / "run" / "1.orbax-checkpoint-tmp" / "state")
    elsewhere = str(tmp_path / "other" / "state")
    log = logging.getLogger("asyncio")
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        log.error("%s exception was never retrieved\nfuture: <%s exception=ValueError('"
                  "Error writing %s')>", kind, kind, here)
        log.error("%s exception was never retrieved\nfuture: <%s exception=ValueError('"
                  "Error writing %s')>", kind, kind, elsewhere)
        log.error("Unclosed client session in %s", here)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert elsewhere in messages[0] and messages[1].startswith("Unclosed client session")
