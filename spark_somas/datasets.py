"""``spark_somas.datasets``, the module's name in release 0.1.0: the public
names of :mod:`spark_somas.data.datasets`, re-exported."""

from spark_somas.data.datasets import *  # noqa: F403
from spark_somas.data.datasets import __all__  # noqa: F401
