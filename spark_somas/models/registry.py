"""The one registry of model classes, by name.

Checkpoints, the command line and the training network find a class here
and nowhere else: a checkpoint's metadata names a registered type (loading
never imports a module named on disk), ``spark-somas train --soma`` offers
the registered somas' short names, and ``SpikingNetwork(soma=...)`` accepts
a short name, a class name or a class.

An entry (:class:`ModelType`) says how to describe an instance as JSON
(``spec``) and how to build a fresh one from that description (``build``).
The four somas register themselves under their class names with short names
``"expif"``, ``"refractory"``, ``"adex"`` and ``"simplified"``;
:class:`~spark_somas.training.network.SpikingNetwork` registers when
:mod:`spark_somas.training.network` is imported, which the first look-up of its name
does.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from spark_somas.models import configs
from spark_somas.models import somas
from spark_somas.errors import RuleError, RuleTypeError, require, rule_message

__all__ = [
    "ModelType",
    "UnknownModelError",
    "register_model",
    "register_soma",
    "register_deferred",
    "model_type",
    "type_of",
    "soma_class",
    "soma_names",
    "soma_spec",
    "soma_from_spec",
    "SOMAS",
]


class UnknownModelError(RuleError):
    """A name that no :func:`register_model` call registered."""


@dataclasses.dataclass(frozen=True)
class ModelType:
    """How a model class is described and rebuilt: ``spec(model)`` describes
    an instance (a JSON-serialisable dict); ``build(spec)`` returns a fresh
    instance of the same architecture, whose arrays a checkpoint then
    overwrites. ``short`` is an optional second name (the somas' CLI names)."""

    name: str
    cls: type
    spec: Callable[[Any], dict]
    build: Callable[[Mapping[str, Any]], nnx.Module]
    short: str | None = None


_TYPES: dict[str, ModelType] = {}

#: The integration method of a soma whose spec records none: release 0.1.0
#: wrote no ``method`` and integrated with forward Euler unless told otherwise.
LEGACY_METHOD = "euler"

#: Short name -> soma class, for every registered soma that has one (a live view).
SOMAS: dict[str, type[somas.Soma]] = {}


def register_model(name: str, cls: type, *, spec: Callable[[Any], dict],
                   build: Callable[[Mapping[str, Any]], nnx.Module],
                   short: str | None = None) -> None:
    """Registers ``cls`` under ``name`` (and ``short``, for a soma class).

    Registering the same name again for the same class — the same module
    and qualified name, as a module reload makes anew — replaces the entry;
    a name taken by another class, even one that shares its class name (a
    class of one's own called ``AdaptiveExponentialSoma``), raises
    ``RuleError`` (a ``ValueError``): checkpoints of the class registered
    first would otherwise be rebuilt as the other. A soma subclass registers
    with ``spec=soma_spec, build=soma_from_spec``.
    """
    for key in (name, short):
        old = _TYPES.get(key) if key else None
        if old is not None and _path(old.cls) != _path(cls):
            raise RuleError(rule_message("register_model: name", key,
                                         f"not taken by another class ({_path(old.cls)} has "
                                         f"it; {_path(cls)} is another: give it a class name "
                                         "of its own)"))
    entry = ModelType(name, cls, spec, build, short)
    _TYPES[name] = entry
    if short:
        _TYPES[short] = entry
        if issubclass(cls, somas.Soma):
            SOMAS[short] = cls


def _path(cls: type) -> str:
    """Where ``cls`` is defined: ``module.qualname``, the same after a reload."""
    return f"{cls.__module__}.{cls.__qualname__}"


def register_soma(cls: type[somas.Soma], short: str | None = None) -> type[somas.Soma]:
    """Registers soma class ``cls`` under its class name (and ``short``):
    checkpoints, networks (``soma="short"``) and the command line then find
    it. Returns ``cls``, so that it also works as a class decorator."""
    require(isinstance(cls, type) and issubclass(cls, somas.Soma) and cls.state_variables,
            "register_soma: cls", cls, "a soma model: a subclass of "
            "spark_somas.models.somas.Soma that declares its state_variables",
            error=RuleTypeError)
    register_model(cls.__name__, cls, spec=soma_spec, build=soma_from_spec, short=short)
    return cls


#: Type name -> the module that registers it, imported when the name is first
#: looked up. Filled by code, never from a checkpoint: no name read from disk
#: is imported. The training network is named here by its module's name, an
#: import only when looked up, so this layer imports nothing above it.
_DEFERRED: dict[str, str] = {"SpikingNetwork": "spark_somas.training.network"}


def register_deferred(name: str, module: str) -> None:
    """The first look-up of ``name`` imports ``module``, which registers it.

    This is how a model type defined in a higher layer of the package (the
    training network) is found by a lower one (checkpoint loading) without
    the lower layer importing the higher."""
    _DEFERRED[name] = module


def model_type(name: Any) -> ModelType:
    """The entry registered as ``name``; :class:`UnknownModelError` otherwise.

    Deferred types register on first use (:func:`register_deferred`):
    looking up ``"SpikingNetwork"`` imports :mod:`spark_somas.training.network`,
    so a network checkpoint loads after ``import spark_somas`` alone."""
    if isinstance(name, str) and name not in _TYPES and name in _DEFERRED:
        importlib.import_module(_DEFERRED[name])
    entry = _TYPES.get(name) if isinstance(name, str) else None
    if entry is None:
        raise UnknownModelError(f"{name!r} is not registered (known: {sorted(_TYPES)})")
    return entry


def type_of(model: Any) -> ModelType | None:
    """The entry of ``model``'s exact class, or None."""
    return next((t for t in _TYPES.values() if type(model) is t.cls), None)


def soma_names() -> list[str]:
    """Every name a registered soma class answers to, sorted."""
    return sorted(n for n, t in _TYPES.items() if issubclass(t.cls, somas.Soma))


def soma_class(soma: str | type) -> type[somas.Soma]:
    """A soma class from a registered name (short or class name) or the class itself.

    Raises:
      UnknownModelError: ``soma`` names no registered soma class.
    """
    if isinstance(soma, type) and issubclass(soma, somas.Soma):
        return soma
    entry = _TYPES.get(soma) if isinstance(soma, str) else None
    if entry is None or not issubclass(entry.cls, somas.Soma):
        known = soma_names()
        same = [n for n in known if isinstance(soma, str) and n.lower() == soma.lower()]
        hint = (f"did you mean {same[0]!r}? Names are case-sensitive" if same
                else "a model of your own is registered with register_soma")
        raise UnknownModelError(f"soma class {soma!r} is not registered (known: {known}); {hint}")
    return entry.cls


def soma_spec(soma: somas.Soma) -> dict[str, Any]:
    """A soma's construction as JSON: class, config, units, dt, integration
    method, dtypes, trained fields.

    A config field given as an initializer is recorded as the values it drew,
    so the spec rebuilds the same soma without the random key.
    """
    config = soma.config.to_dict()
    for name, value in config.items():
        if configs.is_initializer(value):
            config[name] = np.asarray(getattr(soma, name)[...], np.float64).tolist()
    return {
        "class": type(soma).__name__,
        "config": config,
        "validated": soma.config.validated,
        "units": list(soma.units),
        "dt": soma.dt,
        "method": soma.method,
        "dtype": soma.dtype.name,
        "param_dtype": soma.param_dtype.name,
        "trainable": sorted(soma.trainable),  # order does not change the soma
    }


def soma_from_spec(spec: Mapping[str, Any]) -> somas.Soma:
    """Inverse of :func:`soma_spec`: a soma at rest with the recorded config,
    its class taken from this registry. A spec without ``method`` (written
    by release 0.1.0, which did not record it) gives forward Euler, that
    release's default."""
    cls = soma_class(spec["class"])
    config = (cls.config_class.from_dict(spec["config"]) if spec.get("validated", True)
              else cls.config_class(**spec["config"], __skip_validation__=True))
    return cls(config, units=tuple(spec["units"]), dt=spec["dt"],
               method=spec.get("method", LEGACY_METHOD), trainable=tuple(spec["trainable"]),
               dtype=jnp.dtype(spec["dtype"]), param_dtype=jnp.dtype(spec["param_dtype"]))


for _short, _cls in (("expif", somas.ExponentialSoma),
                     ("refractory", somas.RefractoryExponentialSoma),
                     ("adex", somas.AdaptiveExponentialSoma),
                     ("simplified", somas.SimplifiedAdaptiveExponentialSoma)):
    register_model(_cls.__name__, _cls, spec=soma_spec, build=soma_from_spec, short=_short)
