"""One error family: every exception class of the package derives from
``SparkSomasError`` and from the builtins it always did; the sentence
"<name> = <value> violates the rule: <rule>" is written by spark_somas.errors
alone, and its helpers name field, value and rule in that order."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import pkgutil
import re

import pytest

import spark_somas as ss
from spark_somas import configs
from spark_somas.errors import (
    ConfigError,
    RuleError,
    RuleKeyError,
    RuleTypeError,
    SparkSomasError,
    require,
    require_shape,
    rule_message,
    violation,
)

PACKAGE = pathlib.Path(ss.__file__).resolve().parent

# Every exception class of the package -> the builtins it derives from (besides
# Exception). A new class must be added here: its builtin is part of its API.
BUILTINS = {
    "SparkSomasError": (Exception,),
    "RuleError": (ValueError,),
    "ConfigError": (ValueError,),
    "RuleTypeError": (TypeError,),
    "RuleKeyError": (KeyError,),
    "OutOfMemoryError": (MemoryError,),
    "FusedBackendError": (ValueError,),
    "CheckpointError": (ValueError,),
    "CheckpointNotFoundError": (ValueError, FileNotFoundError),
    "CheckpointCorruptError": (ValueError,),
    "CheckpointMismatchError": (ValueError,),
    "CheckpointExistsError": (ValueError, FileExistsError),
    "CheckpointNotWritableError": (ValueError, PermissionError),
    "CommandError": (Exception,),
    "RunError": (Exception,),
    "DataError": (ValueError,),
    "EventDatasetMissing": (FileNotFoundError,),
    "DownloadError": (OSError,),
    "ChecksumError": (OSError,),
    "DamagedArchiveError": (OSError,),
    "DiskFullError": (OSError,),
    "DataURLError": (OSError, ValueError),
    "NonFiniteLossError": (FloatingPointError,),
    "NonFiniteGradientError": (FloatingPointError,),
    "NonFiniteStateError": (FloatingPointError,),
    "UnknownModelError": (ValueError,),
}

# The family's own structure, which callers catch by: class -> its package parent.
PARENTS = {
    "RuleError": "SparkSomasError",
    "ConfigError": "RuleError",
    "RuleTypeError": "SparkSomasError",
    "RuleKeyError": "SparkSomasError",
    "OutOfMemoryError": "SparkSomasError",
    "DataError": "RuleError",
    "UnknownModelError": "RuleError",
    "FusedBackendError": "RuleError",
    "CheckpointNotFoundError": "CheckpointError",
    "CheckpointCorruptError": "CheckpointError",
    "CheckpointMismatchError": "CheckpointError",
    "CheckpointExistsError": "CheckpointError",
    "CheckpointNotWritableError": "CheckpointError",
    "ChecksumError": "DownloadError",
    "DamagedArchiveError": "DownloadError",
    "DiskFullError": "DownloadError",
    "DataURLError": "DownloadError",
    "NonFiniteGradientError": "NonFiniteLossError",
    "NonFiniteStateError": "NonFiniteLossError",
}

HELPERS = {"require", "require_shape", "rule_message", "violation"}
SENTENCE = re.compile(r"violates? the rule")
BARE = {"ValueError", "TypeError", "KeyError", "IndexError", "FileNotFoundError", "OSError",
        "RuntimeError", "FloatingPointError"}


def package_exception_classes() -> dict[str, type]:
    """Every exception class defined at the top level of a submodule, by name:
    those of ``ss.SUBMODULES`` and any other public module of the package
    (the command line's is not a lazy attribute). Warnings are no errors; a
    BaseException such as the CLI's Stopped signal is a control-flow event,
    not an Exception."""
    names = {m.name for m in pkgutil.walk_packages(ss.__path__, "spark_somas.")
             if not m.name.rpartition(".")[2].startswith("_")}
    found: dict[str, type] = {}
    for name in sorted(names):
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if (inspect.isclass(obj) and obj.__module__ == module.__name__
                    and issubclass(obj, Exception) and not issubclass(obj, Warning)):
                found[obj.__name__] = obj
    return found


def sources() -> list[pathlib.Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "errors.py")


def relative(path: pathlib.Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _helper_name(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else (
        func.attr if isinstance(func, ast.Attribute) else None)


def hand_written(source: str) -> list[int]:
    """Lines of string literals (f-string parts and implicit concatenations
    included) that write the rule sentence themselves, outside calls of the
    helpers of spark_somas.errors."""
    tree = ast.parse(source)
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _helper_name(node) in HELPERS:
            inside.update(id(n) for n in ast.walk(node))
    return sorted({node.lineno for node in ast.walk(tree)
                   if isinstance(node, ast.Constant) and isinstance(node.value, str)
                   and id(node) not in inside and SENTENCE.search(node.value)})


def bare_builtin_raises(source: str) -> list[int]:
    """Lines that raise a builtin error directly, or hand one to a helper as ``error=``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) \
                and isinstance(node.exc.func, ast.Name) and node.exc.func.id in BARE:
            lines.append(node.lineno)
        elif isinstance(node, ast.keyword) and node.arg == "error" \
                and isinstance(node.value, ast.Name) and node.value.id in BARE:
            lines.append(node.value.lineno)
    return sorted(lines)


# -- (a) and (b): the family ------------------------------------------------

def test_every_exception_class_of_the_package_is_a_spark_somas_error():
    found = package_exception_classes()
    assert {"ConfigError", "DataError", "CheckpointError", "NonFiniteLossError"} <= set(found)
    outside = sorted(name for name, cls in found.items() if not issubclass(cls, SparkSomasError))
    assert outside == [], f"exception classes outside the family: {outside}"


def test_every_exception_class_keeps_the_builtins_callers_catch():
    found = package_exception_classes()
    assert set(found) == set(BUILTINS), (
        f"new classes {sorted(set(found) - set(BUILTINS))} need an entry in BUILTINS; "
        f"gone: {sorted(set(BUILTINS) - set(found))}")
    for name, builtins in BUILTINS.items():
        for builtin in builtins:
            assert issubclass(found[name], builtin), f"{name} is no longer a {builtin.__name__}"
    for name, parent in PARENTS.items():
        assert issubclass(found[name], found[parent]), f"{name} is no longer a {parent}"


def test_the_family_is_exported_and_errors_imports_nothing_of_the_package():
    assert ss.SparkSomasError is SparkSomasError
    assert "SparkSomasError" in ss.__all__ and "errors" in ss.SUBMODULES
    assert ss.ConfigError is configs.ConfigError is ConfigError
    assert configs.require is require
    tree = ast.parse((PACKAGE / "errors.py").read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + [
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.split(".")[0] == "spark_somas"], imported


def test_a_stopping_signal_is_no_error():
    """The CLI's Stopped is a BaseException, as KeyboardInterrupt: no handler
    of errors (``except Exception``, ``except SparkSomasError``) may take it."""
    from spark_somas.cli import Stopped

    assert not issubclass(Stopped, Exception)


# -- (c): one sentence, written in one place -----------------------------------

def test_the_scanner_finds_a_hand_written_sentence_and_skips_the_helpers():
    assert hand_written('raise ValueError(f"x = {x!r} violates the rule: x > 0")\n') == [1]
    assert hand_written('raise E(f"{a} of shape {s} "\n      f"violate the rule: r")\n') == [1]
    assert hand_written('require(x > 0, "x", x, "x > 0")\n') == []
    assert hand_written('errors.require(x > 0, "x", x, "x > 0", error=E)\n') == []
    assert bare_builtin_raises('raise ValueError("no")\nrequire(1, "a", 1, "r", error=TypeError)\n'
                               'raise RuleError("yes")\n') == [1, 2]


def test_no_module_writes_the_rule_sentence_by_hand():
    offending = {relative(p): lines for p in sources() if (lines := hand_written(p.read_text()))}
    assert offending == {}, (
        f"write these refusals with spark_somas.errors.require (or require_shape, "
        f"rule_message, violation): {offending}")


def test_no_module_raises_a_bare_builtin_error():
    offending = {relative(p): lines for p in sources()
                 if (lines := bare_builtin_raises(p.read_text()))}
    assert offending == {}, (
        f"raise a SparkSomasError (RuleError for a ValueError, RuleTypeError for a TypeError, "
        f"RuleKeyError for a KeyError): {offending}")


# -- (d): the helpers ---------------------------------------------------------

class Custom(SparkSomasError, TypeError):
    pass


def test_require_names_field_value_and_rule_in_that_order_and_raises_the_class_given():
    require(True, "tau", -1.0, "tau > 0")  # holds: nothing raised
    with pytest.raises(RuleError) as info:
        require(False, "tau", -1.5, "tau > 0", error=RuleError)
    assert type(info.value) is RuleError
    assert str(info.value) == "tau = -1.5 violates the rule: tau > 0"
    text = str(info.value)
    assert text.index("tau") < text.index("-1.5") < text.index("tau > 0")
    with pytest.raises(Custom) as info:
        require(0, "mode", "fast", "'slow' or 'exact'", error=Custom)
    assert info.value.args == ("mode = 'fast' violates the rule: 'slow' or 'exact'",)


def test_require_raises_a_config_error_by_default_as_configs_require_did():
    with pytest.raises(ConfigError, match=r"^units = \[\] violates the rule: at least one$"):
        configs.require([], "units", [], "at least one")
    with pytest.raises(ValueError):
        require(False, "x", None, "a number")


def test_the_other_forms_of_the_sentence():
    assert rule_message("n", 0, "n >= 1") == "n = 0 violates the rule: n >= 1"
    assert violation("--out /tmp/x", "writable") == "--out /tmp/x violates the rule: writable"
    assert violation("currents", "real", plural=True) == "currents violate the rule: real"
    require_shape(True, "x", (2, 3), "(N, F)")
    with pytest.raises(RuleError, match=re.escape("x of shape (2,) violates the rule: (N, F)")):
        require_shape(False, "x", (2,), "(N, F)")
    with pytest.raises(Custom, match="^currents of dtype complex64 violate the rule: real$"):
        require_shape(False, "currents", "complex64", "real", what="dtype", plural=True,
                      error=Custom)


def test_converted_refusals_are_rule_errors_with_the_same_words():
    from spark_somas import backends, datasets, sharding, surrogates, tasks

    with pytest.raises(RuleError, match=re.escape(
            "backend = 'gpu' violates the rule: one of ('auto', 'scan', 'fused')")):
        backends.resolve_backend("gpu")
    with pytest.raises(RuleError, match=r"^task = 'mnist' violates the rule: one of \["):
        datasets.load_task("mnist")
    with pytest.raises(RuleError, match="^n_cues = 4 violates the rule: odd, so that one side wins$"):
        tasks.EvidenceAccumulation(n_cues=4)
    with pytest.raises(RuleError, match=r"^surrogate = 'arctan:alpha' violates the rule: NAME\["):
        surrogates.from_spec("arctan:alpha")
    with pytest.raises(RuleError, match="^make_mesh: neurons = 0 violates the rule: a positive"):
        sharding.make_mesh(neurons=0)


def test_a_wrong_type_or_a_missing_name_is_in_the_family_and_keeps_its_builtin():
    from spark_somas.models import registry
    from spark_somas.models.somas import SomaOutput

    with pytest.raises(TypeError) as info:
        registry.register_soma(int)
    assert type(info.value) is RuleTypeError
    assert str(info.value).startswith("register_soma: cls = <class 'int'> violates the rule: a soma")
    with pytest.raises(KeyError) as info:
        SomaOutput(spikes=0.0, potential=0.0)["adaptation"]
    assert type(info.value) is RuleKeyError
    assert info.value.args == ("SomaOutput[name] = 'adaptation' violates the rule: an output "
                               "that was recorded",)


@pytest.mark.parametrize("limit, nbytes", [(1000, 1001.0), (1, 2.0), (2**34, 2.0**34 + 1)])
def test_a_block_larger_than_the_device_is_refused_before_it_runs(monkeypatch, limit, nbytes):
    """Over-committing systems grant impossible allocations and then stall
    filling them: ``allocating`` refuses by the device's size, up front."""
    from spark_somas import errors

    monkeypatch.setattr(errors, "device_memory", lambda device=None: limit)
    ran = []
    with pytest.raises(ss.errors.OutOfMemoryError, match=re.escape(
            f"layer needs about {nbytes:.3g} bytes, more than the device could allocate")):
        with errors.allocating("layer", nbytes):
            ran.append(True)
    assert ran == []
    with errors.allocating("layer", limit):  # exactly the device's size is tried
        ran.append(True)
    assert ran == [True]


def test_the_device_memory_is_the_machines_physical_memory_on_a_cpu():
    import os

    from spark_somas import errors

    assert errors.device_memory() == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_an_abstract_build_of_any_size_is_let_through(monkeypatch):
    """Under ``nnx.eval_shape`` nothing is allocated: the up-front check
    stays out of the way of a checkpoint's abstract build."""
    import jax

    from spark_somas import errors

    monkeypatch.setattr(errors, "device_memory", lambda device=None: 1)

    def build():
        with errors.allocating("layer", 10.0**15):
            return jax.numpy.zeros(3)

    assert jax.eval_shape(build).shape == (3,)
    with pytest.raises(ss.errors.OutOfMemoryError):
        build()
