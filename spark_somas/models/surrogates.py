"""Surrogate gradients for the spike nonlinearity.

A spike is the Heaviside step of the distance to threshold, ``x = V - V_th``
(mV). Its derivative is zero almost everywhere, so gradient descent through a
spiking neuron replaces it, on the backward pass only, by a smooth
pseudo-derivative ``g(x)`` (Neftci, Mostafa & Zenke 2019, "Surrogate gradient
learning in spiking neural networks", IEEE Signal Process. Mag. 36:51–63).

Every surrogate here is a small frozen dataclass: hashable (so it can be a
static argument of ``jax.custom_jvp``), JSON-serialisable through
:meth:`Surrogate.to_dict`, and stating its ``peak`` ``g(0)`` and its
``integral`` ``∫ g(x) dx`` — both checked numerically by the tests. Widths and
slopes are in the units of ``x``: mV (slopes in 1/mV).

:func:`spike` is the one spike function shared by all somas.

**Scaled to the cell, and damped.** Every surrogate also takes two
keyword-only fields. ``damping`` γ multiplies the pseudo-derivative
(Bellec et al. 2018, "Long short-term memory and learning-to-learn in
networks of spiking neurons", NeurIPS, use γ = 0.3): in a recurrent network
each spike's surrogate is a factor of the loop gain, and γ < 1 keeps it
below 1. With ``relative=True`` the widths and slopes are measured in units
of the cell's own distance from rest to threshold, d = V_th − E_L (mV),
instead of mV, as in Bellec et al.'s scaled potential (V − V_th)/V_th::

    ∂S/∂V = γ · g(x / d) / d        (relative)
    ∂S/∂V = γ · g(x)                (in mV, the default)

so ``Triangle(width=1.0, damping=0.3, relative=True)`` is Bellec et al.'s
pseudo-derivative 0.3·max(0, 1 − abs(V − V_th)/d)/d for any cell, whatever its
potentials. The forward pass is the Heaviside step of x in every case.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from spark_somas.errors import RuleError, require, rule_message

__all__ = [
    "Surrogate",
    "FastSigmoid",
    "ArcTan",
    "Sigmoid",
    "Triangle",
    "Gaussian",
    "StraightThrough",
    "spike",
    "from_dict",
    "by_name",
    "names",
    "from_spec",
    "to_spec",
    "DEFAULT",
]

# The config rules' bounds on a positive quantity (spark_somas.models.configs), here
# too so that this module imports nothing of the package.
_SMALLEST, _LARGEST = 1e-6, 1e6


@dataclasses.dataclass(frozen=True)
class Surrogate:
    """Base class: a pseudo-derivative ``g(x)`` of the Heaviside step."""

    name: ClassVar[str] = ""
    _registry: ClassVar[dict[str, type["Surrogate"]]] = {}

    damping: float = dataclasses.field(default=1.0, kw_only=True)
    relative: bool = dataclasses.field(default=False, kw_only=True)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            Surrogate._registry[cls.name] = cls

    def __post_init__(self) -> None:
        # The config rules' range for positive quantities: within it every
        # pseudo-derivative is finite in float32 (1/w ≤ 10^6, (πα/2)² ≤ 10^13).
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "relative":
                ok, rule = isinstance(value, (bool, np.bool_)), "a bool"
                value = bool(value) if ok else value
            else:
                ok = (isinstance(value, (int, float, np.integer, np.floating))
                      and not isinstance(value, (bool, np.bool_))
                      and _SMALLEST <= value <= _LARGEST)
                rule = f"{_SMALLEST:g} ≤ {f.name} ≤ {_LARGEST:g}"
                value = float(value) if ok else value
            require(ok, f"{type(self).__name__}.{f.name}", value, rule, error=RuleError)
            object.__setattr__(self, f.name, value)

    def pseudo_derivative(self, x: jax.Array, scale: jax.Array | None = None) -> jax.Array:
        """What the spike's backward pass uses: γ·g(x/d)/d with d = ``scale``
        (mV) when ``relative``, else γ·g(x)."""
        if self.relative:
            if scale is None:
                raise RuleError(f"{self!r} is relative: spike() needs the cell's scale "
                                 "d = V_th − E_L (mV)")
            scale = scale.astype(x.dtype)
            g = self.derivative(x / scale) / scale
        else:
            g = self.derivative(x)
        return g if self.damping == 1.0 else self.damping * g

    def derivative(self, x: jax.Array) -> jax.Array:
        """The pseudo-derivative ``g(x)``, elementwise, in ``x``'s dtype."""
        raise NotImplementedError

    @property
    def peak(self) -> float:
        """``g(0)``, the largest value of the pseudo-derivative (1/mV)."""
        raise NotImplementedError

    @property
    def integral(self) -> float:
        """``∫ g(x) dx`` over the real line (dimensionless)."""
        raise NotImplementedError

    def __call__(self, x: jax.Array) -> jax.Array:
        """Heaviside forward, this surrogate backward: ``spike(x, self)``."""
        return spike(x, self)

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., <parameter>: value, "damping": γ, "relative": bool}``,
        JSON-serialisable."""
        return {"name": self.name, **dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True)
class FastSigmoid(Surrogate):
    r"""SuperSpike's fast sigmoid (Zenke & Ganguli 2018, Neural Comput. 30:1514).

    .. math:: g(x) = \frac{1}{(1 + \beta |x|)^2}

    peak ``1``, integral ``2/β``. ``slope`` is β (1/mV). The default, 1/mV,
    makes the pseudo-derivative about as wide as the spike slope Δ_T of
    cortical neurons (a few mV).
    """

    name: ClassVar[str] = "fast_sigmoid"
    slope: float = 1.0

    def derivative(self, x):
        return 1.0 / jnp.square(1.0 + self.slope * jnp.abs(x))

    @property
    def peak(self):
        return 1.0

    @property
    def integral(self):
        return 2.0 / self.slope


@dataclasses.dataclass(frozen=True)
class ArcTan(Surrogate):
    r"""Arctangent surrogate (Fang et al. 2021, ICCV, "Incorporating learnable
    membrane time constant ...").

    .. math:: g(x) = \frac{\alpha/2}{1 + (\pi \alpha x / 2)^2}

    the derivative of ``arctan(π α x / 2)/π + 1/2``: peak ``α/2``, integral 1.
    """

    name: ClassVar[str] = "arctan"
    alpha: float = 2.0

    def derivative(self, x):
        return (0.5 * self.alpha) / (1.0 + jnp.square(0.5 * math.pi * self.alpha * x))

    @property
    def peak(self):
        return 0.5 * self.alpha

    @property
    def integral(self):
        return 1.0


@dataclasses.dataclass(frozen=True)
class Sigmoid(Surrogate):
    r"""Derivative of the logistic sigmoid (Zenke & Vogels 2021, Neural
    Comput. 33:899).

    .. math:: g(x) = k\,\sigma(kx)\,(1 - \sigma(kx))

    peak ``k/4``, integral 1. ``slope`` is k (1/mV).
    """

    name: ClassVar[str] = "sigmoid"
    slope: float = 4.0

    def derivative(self, x):
        # σ(z)·σ(−z), not σ(z)·(1 − σ(z)): 1 − σ(z) rounds to 0 for z ≳ 17 in
        # float32, which would cut the right tail and break the symmetry.
        z = self.slope * x
        return self.slope * (jax.nn.sigmoid(z) * jax.nn.sigmoid(-z))

    @property
    def peak(self):
        return 0.25 * self.slope

    @property
    def integral(self):
        return 1.0


@dataclasses.dataclass(frozen=True)
class Triangle(Surrogate):
    r"""Piecewise-linear (triangle) surrogate (Esser et al. 2016, PNAS
    113:11441; Bellec et al. 2018, NeurIPS).

    .. math:: g(x) = \frac{1}{w}\max\left(0, 1 - \frac{|x|}{w}\right)

    peak ``1/w``, integral 1, support ``|x| < w`` (``width`` w in mV).
    """

    name: ClassVar[str] = "triangle"
    width: float = 1.0

    def derivative(self, x):
        return jnp.maximum(0.0, 1.0 - jnp.abs(x) / self.width) / self.width

    @property
    def peak(self):
        return 1.0 / self.width

    @property
    def integral(self):
        return 1.0


@dataclasses.dataclass(frozen=True)
class Gaussian(Surrogate):
    r"""Gaussian surrogate (Yin, Corradi & Bohté 2021, Nat. Mach. Intell.
    3:905).

    .. math:: g(x) = \frac{1}{\sigma\sqrt{2\pi}} e^{-x^2 / 2\sigma^2}

    peak ``1/(σ√(2π))``, integral 1 (``sigma`` in mV).
    """

    name: ClassVar[str] = "gaussian"
    sigma: float = 1.0

    def derivative(self, x):
        return jnp.exp(-0.5 * jnp.square(x / self.sigma)) / (self.sigma * math.sqrt(2.0 * math.pi))

    @property
    def peak(self):
        return 1.0 / (self.sigma * math.sqrt(2.0 * math.pi))

    @property
    def integral(self):
        return 1.0


@dataclasses.dataclass(frozen=True)
class StraightThrough(Surrogate):
    r"""Saturated straight-through estimator (Bengio, Léonard & Courville
    2013, arXiv:1308.3432; Hubara et al. 2016).

    .. math:: g(x) = \mathbb{1}[|x| \le w]

    the gradient passes through unchanged inside a window of half-width w
    (mV) and is cut outside it: peak 1, integral ``2w``.
    """

    name: ClassVar[str] = "straight_through"
    width: float = 1.0

    def derivative(self, x):
        return (jnp.abs(x) <= self.width).astype(x.dtype)

    @property
    def peak(self):
        return 1.0

    @property
    def integral(self):
        return 2.0 * self.width


DEFAULT = FastSigmoid()


def names() -> list[str]:
    """The registered surrogate names, sorted: the ``name`` of every
    :class:`Surrogate` subclass that declares one (a subclass of one's own
    included), what :func:`by_name` and :func:`from_spec` accept."""
    return sorted(Surrogate._registry)


def by_name(name: str, **params: float) -> Surrogate:
    """The surrogate registered as ``name`` (e.g. ``"arctan"``) with ``params``."""
    try:
        cls = Surrogate._registry[name]
    except KeyError:
        raise RuleError(f"surrogate = {name!r} is not one of {names()}") from None
    return cls(**params)


def from_dict(d: dict[str, Any]) -> Surrogate:
    """Inverse of :meth:`Surrogate.to_dict`."""
    d = dict(d)
    return by_name(d.pop("name"), **d)


def from_spec(spec: str) -> Surrogate:
    """A surrogate from one line of text, ``NAME[:KEY=VALUE,...]``, e.g.
    ``"triangle:width=1,damping=0.3,relative=true"`` (the command line's
    form); values are numbers, or true/false for ``relative``."""
    name, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, text = item.partition("=")
        require(sep, "surrogate", spec, "NAME[:KEY=VALUE,...]", error=RuleError)
        lowered = text.strip().lower()
        try:
            params[key.strip()] = (lowered == "true" if lowered in ("true", "false")
                                   else float(text))
        except ValueError:
            raise RuleError(rule_message("surrogate", spec, f"{key.strip()} is a number or "
                                         f"true/false, not {text!r}")) from None
    try:
        return by_name(name.strip(), **params)
    except TypeError as err:
        raise RuleError(rule_message("surrogate", spec,
                                     f"parameters of {name.strip()!r} ({err})")) from None


def to_spec(surrogate: Surrogate) -> str:
    """The inverse of :func:`from_spec`."""
    items = [f"{k}={str(v).lower() if isinstance(v, bool) else f'{v:g}'}"
             for k, v in surrogate.to_dict().items() if k != "name"]
    return f"{surrogate.name}:{','.join(items)}"


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _heaviside(x: jax.Array, scale: jax.Array, surrogate: Surrogate) -> jax.Array:
    return (x > 0).astype(x.dtype)


@_heaviside.defjvp
def _heaviside_jvp(surrogate, primals, tangents):
    (x, scale), (dx, _) = primals, tangents
    # The pseudo-derivative is evaluated at least in float32: in float16 the
    # square of a large |x| would overflow to inf and give 1/inf = 0 anyway,
    # but (1 + β|x|)^2 near 256 already loses the tail's shape. No gradient
    # flows into the scale: it only sets the surrogate's width.
    wide = jnp.promote_types(x.dtype, jnp.float32)
    g = surrogate.pseudo_derivative(x.astype(wide), scale.astype(wide)).astype(x.dtype)
    return _heaviside(x, scale, surrogate), g * dx


def spike(x: jax.Array, surrogate: Surrogate | None = None,
          scale: jax.Array | None = None) -> jax.Array:
    r"""Heaviside step with a surrogate gradient.

    Forward: :math:`S(x) = 1` if :math:`x > 0` else 0, in ``x``'s dtype.
    Backward: :math:`\partial S / \partial x := γ\,g(x)`, the surrogate's
    pseudo-derivative (:meth:`Surrogate.pseudo_derivative`), or
    :math:`γ\,g(x/d)/d` with d = ``scale`` (mV, broadcastable to x) for a
    ``relative`` surrogate; ``None`` selects the default fast sigmoid
    (β = 1/mV).
    """
    x = jnp.asarray(x)
    surrogate = DEFAULT if surrogate is None else surrogate
    if scale is None:
        if surrogate.relative:
            raise RuleError(f"{surrogate!r} is relative: spike() needs the cell's scale "
                             "d = V_th − E_L (mV)")
        scale = jnp.ones((), x.dtype)
    return _heaviside(x, jax.lax.stop_gradient(jnp.asarray(scale)), surrogate)
