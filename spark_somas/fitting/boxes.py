"""Where each fitted field may go: its box [lo, hi] (the bounds given, else
what the config rules allow), the map from the optimizer's unconstrained u
to the field's value x, and the starts' initial u."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from spark_somas.models import configs
from spark_somas.models.configs import require
from spark_somas.models.somas import Soma
from spark_somas.fitting.recording import as_tuple, checked_number

__all__ = ["Box", "field_boxes", "check_bounds", "initial_u", "start_count"]

Array = jax.Array


@functools.partial(jax.tree_util.register_dataclass, data_fields=["lo", "hi", "scale"],
                   meta_fields=["kind", "dtype"])
@dataclasses.dataclass(frozen=True)
class Box:
    """A fitted field's box [lo, hi], its map u -> x and u's own range; x
    is in ``dtype``, the soma's parameter dtype (u is at least float32).

    A pytree whose leaves are the numbers lo, hi and scale: a compiled fit
    takes them as arguments, so fits in boxes of the same kinds share one
    program whatever their ends and starts."""

    kind: str  # "sigmoid", "log_sigmoid", "above", "below", "linear"
    lo: float
    hi: float
    scale: float
    dtype: str

    @classmethod
    def of(cls, lo: float, hi: float, start: float, dtype: Any) -> "Box":
        lo_finite, hi_finite = lo > -configs.LARGEST, hi < configs.LARGEST
        kind = ("log_sigmoid" if lo > 0 else "sigmoid") if lo_finite and hi_finite else (
            "above" if lo_finite else "below" if hi_finite else "linear")
        return cls(kind, lo, hi, max(abs(start), 1.0), jnp.dtype(dtype).name)

    def to_x(self, u: Array) -> Array:
        if self.kind == "sigmoid":
            x = self.lo + (self.hi - self.lo) * jax.nn.sigmoid(u)
        elif self.kind == "log_sigmoid":
            x = jnp.exp(jnp.log(self.lo) + jnp.log(self.hi / self.lo) * jax.nn.sigmoid(u))
        elif self.kind == "above":
            x = self.lo + jnp.exp(u)
        elif self.kind == "below":
            x = self.hi - jnp.exp(u)
        else:
            x = self.scale * u
        return jnp.clip(x, self.lo, self.hi).astype(self.dtype)

    def to_u(self, x: np.ndarray) -> np.ndarray:
        x = np.clip(np.asarray(x, np.float64), self.lo, self.hi)
        if self.kind in ("sigmoid", "log_sigmoid"):
            frac = ((x - self.lo) / (self.hi - self.lo) if self.kind == "sigmoid"
                    else np.log(x / self.lo) / math.log(self.hi / self.lo))
            frac = np.clip(frac, 1e-6, 1 - 1e-6)
            return np.log(frac / (1 - frac))
        if self.kind == "above":
            return np.log(np.maximum(x - self.lo, 1e-12))
        if self.kind == "below":
            return np.log(np.maximum(self.hi - x, 1e-12))
        return x / self.scale

    def u_range(self) -> tuple[float, float]:
        """Where the map is finite and still moves: beyond, σ(u) is 0 or 1
        in float32 and e^u under- or overflows the box."""
        if self.kind in ("sigmoid", "log_sigmoid"):
            return -30.0, 30.0
        if self.kind in ("above", "below"):
            return -30.0, math.log(self.hi - self.lo) if self.hi - self.lo < math.inf else 30.0
        return self.lo / self.scale, self.hi / self.scale


def field_boxes(soma: Soma, fields: tuple[str, ...],
                bounds: Mapping[str, tuple[float, float]],
                start: Mapping[str, float]) -> dict[str, Box]:
    """Each fitted field's box: its bounds, checked against what the config
    rules allow over the other fields' boxes, or that interval itself."""
    values = {n: float(np.asarray(v).ravel()[0]) for n, v in soma.parameters().items()}
    # Box ends representable in the parameters' dtype, which half precision
    # rounds coarser than float32 (a strict rule's next value included).
    box_dtype = soma.param_dtype if soma.param_dtype.itemsize < 4 else jnp.dtype(jnp.float32)
    given = {n: (float(lo), float(hi)) for n, (lo, hi) in bounds.items()}
    box = dict(given)

    def rule_interval(name: str) -> tuple[float, float]:
        # The rules are monotone in each other field, so the interval allowed
        # over the others' whole boxes is the intersection of those allowed
        # at each box's two ends.
        ends = [{**values, **{n: box.get(n, (values[n],) * 2)[i] for n in fields if n != name}}
                for i in (0, 1)]
        largest = float(jnp.finfo(box_dtype).max)  # float16 holds no 1e6
        lo, hi = -largest, largest
        for v in ends:
            with np.errstate(over="ignore"):  # ±1e6 rounds to ±inf in float16: clipped here
                a, b = configs.feasible_interval(soma.config_class, name, v, box_dtype)
            lo, hi = max(lo, float(a)), min(hi, float(b))
        if name in soma.config_class.time_constant_fields():  # the Euler leak 1 − dt/τ ≥ 0
            lo = max(lo, soma.dt)
        return lo, hi

    for name in fields:
        if name not in box:
            box[name] = rule_interval(name)
    rule = {n: soma.config_class.field_info(n)["rule"] for n in fields}
    out = {}
    for name in fields:
        lo, hi = box[name]
        allowed = rule_interval(name)
        require(math.isfinite(lo) and math.isfinite(hi) and lo < hi, f"bounds[{name!r}]",
                (lo, hi), "finite (low, high) with low < high")
        require(allowed[0] <= lo and hi <= allowed[1], f"bounds[{name!r}]", (lo, hi),
                f"inside what the config rules allow, [{allowed[0]:.7g}, {allowed[1]:.7g}] "
                f"({rule[name].text(name)}; time constants ≥ dt)")
        require(lo <= start[name] <= hi, f"start {name}", start[name],
                f"inside bounds[{name!r}] = ({lo:g}, {hi:g})")
        out[name] = Box.of(lo, hi, start[name], soma.param_dtype)
    return out



def check_bounds(bounds: Any, fields: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """``bounds`` checked: a mapping of fitted fields to pairs of real numbers."""
    require(bounds is None or isinstance(bounds, Mapping), "bounds", bounds,
            "None or a dict field -> (low, high)")
    rule = "a pair (low, high) of real numbers in the field's unit"
    out = {}
    for name, pair in (bounds or {}).items():
        require(name in fields, "bounds", name, f"a field being fitted, one of {fields}")
        where = f"bounds[{name!r}]"
        try:
            out[name] = tuple(configs.as_number(x, where) for x in as_tuple(pair, where, rule))
        except ValueError:  # no sequence, or no number in it
            out[name] = ()
        require(len(out[name]) == 2, where, pair, rule)
    return out



def start_count(starts: int | Mapping[str, Any]) -> int:
    """K, the number of starts: ``starts`` itself, checked, when it is one;
    the length of the longest of its arrays when it maps fields to initial
    values (which :func:`initial_u` checks)."""
    if isinstance(starts, Mapping):
        return max((int(np.size(v)) for v in starts.values()), default=0)
    return checked_number(starts, "starts", lambda k: k >= 1,
                          "an int ≥ 1 or field -> initial values", integer=True)


def initial_u(boxes: Mapping[str, Box], fields: tuple[str, ...], guess: Mapping[str, float],
              starts: int | Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Every start's u, (K,) per field: K = ``starts`` (checked by
    :func:`start_count`), or the initial values it maps fields to."""
    if isinstance(starts, Mapping):
        values = {n: np.atleast_1d(np.asarray(v, np.float64)) for n, v in starts.items()}
        require(set(values) == set(fields), "starts", sorted(values),
                f"initial values for exactly the fitted fields {sorted(fields)}")
        sizes = {v.shape for v in values.values()}
        require(len(sizes) == 1 and len(next(iter(sizes))) == 1, "starts",
                {n: v.shape for n, v in values.items()}, "one (K,) array per field, same K")
        for n, v in values.items():
            b = boxes[n]
            require(np.all((v >= b.lo) & (v <= b.hi)), f"starts[{n!r}]", v.tolist(),
                    f"inside the bounds ({b.lo:g}, {b.hi:g})")
        return {n: boxes[n].to_u(values[n]) for n in fields}
    rng = np.random.default_rng(seed)
    out = {}
    for n in fields:
        b = boxes[n]
        u = np.empty(starts)
        u[0] = b.to_u(guess[n])
        if b.kind in ("sigmoid", "log_sigmoid"):
            frac = rng.uniform(0.02, 0.98, starts - 1)
            u[1:] = np.log(frac / (1 - frac))
        else:
            u[1:] = u[0] + rng.uniform(-0.5, 0.5, starts - 1)
        lo, hi = b.u_range()
        out[n] = np.clip(u, lo, hi)
    return out
