"""What outlives a process: checkpoints and training logs.

* :mod:`~spark_somas.persistence.checkpointing` — Orbax checkpoints of
  parameters, running neuron state and optimizer state, with metadata read as data;
* :mod:`~spark_somas.persistence.loggers` — per-epoch metrics to JSON lines
  and TensorBoard.

Imports :mod:`spark_somas.errors`, :mod:`spark_somas.dynamics` and
:mod:`spark_somas.models` only.
"""
