"""``spark_somas.callbacks``, the module's name in release 0.1.0: the public
names of :mod:`spark_somas.training.callbacks`, re-exported."""

from spark_somas.training.callbacks import *  # noqa: F403
from spark_somas.training.callbacks import __all__  # noqa: F401
