"""spark_somas.models.registry: a name belongs to one class. A class of
one's own that shares a built-in's name (or short name) is refused by name,
and the built-in's checkpoints still rebuild the built-in; the same class
registered again (a module reload) replaces its entry."""

import numpy as np
import pytest

import spark_somas as ss
from spark_somas import registry
from spark_somas.errors import RuleError

BUILT_IN = {"expif": ss.ExponentialSoma, "refractory": ss.RefractoryExponentialSoma,
            "adex": ss.AdaptiveExponentialSoma,
            "simplified": ss.SimplifiedAdaptiveExponentialSoma}


@pytest.fixture(autouse=True)
def registry_restored():
    """Each test leaves the registry as it found it."""
    types, somas = dict(registry._TYPES), dict(registry.SOMAS)
    yield
    for table, before in ((registry._TYPES, types), (registry.SOMAS, somas)):
        table.clear()
        table.update(before)


def namesake(name: str, base: type, module: str = "user_code") -> type:
    """A class of one's own called ``name`` (qualified name too), defined in ``module``."""
    return type(name, (base,), {"__module__": module})


@pytest.mark.parametrize("short", sorted(BUILT_IN))
@pytest.mark.parametrize("related", [True, False])
@pytest.mark.parametrize("module", ["user_code", "__main__", "spark_somas.user"])
def test_a_class_sharing_a_built_in_name_is_refused_and_checkpoints_still_load(short, related,
                                                                               module):
    """Whether it subclasses the built-in or another soma, from any module."""
    built_in = BUILT_IN[short]
    base = built_in if related else BUILT_IN["expif" if short != "expif" else "adex"]
    mine = namesake(built_in.__name__, base, module)
    soma = built_in(units=2)
    spec = registry.soma_spec(soma)
    with pytest.raises(RuleError) as info:
        registry.register_soma(mine)
    message = str(info.value)
    assert message.startswith(f"register_model: name = {built_in.__name__!r} violates the rule: "
                              "not taken by another class"), message
    assert f"{built_in.__module__}.{built_in.__qualname__} has it" in message, message
    assert f"{module}.{built_in.__name__} is another" in message, message
    assert registry.soma_class(built_in.__name__) is built_in
    assert registry.soma_class(short) is built_in and ss.SOMAS[short] is built_in
    rebuilt = registry.soma_from_spec(spec)
    assert type(rebuilt) is built_in
    np.testing.assert_array_equal(rebuilt.potential[...], soma.potential[...])


@pytest.mark.parametrize("short", sorted(BUILT_IN))
def test_a_class_taking_a_built_in_short_name_is_refused(short):
    mine = namesake("MySoma", ss.AdaptiveExponentialSoma)
    with pytest.raises(RuleError, match=f"register_model: name = {short!r} violates the rule: "
                                        "not taken by another class"):
        registry.register_soma(mine, short)
    assert registry.soma_class(short) is BUILT_IN[short]


def test_the_same_class_registered_again_replaces_its_entry():
    """A module reload defines the class anew under the same module and
    qualified name: it replaces the entry (and a built-in re-registers)."""
    first = namesake("ReloadedSoma", ss.AdaptiveExponentialSoma)
    registry.register_soma(first, "reloaded")
    second = namesake("ReloadedSoma", ss.AdaptiveExponentialSoma)
    registry.register_soma(second, "reloaded")
    assert registry.soma_class("ReloadedSoma") is second and ss.SOMAS["reloaded"] is second
    registry.register_soma(ss.AdaptiveExponentialSoma, "adex")
    assert registry.soma_class("adex") is ss.AdaptiveExponentialSoma
