"""The package's errors: one family, one sentence.

Every error spark_somas raises on purpose derives from
:class:`SparkSomasError`, so ``except ss.SparkSomasError`` tells a refusal of
the package from a failure of something under it (JAX, NumPy, the file
system). Each concrete class also derives from the builtin a caller would
expect of it, so that ``except ValueError`` or ``except FileNotFoundError``
keeps working: a value breaking a rule is a ``ValueError``
(:class:`RuleError`, :class:`ConfigError`, ``DataError``,
``CheckpointError``, …), a value of the wrong type a ``TypeError``
(:class:`RuleTypeError`), a name that is not there a ``KeyError``
(:class:`RuleKeyError`), a model larger than the device's memory a
``MemoryError`` (:class:`OutOfMemoryError`), a missing dataset a ``FileNotFoundError``, a failed
download an ``OSError``, a diverging loss a ``FloatingPointError``.

A refusal names the field, the value and the rule, in one sentence written
here alone::

    <name> = <value> violates the rule: <rule>

:func:`require` raises it (:func:`rule_message` writes it, for a
``raise … from None``); :func:`require_shape` writes its form for an
array named by its shape (or dtype); :func:`violation` writes the sentence
for a subject of another form. Each is raised before any work is done.

This module imports nothing else from the package, so every module may
import it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

__all__ = [
    "SparkSomasError",
    "RuleError",
    "ConfigError",
    "RuleTypeError",
    "RuleKeyError",
    "OutOfMemoryError",
    "device_memory",
    "allocating",
    "violation",
    "rule_message",
    "require",
    "require_shape",
]


class SparkSomasError(Exception):
    """The root of every error spark_somas raises on purpose.

    Catch it to handle any refusal of the package at once. It is never
    raised itself: each concrete class derives from it and from the builtin
    a caller would expect (``ValueError``, ``FileNotFoundError``,
    ``OSError``, ``FloatingPointError``, …), so that code catching the
    builtin keeps catching it.
    """


class RuleError(SparkSomasError, ValueError):
    """A value breaks a rule; the message names the field, the value and the rule."""


class ConfigError(RuleError):
    """A config field breaks its rule. Names the field, the value and the rule."""


class RuleTypeError(SparkSomasError, TypeError):
    """A value of the wrong type is passed (an argument that is no soma, no
    callback, no config); a ``TypeError``, as before, so ``except TypeError``
    keeps catching it. The message names the field, the value and the rule."""


class RuleKeyError(SparkSomasError, KeyError):
    """A name is looked up that is not there (an output that was not
    recorded); a ``KeyError``, as before, so ``except KeyError`` keeps
    catching it. The message names the field, the value and the rule."""


class OutOfMemoryError(SparkSomasError, MemoryError):
    """A model is larger than the device could allocate; the message names
    what was being built and about how many bytes it needs."""


def device_memory(device: Any = None) -> int:
    """The bytes ``device`` (default: this process's first device) can
    hold: its ``bytes_limit``, or the machine's physical memory for a CPU,
    which reports none."""
    import jax  # here, not at the top: this module is imported before JAX is needed

    device = device or jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    limit = (stats or {}).get("bytes_limit")
    if limit is None:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(limit)


def _abstract() -> bool:
    """Whether this runs under a JAX trace (``nnx.eval_shape``, ``jax.jit``),
    where arrays are shapes and nothing is allocated: every JAX operation
    there returns a tracer."""
    import jax
    import jax.numpy as jnp

    return isinstance(jnp.zeros(()), jax.core.Tracer)


@contextlib.contextmanager
def allocating(what: str, nbytes: float) -> Iterator[None]:
    """Refuses, before anything is allocated, a block that needs more than
    the device holds (:func:`device_memory`), and turns a failed allocation
    inside the block — Python's ``MemoryError`` or XLA's
    ``RESOURCE_EXHAUSTED`` — into the same :class:`OutOfMemoryError`
    ``"<what> needs about <nbytes> bytes, more than the device could
    allocate"``, instead of an allocator's message about some array. The
    check comes first because a system that over-commits memory may grant
    an impossible allocation and then stall the machine while filling it;
    an abstract build (``nnx.eval_shape``) allocates nothing and is let
    through.
    An :class:`OutOfMemoryError` from an inner block (a soma inside a
    network) passes unchanged: it names the part that did not fit."""
    refusal = OutOfMemoryError(f"{what} needs about {nbytes:.3g} bytes, more than the device "
                               f"could allocate")
    if nbytes > device_memory() and not _abstract():
        raise refusal
    try:
        yield
    except OutOfMemoryError:
        raise
    except Exception as err:
        if not isinstance(err, MemoryError) and "RESOURCE_EXHAUSTED" not in str(err):
            raise
        raise refusal from None


def violation(subject: str, rule: str, *, plural: bool = False) -> str:
    """The sentence ``"<subject> violates the rule: <rule>"`` (``violate``
    with ``plural``): the end of every refusal that names a rule. ``subject``
    names what breaks it and shows its value, e.g. ``"x_train has shape
    (0, 3), which"`` or ``"--out /tmp/x"``; :func:`require` and
    :func:`require_shape` write the two common subjects."""
    return f"{subject} {'violate' if plural else 'violates'} the rule: {rule}"


def rule_message(name: str, value: Any, rule: str) -> str:
    """The sentence ``"<name> = <value> violates the rule: <rule>"`` that
    :func:`require` raises, for a ``raise … from None`` inside an ``except``."""
    return violation(f"{name} = {value!r}", rule)


def require(ok: Any, name: str, value: Any, rule: str, *,
            error: type[Exception] = ConfigError) -> None:
    """Raises ``error("<name> = <value> violates the rule: <rule>")`` unless
    ``ok``: the one form of every refusal that names field, value and rule.
    The value is shown as its ``repr``; pass a string describing it (``"an
    array of shape (3,)"``) where the value itself would not read well."""
    if not ok:
        raise error(rule_message(name, value, rule))


def require_shape(ok: Any, name: str, shape: Any, rule: str, *,
                  error: type[Exception] = RuleError, what: str = "shape",
                  plural: bool = False) -> None:
    """Raises ``error("<name> of shape <shape> violates the rule: <rule>")``
    unless ``ok``: the form for an array named by its shape rather than its
    values. ``what="dtype"`` names the dtype instead; ``plural`` says
    ``violate`` (``"currents of shape (20,) violate the rule: …"``)."""
    if not ok:
        raise error(violation(f"{name} of {what} {shape}", rule, plural=plural))
