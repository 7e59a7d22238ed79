"""``spark_somas.somas``, the module's name in release 0.1.0: the public
names of :mod:`spark_somas.models.somas`, re-exported."""

from spark_somas.models.somas import *  # noqa: F403
from spark_somas.models.somas import __all__  # noqa: F401
