"""``spark_somas.checkpointing``, the module's name in release 0.1.0: the public
names of :mod:`spark_somas.persistence.checkpointing`, re-exported."""

from spark_somas.persistence.checkpointing import *  # noqa: F403
from spark_somas.persistence.checkpointing import __all__  # noqa: F401
