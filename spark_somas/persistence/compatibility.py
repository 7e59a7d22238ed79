"""What a checkpoint's metadata says, checked against the stored arrays and a model.

:mod:`spark_somas.persistence.checkpointing` reads a step; this module judges
what it read, without touching the disk:

* :func:`metadata_problem` — metadata that is not as ``Checkpointer.save``
  writes it (a hand edit, another program);
* :func:`units_problem` — somas whose ``units`` disagree with their stored
  membrane potentials;
* :func:`rebuild_model` — the model the metadata describes, from a type
  registered in this process (:mod:`spark_somas.models.registry`), built
  abstractly first (``nnx.eval_shape``) so that a spec claiming more than the
  stored arrays hold is refused before anything of its size is allocated;
* :func:`soma_mismatches`, :func:`array_mismatches` — every difference
  between the saved somas or arrays and a model's, as text;
* :func:`rule_problem` — stored parameter values that break a soma's rules;
* the upgrades of earlier releases: a config dict of an older release
  compares as the config it meant (:func:`with_defaults`, through the
  config class's ``upgrade_dict``), and release 0.1.0 recorded no
  integration method (:func:`unrecorded_methods`, :func:`written_by`).

A leaf is stored in its :func:`stored_form`: typed PRNG keys as their raw
key data, Python scalars as arrays.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spark_somas.dynamics import integrators
from spark_somas.models import registry
from spark_somas.models import somas
from spark_somas.models.configs import is_initializer
from spark_somas.persistence.errors import CheckpointCorruptError, CheckpointError

__all__ = [
    "is_key",
    "stored_form",
    "brief",
    "soma_paths",
    "metadata_problem",
    "units_problem",
    "rebuild_model",
    "soma_mismatches",
    "with_defaults",
    "state_units",
    "array_mismatches",
    "rule_problem",
    "unrecorded_methods",
    "unrecorded_method_warning",
    "written_by",
]


def is_key(leaf: Any) -> bool:
    """Whether ``leaf`` is an array of typed PRNG keys."""
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def stored_form(leaf: Any) -> Any:
    """What is written for a leaf: typed PRNG keys as their raw key data,
    Python scalars as arrays."""
    if is_key(leaf):
        return jax.random.key_data(leaf)
    return leaf if hasattr(leaf, "dtype") else np.asarray(leaf)


def brief(value: Any) -> str:
    """``value`` as JSON (a string as its repr), cut to 120 characters."""
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def soma_called(path: str) -> str:
    """How a message names the soma at ``path``: "the soma" for a lone one."""
    return "the soma" if path == "." else f"soma {path!r}"


def soma_paths(model: Any) -> dict[str, somas.Soma]:
    """Every soma of ``model`` by its path (``"."`` for a lone soma)."""
    return {somas.path_name(p) or ".": node for p, node in somas.iter_somas(model)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_SOMA_KEYS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "class": (lambda v: isinstance(v, str), "a class name"),
    "config": (lambda v: isinstance(v, dict), "a dict of config fields"),
    "units": (lambda v: isinstance(v, list) and len(v) > 0 and all(
        isinstance(u, int) and not isinstance(u, bool) and u > 0 for u in v),
              "a list of positive ints"),
    "dt": (_is_number, "a number (ms)"),
    "dtype": (lambda v: isinstance(v, str), "a dtype name"),
    "param_dtype": (lambda v: isinstance(v, str), "a dtype name"),
    "trainable": (lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
                  "a list of field names"),
}


def metadata_problem(meta: Mapping[str, Any]) -> str | None:
    """What in a step's metadata is not as ``Checkpointer.save`` writes it,
    or None: checked before anything reads it, so that damage is named
    instead of raising KeyError deep inside. ``meta`` already holds dicts
    under ``"model"`` and ``"somas"``."""
    if not isinstance(meta.get("time"), str):
        return f"'time' = {brief(meta.get('time'))}, not an ISO 8601 string"
    metrics = meta.get("metrics") or {}
    if not isinstance(metrics, dict) or not all(_is_number(v) for v in metrics.values()):
        return f"'metrics' = {brief(metrics)}, not a dict of numbers"
    model = meta["model"]
    if not isinstance(model.get("class"), str) or not isinstance(model.get("type"), (str, type(None))):
        return f"'model' = {brief(model)}, without a class name and a type name or null"
    for path, spec in meta["somas"].items():
        if not isinstance(spec, dict):
            return f"{soma_called(path)} = {brief(spec)}, not a dict"
        for key, (ok, rule) in _SOMA_KEYS.items():
            if key not in spec or not ok(spec[key]):
                return f"{soma_called(path)} {key!r} = {brief(spec.get(key))}, not {rule}"
        if "method" in spec and spec["method"] not in integrators.METHODS:
            return (f"{soma_called(path)} 'method' = {brief(spec['method'])}, not one of "
                    f"{integrators.METHODS}")
    return None


def _membrane_of(spec: Any) -> str:
    """The membrane variable's name of the soma class a spec names (the
    registry's class; ``"potential"`` when it names none)."""
    try:
        return registry.soma_class(spec.get("class")).membrane
    except (registry.UnknownModelError, AttributeError):
        return "potential"


def units_problem(saved_somas: Mapping[str, Any], stored: Mapping[str, Any]) -> str | None:
    """The first soma whose metadata ``units`` are not the trailing shape of
    its stored membrane potential (``stored``: path -> array metadata of the
    ``state`` item), or None: checked before anything is built from the
    metadata."""
    for path, spec in saved_somas.items():
        units = tuple(spec.get("units") or ()) if isinstance(spec, dict) else None
        membrane = _membrane_of(spec)
        md = stored.get(membrane if path == "." else f"{path}/{membrane}")
        shape = None if md is None else tuple(md.shape)
        if shape is None or units is None or shape[len(shape) - len(units):] != units:
            return (f"{soma_called(path)} has units {units} in the metadata but a stored potential "
                    f"of shape {shape}")
    return None


def rebuild_model(model_meta: Mapping[str, Any],
                  check: Callable[[nnx.Module], None]) -> nnx.Module:
    """The model the metadata describes, built once abstractly
    (``nnx.eval_shape``: shapes and dtypes, no memory) and handed to
    ``check``, then for real. A model whose construction reads a traced
    parameter as a number (none of this package's) cannot be built
    abstractly; it is built for real and compared after.

    Raises:
      CheckpointError: the model's type is not registered in this process
        (no module named in the metadata is ever imported).
      CheckpointCorruptError: the spec cannot build that type.
    """
    name = model_meta.get("type")
    if name is None:
        raise CheckpointError(
            f"the checkpoint holds a {model_meta.get('class')} that no register_model() call "
            "describes, so it cannot be rebuilt from the directory alone; build the model "
            "yourself and use Checkpointer.restore(model)"
        )
    try:
        entry = registry.model_type(name)
    except registry.UnknownModelError as err:
        raise CheckpointError(
            f"model type {err}; loading never imports a module named in a checkpoint: import "
            "or define the model's class and call register_model for it first") from None
    try:
        try:
            abstract = nnx.eval_shape(lambda: entry.build(model_meta.get("spec")))
        except jax.errors.ConcretizationTypeError:
            abstract = None  # its construction reads a traced value as a number
        if abstract is not None:
            check(abstract)
        return entry.build(model_meta.get("spec"))
    except CheckpointError:
        raise
    except registry.UnknownModelError as err:
        raise CheckpointError(str(err)) from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise CheckpointCorruptError(f"the checkpoint's spec of its {name} cannot rebuild it "
                                     f"({type(err).__name__}: {err})") from None


def with_defaults(config_class: type, saved: Mapping[str, Any]) -> Mapping[str, Any]:
    """A saved config dict with the fields and surrogate parameters added
    since it was written, at their defaults (an older release's checkpoint
    compares as the config it meant); as saved if it does not parse."""
    try:
        return config_class(**config_class.upgrade_dict(saved),
                            __skip_validation__=True).to_dict()
    except (TypeError, ValueError):
        return saved


def soma_mismatches(saved: Mapping[str, Any], model: Any) -> list[str]:
    """Every difference between the saved somas (path -> spec) and
    ``model``'s, as text. A config field the model draws from an
    initializer takes the saved values and is not compared."""
    have = soma_paths(model)
    problems = []
    for path in sorted(set(saved) | set(have)):
        if path not in have:
            problems.append(f"{soma_called(path)}: checkpoint has a {saved[path]['class']}, model has none")
            continue
        if path not in saved:
            problems.append(f"{soma_called(path)}: model has a {type(have[path]).__name__}, checkpoint has none")
            continue
        mine, theirs = registry.soma_spec(have[path]), saved[path]
        for key in ("class", "units", "dt", "method", "dtype", "param_dtype", "trainable"):
            if key == "method" and key not in theirs:
                continue  # release 0.1.0 did not record it: see unrecorded_methods
            if theirs.get(key) != mine[key]:
                problems.append(f"{soma_called(path)} {key}: checkpoint {brief(theirs.get(key))}, "
                                f"model {brief(mine[key])}")
        if theirs.get("class") != mine["class"]:
            continue
        live = have[path].config
        drawn = {f.name for f in live.quantity_fields() if is_initializer(getattr(live, f.name))}
        config = with_defaults(type(live), theirs["config"])
        for name in mine["config"]:
            if name not in drawn and config.get(name) != mine["config"][name]:
                problems.append(f"{soma_called(path)} config.{name}: checkpoint "
                                f"{brief(config.get(name))}, model {brief(mine['config'][name])}")
    return problems


def state_units(model: Any) -> dict[str, tuple[int, ...]]:
    """Path of every neuron-state leaf of ``model`` (each ``SomaState``, the
    somas' and any other module's: a network's synaptic currents, previous
    spikes, readout potential) -> its units, the trailing shape a batch
    never changes: a soma's ``units``; for any other leaf, its shape less
    the batch shape the model's somas hold now (one batch for the whole
    model, as ``Soma.broadcast_state`` and every ``reset`` keep it)."""
    out, batches = {}, set()
    for path, soma in soma_paths(model).items():
        prefix = "" if path == "." else path + "/"
        for name, leaf in somas.named_leaves(nnx.to_pure_dict(nnx.state(soma, somas.SomaState))).items():
            out[prefix + name] = soma.units
            batches.add(tuple(np.shape(leaf))[: np.ndim(leaf) - len(soma.units)])
    batch = batches.pop() if len(batches) == 1 else ()
    for name, leaf in somas.named_leaves(nnx.to_pure_dict(nnx.state(model, somas.SomaState))).items():
        shape = tuple(np.shape(leaf))
        if name not in out and shape[: len(batch)] == batch:
            out[name] = shape[len(batch):]
    return out


def array_mismatches(item: str, saved: Mapping[str, Any], target: Mapping[str, Any],
                     loose: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Differences in path, dtype and shape between saved array metadata
    (path -> an object with ``dtype`` and ``shape``) and the target's leaves
    (path -> leaf); ``loose`` paths (neuron state, mapped to their units)
    take the saved batch shape, which must be one for all of them, followed
    by those units."""
    problems, batches = [], {}
    for path in sorted(set(saved) | set(target)):
        if path not in target:
            problems.append(f"{item} {path!r}: in the checkpoint, not in the model")
        elif path not in saved:
            problems.append(f"{item} {path!r}: in the model, not in the checkpoint")
        else:
            leaf, md = stored_form(target[path]), saved[path]
            dtype, shape = jnp.dtype(leaf.dtype), tuple(np.shape(leaf))
            if jnp.dtype(md.dtype) != dtype:
                problems.append(f"{item} {path!r} dtype: checkpoint {jnp.dtype(md.dtype).name}, "
                                f"model {dtype.name}")
            saved_shape = tuple(md.shape)
            if path in loose:
                units = loose[path]
                if len(saved_shape) < len(units) or saved_shape[len(saved_shape) - len(units):] != units:
                    problems.append(f"{item} {path!r} shape: checkpoint {saved_shape}, which does "
                                    f"not end in the model's units {units}")
                else:
                    batches.setdefault(saved_shape[: len(saved_shape) - len(units)], path)
            elif saved_shape != shape:
                problems.append(f"{item} {path!r} shape: checkpoint {saved_shape}, model {shape}")
    if len(batches) > 1:
        problems.append(f"{item}: the neuron state has several batch shapes in the checkpoint ("
                        + ", ".join(f"{b} at {p!r}" for b, p in batches.items()) + ")")
    return problems


def rule_problem(model: nnx.Module, state: Mapping[str, Any]) -> tuple[str, ValueError] | None:
    """The first soma of ``model`` (its path) whose fields in ``state``, a
    pure dict of ``model``'s state, break the soma's rules, with the
    refusal; None when every soma's values are legal."""
    leaves = somas.named_leaves(state)
    for path, soma in soma_paths(model).items():
        prefix = "" if path == "." else path + "/"
        try:
            soma.check_parameters({f.name: leaves[prefix + f.name]
                                   for f in soma.config.quantity_fields()})
        except ValueError as err:
            return path, err
    return None


def unrecorded_methods(saved: Mapping[str, Any]) -> list[str]:
    """Paths of the saved somas whose metadata records no integration method
    (written by release 0.1.0)."""
    return sorted(path for path, spec in saved.items()
                  if isinstance(spec, Mapping) and "method" not in spec)


def unrecorded_method_warning(step: int, directory: Any, meta: Mapping[str, Any],
                              unrecorded: list[str], consequence: str) -> str:
    """The warning for a step whose somas ``unrecorded`` record no method:
    who wrote it, then ``consequence`` (what the restore does about it)."""
    return (f"checkpoint step {step} of {directory} was written by {written_by(meta)}, which "
            f"did not record the integration method of soma(s) {unrecorded}: {consequence}")


def written_by(meta: Mapping[str, Any]) -> str:
    """The release that wrote a step, as its metadata records it."""
    versions = meta.get("versions")
    version = versions.get("spark_somas") if isinstance(versions, Mapping) else None
    return f"spark_somas {version}" if isinstance(version, str) else "an older spark_somas"
