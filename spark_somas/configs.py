"""``spark_somas.configs``, the module's name in release 0.1.0: the public
names of :mod:`spark_somas.models.configs`, re-exported (the rules a config
field is declared with included)."""

from spark_somas.models.configs import *  # noqa: F403
from spark_somas.models.configs import FINITE, NON_NEGATIVE, POSITIVE
from spark_somas.models.configs import __all__ as home_names

__all__ = [*home_names, "FINITE", "POSITIVE", "NON_NEGATIVE"]
