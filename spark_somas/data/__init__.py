"""Data to train on, NumPy on the host side.

* :mod:`~spark_somas.data.base` — :class:`~spark_somas.data.base.Dataset`,
  :class:`~spark_somas.data.base.DataError` and the shared split helpers;
* :mod:`~spark_somas.data.datasets` — the bundled digits, Randman, and
  :data:`~spark_somas.data.datasets.TASKS` naming every task;
* :mod:`~spark_somas.data.events` — the SHD and SSC spike files;
* :mod:`~spark_somas.data.tasks` — the generated evidence-accumulation cue task;
* :mod:`~spark_somas.data.fetch` — downloading the SHD/SSC files, checked.

Imports :mod:`spark_somas.errors` and :mod:`spark_somas.models` only.
"""
