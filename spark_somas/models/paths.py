"""Somas and leaves of a module tree by name: how checkpoints, loggers and
the constraint projection find and name what they store."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import jax
from flax import nnx

from spark_somas.models.protocol import Soma

__all__ = ["iter_somas", "path_name", "named_leaves"]


def iter_somas(model: Any) -> Iterator[tuple[tuple, Soma]]:
    """(path, soma) for every soma (any :class:`~spark_somas.models.protocol.Soma`)
    in an NNX module tree, ``model`` included."""
    for path, node in nnx.iter_graph(model):
        if isinstance(node, Soma):
            yield path, node


def path_name(path: Sequence[Any]) -> str:
    """A tree path (key entries, or the plain keys of :func:`iter_somas`) as
    ``"a/b/c"`` ("" for the root): how checkpoints and the constraint
    projection name a soma and its fields."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def named_leaves(tree: Any) -> dict[str, Any]:
    """The leaves of a pytree by their :func:`path_name`: how checkpoints and
    loggers list parameters and state."""
    return {path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
