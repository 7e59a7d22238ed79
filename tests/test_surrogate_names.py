"""``surrogates.names()`` lists the registered surrogates: the built-in
family and a subclass of one's own once defined; the refusals of an unknown
name (``by_name``, a config's ``surrogate``) list the same names."""

from __future__ import annotations

import dataclasses

import pytest

from spark_somas import ConfigError, ExponentialSomaConfig
from spark_somas.models import surrogates

BUILT_IN = {cls.name for cls in (surrogates.FastSigmoid, surrogates.ArcTan, surrogates.Sigmoid,
                                  surrogates.Triangle, surrogates.Gaussian,
                                  surrogates.StraightThrough)}


def test_names_are_the_built_in_family_sorted():
    names = surrogates.names()
    assert names == sorted(names)
    assert set(names) >= BUILT_IN
    assert all(surrogates.by_name(n).name == n for n in names)


def test_a_surrogate_of_ones_own_is_named_once_defined(monkeypatch):
    # the registry is restored after, so that no other test sees this class
    monkeypatch.setattr(surrogates.Surrogate, "_registry", dict(surrogates.Surrogate._registry))
    before = surrogates.names()

    @dataclasses.dataclass(frozen=True)
    class Box(surrogates.Surrogate):
        name = "test_box_surrogate"

    assert surrogates.names() == sorted([*before, "test_box_surrogate"])
    assert isinstance(surrogates.by_name("test_box_surrogate"), Box)


def test_an_unknown_name_is_refused_with_the_names():
    with pytest.raises(ValueError, match=r"'nope' is not one of \[.*'triangle'.*\]"):
        surrogates.by_name("nope")
    with pytest.raises(ConfigError) as err:
        ExponentialSomaConfig(surrogate="nope")
    assert str(surrogates.names()) in str(err.value)
